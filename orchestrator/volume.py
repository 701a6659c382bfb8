"""Whole seismic volumes on Ray: SEG-Y in, the ensemble's salt probability out, as SEG-Y and .npy.

`python -m orchestrator.predict --run RUN --segy IN.sgy --out DIR` (orchestrator.predict dispatches here).

Sections (inlines or crosslines) are the unit of work. Actors each hold every member of every fold,
as in the aggregation step (orchestrator.predict: the members travel once through the object store,
actors sized by `actor_resources`); each runs `salt_model.evaluation.section_inference.predict_section` on batches of
sections. The driver reads sections from the file, scales them to 8 bits (4x less to ship), keeps at
most two batches in flight per actor and writes each returned section into the on-disk cube
(salt_model.data.volume_store) at once, so its memory holds a few sections, never the cube. Everything is
written into a hidden folder in DIR and moved into place at the end: a failure leaves DIR as it was.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import ray

from salt_model.data.segy import Geometry, SegyReader, write_probability_segy
from salt_model.data.volume_store import ProbabilityStore
from salt_model.device import pick_device
from salt_model.evaluation.inference import model_from_payload
from salt_model.evaluation.section_inference import Scaling, default_stride, predict_section
from salt_model.evaluation.volume_qc import qc_png, report_html
from salt_model.io import atomic_write_json

SCALING_WARNING = (
    "amplitudes were mapped to the 8-bit tile domain by a percentile clip and the synthetic tiles' "
    "mean/std; real surveys differ from the Kaggle tiles (frequency, gain, polarity), so treat the "
    "probabilities as a screening aid and check them against the QC pictures"
)


class SectionPredictor:
    """A Ray actor holding every member; a batch of (key, uint8 section, live) in, (key, probs) out."""

    def __init__(self, payloads_ref: list, stride: int | None, blend: str, batch_size: int):
        import torch

        payloads = ray.get(payloads_ref[0])  # the ref travels inside a list so Ray does not inline it
        self.device = pick_device(None)
        if self.device.type == "cpu":
            cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1)
            torch.set_num_threads(max(1, int(cpus)))
        self.members = [model_from_payload(p, self.device) for p in payloads]
        self.stride, self.blend, self.batch_size = stride, blend, batch_size

    def predict(self, batch: list[tuple]) -> list[tuple]:
        return [
            (
                key,
                predict_section(
                    self.members, section, None, self.stride, self.blend, self.device, self.batch_size, live
                ),
            )
            for key, section, live in batch
        ]


def directions_for(geometry: Geometry, direction: str) -> list[str]:
    """The passes to run; a 2D line has one section (its traces in order)."""
    if direction not in ("inline", "crossline", "both"):
        raise ValueError(f"--direction {direction}: expected inline, crossline or both")
    if geometry.kind == "2d":
        if direction == "crossline":
            raise ValueError(
                f"{geometry.path}: a 2D line has no crosslines to predict along; use --direction inline"
            )
        return ["inline"]
    return ["inline", "crossline"] if direction == "both" else [direction]


def run_volume(
    geometry: Geometry,
    payloads: list[dict],
    scaling: Scaling,
    out: Path,
    directions: list[str],
    resources: tuple[float, float, int],
    stride: int | None = None,
    blend: str = "gaussian",
    batch_sections: int = 4,
    batch_size: int = 64,
    truth: np.ndarray | None = None,
) -> dict:
    """Predicts the volume on Ray and writes every output into `out`; returns volume.json's content."""
    start = time.perf_counter()
    gpus, cpus, count = resources
    tmp = Path(tempfile.mkdtemp(prefix=".volume-", dir=out))
    try:
        remote = ray.remote(num_gpus=gpus, num_cpus=cpus)(SectionPredictor)
        ref = ray.put(payloads)
        actors = [remote.remote([ref], stride, blend, batch_size) for _ in range(count)]
        store = ProbabilityStore(tmp / "salt_probability.npy", geometry.shape)
        timings, dead = {}, 0
        k = geometry.n_samples // 2  # the time/depth slice of the QC
        slice_raw = np.zeros(geometry.shape[:2], np.float32)
        with SegyReader(geometry) as reader:
            for p, direction in enumerate(directions):
                t0 = time.perf_counter()
                n_dead = stream_pass(
                    actors, reader, scaling, direction, store, batch_sections, p > 0, slice_raw, k
                )
                dead = n_dead if p == 0 else dead
                timings[f"predict_{direction}_s"] = time.perf_counter() - t0
            for actor in actors:
                ray.kill(actor)
            t0 = time.perf_counter()
            write_probability_segy(geometry, tmp / "salt_probability.sgy", store, reader)
            timings["write_segy_s"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            pictures = qc_pictures(geometry, reader, store, scaling, slice_raw, k, tmp)
            timings["qc_s"] = time.perf_counter() - t0
        summary = {
            "geometry": geometry.to_dict(),
            "array": {
                "file": "salt_probability.npy",
                "dtype": "float32",
                "shape": list(geometry.shape),
                "axes": ["inline", "crossline", "sample"]
                if geometry.kind == "3d"
                else ["line", "trace", "sample"],
                "nan": "missing or dead traces",
            },
            "dead_traces": dead,
            "scaling": scaling.to_dict(),
            "windows": {
                "size": 101,
                "stride": stride or default_stride(),
                "blend": blend,
                "padding": "each window padded as in evaluation (data.pad, data.pad_mode of each member)",
                "tta": "horizontal flip",
            },
            "directions": directions,
            "combine": "mean of the passes" if len(directions) > 1 else "single pass",
            "members": [{k: p.get(k) for k in ("fold", "member", "epoch", "score")} for p in payloads],
            "actors": {
                "count": count,
                "gpus_each": gpus,
                "cpus_each": cpus,
                "sections_per_batch": batch_sections,
            },
            "warnings": [SCALING_WARNING],
        }
        if truth is not None:
            summary["truth_iou"] = truth_iou(store, truth)
        store.close()
        timings["total_s"] = time.perf_counter() - start
        summary["timings"] = timings
        summary["traces_per_s"] = (
            geometry.n_traces
            * len(directions)
            / max(sum(v for key, v in timings.items() if key.startswith("predict_")), 1e-9)
        )
        report_html(tmp / "report.html", summary, pictures)
        atomic_write_json(tmp / "volume.json", summary)
        for item in sorted(tmp.iterdir()):  # the complete set, moved into place file by file
            item.replace(out / item.name)
        return summary
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def stream_pass(actors, reader, scaling, direction, store, batch_sections, average, slice_raw, k) -> int:
    """One pass over every section along `direction`; returns the dead (all-zero) traces seen."""
    n = store.shape[0] if direction == "inline" else store.shape[1]
    limit = 2  # batches in flight per actor: one running, one queued
    inflight: dict = {}  # ref -> actor index
    load = [0] * len(actors)
    dead = 0

    def drain(num: int) -> None:
        done, _ = ray.wait(list(inflight), num_returns=num)
        for ref in done:
            load[inflight.pop(ref)] -= 1
            for i, probs in ray.get(ref):
                store.put(direction, i, probs, average_with_existing=average)

    for first in range(0, n, batch_sections):
        batch = []
        for i in range(first, min(first + batch_sections, n)):
            raw, live = reader.section(direction, i)
            dead += int(
                (
                    (reader.geometry.grid[i] if direction == "inline" else reader.geometry.grid[:, i]) >= 0
                ).sum()
                - live.sum()
            )
            if direction == "inline":
                slice_raw[i] = raw[:, k]
            else:
                slice_raw[:, i] = raw[:, k]
            batch.append((i, scaling.apply(raw), live))
        while min(load) >= limit:
            drain(1)
        a = load.index(min(load))
        inflight[actors[a].predict.remote(batch)] = a
        load[a] += 1
    if inflight:
        drain(len(inflight))
    return dead


def qc_pictures(geometry, reader, store, scaling, slice_raw, k, folder: Path) -> list[tuple[str, str]]:
    """The middle inline, the middle crossline (3D) and the slice at sample k, as PNGs."""
    n_il, n_xl, ns = geometry.shape
    dt_ms = geometry.sample_interval_us / 1000
    pictures = []
    views = [("inline", n_il // 2)] + ([("crossline", n_xl // 2)] if geometry.kind == "3d" else [])
    for direction, i in views:
        raw, _ = reader.section(direction, i)
        probs = store.section(direction, i)
        number = (geometry.ilines if direction == "inline" else geometry.xlines)[i]
        name = f"qc_{direction}.png"
        title = f"{direction} {number}" if geometry.kind == "3d" else f"2D line ({n_xl} traces)"
        across = "crossline" if direction == "inline" else "inline"
        qc_png(folder / name, raw.T, probs.T, title, across if geometry.kind == "3d" else "trace", "sample")
        pictures.append((name, f"{title}: depth/time down, probability overlay, 0.5 contour"))
    if geometry.kind == "3d":
        probs_slice = np.array([[store.trace(i, x)[k] for x in range(n_xl)] for i in range(n_il)])
        qc_png(
            folder / "qc_slice.png",
            slice_raw,
            probs_slice,
            f"slice at sample {k} ({k * dt_ms:g} ms or m)",
            "crossline",
            "inline",
        )
        pictures.append(("qc_slice.png", f"time/depth slice at sample {k}"))
    return pictures


def truth_iou(store: ProbabilityStore, truth: np.ndarray) -> float:
    """IoU of probability > 0.5 against a known truth cube (the synthetic input), section by section."""
    inter = union = 0
    for i in range(store.shape[0]):
        pred = store.section("inline", i) > 0.5
        t = truth[i].astype(bool)
        inter += int((pred & t).sum())
        union += int((pred | t).sum())
    return inter / union if union else 1.0
