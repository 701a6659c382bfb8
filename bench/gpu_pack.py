"""What the GPU run (bench/gpu_run.py) carries to the device machine, made here on the CPU machine:

    python -m bench.gpu_pack [--data ../shared/tgs]

- `.whl/`: the wheels that machine's image lacks (it has Python 3.12, torch, numpy, scipy, OpenCV,
  pandas, PyYAML and matplotlib, and no albumentations), for cp312 manylinux x86_64, fetched with
  `pip download --no-deps` at the versions below (albumentations and albucore as constraints.txt pins
  them; the rest as they resolve beside them here);
- `.tgs/`: the data folder re-encoded as 8-bit grayscale PNGs (masks 0/255) in the same layout, with
  its CSVs copied: the real files are RGB images and 16-bit masks, twice the bytes. It is read back and
  compared tile by tile with the original.
Both folders are git-ignored. Prints what travels (these two, the tracked files and any untracked file
git does not ignore) against the device tool's 64 MiB. Rerunning reuses what is already there.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parent.parent
LIMIT_MIB = 64
WHEELS = [
    "albumentations==2.0.8",
    "albucore==0.0.24",
    "pydantic==2.13.4",
    "pydantic_core==2.46.4",
    "annotated-types==0.7.0",
    "typing-inspection==0.4.2",
    "typing_extensions==4.15.0",  # pydantic needs >= 4.14.1; the image's version is not known here
    "simsimd==6.5.16",
    "stringzilla==5.3.2",
]
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux1_x86_64"]
CSVS = ("train.csv", "depths.csv", "sample_submission.csv")


def download_wheels(dest: Path) -> None:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version"]
    cmd += ["3.12", "--implementation", "cp", "-d", str(dest), "--quiet"]
    for platform in PLATFORMS:
        cmd += ["--platform", platform]
    subprocess.run(cmd + WHEELS, check=True)
    wanted = {w.split("==")[0].replace("-", "_").lower() for w in WHEELS}
    extra = [p.name for p in dest.glob("*.whl") if p.name.split("-")[0].lower() not in wanted]
    if extra:
        raise SystemExit(f"{dest}: wheels not in the list (two versions stop the install): {extra}")


def reencode(src: Path, dest: Path) -> None:
    """Every tile as an 8-bit grayscale PNG (masks 0/255), checked against the original after writing."""
    from salt_model.data.loading import load_split

    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    train, test = load_split(src, "train"), load_split(src, "test")
    jobs = [(tmp / "train" / "images" / f"{i}.png", a) for i, a in zip(train.ids, train.images, strict=True)]
    jobs += [
        (tmp / "train" / "masks" / f"{i}.png", a * 255) for i, a in zip(train.ids, train.masks, strict=True)
    ]
    jobs += [(tmp / "test" / "images" / f"{i}.png", a) for i, a in zip(test.ids, test.images, strict=True)]
    for folder in {path.parent for path, _ in jobs}:
        folder.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(8) as pool:
        ok = list(
            pool.map(lambda job: cv2.imwrite(str(job[0]), job[1], [cv2.IMWRITE_PNG_COMPRESSION, 9]), jobs)
        )
    if not all(ok):
        raise SystemExit(f"{tmp}: {ok.count(False)} tiles could not be written")
    for name in CSVS:
        if (src / name).is_file():
            shutil.copyfile(src / name, tmp / name)
    again, again_test = load_split(tmp, "train"), load_split(tmp, "test")
    same = (
        np.array_equal(again.ids, train.ids)
        and np.array_equal(again.images, train.images)
        and np.array_equal(again.masks, train.masks)
        and np.array_equal(again_test.ids, test.ids)
        and np.array_equal(again_test.images, test.images)
    )
    if not same:
        raise SystemExit(f"{tmp}: the re-encoded tiles differ from {src}")
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    print(f"{dest}: {len(train)} labelled and {len(test)} test tiles, identical to {src} when read")


def size(paths) -> int:
    return sum(p.stat().st_size for p in paths if p.is_file())


def travelling_bytes() -> dict:
    """Bytes per part of what a device call sends with carry [.whl, .tgs]."""

    def git_files(*args: str) -> list[Path]:
        out = subprocess.run(["git", "ls-files", "-z", *args], cwd=REPO, capture_output=True, check=True)
        return [REPO / name for name in out.stdout.decode().split("\0") if name]

    return {
        ".whl": size((REPO / ".whl").rglob("*")),
        ".tgs": size((REPO / ".tgs").rglob("*")),
        "tracked": size(git_files()),
        "untracked, not ignored": size(git_files("--others", "--exclude-standard")),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.gpu_pack",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--data",
        default=str(REPO.parent / "shared" / "tgs"),
        metavar="DIR",
        help="the real TGS data folder re-encoded into .tgs/ unless .tgs/ already has it (default: ../shared/tgs)",
    )
    args = parser.parse_args(argv)
    wheels, tgs = REPO / ".whl", REPO / ".tgs"
    wheels.mkdir(exist_ok=True)
    download_wheels(wheels)
    if not (tgs / "train" / "images").is_dir():
        reencode(Path(args.data), tgs)
    parts = travelling_bytes()
    for name, n in parts.items():
        print(f"{name:<24} {n / 2**20:7.2f} MiB")
    total = sum(parts.values()) / 2**20
    print(f"{'total carried':<24} {total:7.2f} MiB of {LIMIT_MIB} MiB")
    return 0 if total < LIMIT_MIB else 1


if __name__ == "__main__":
    sys.exit(main())
