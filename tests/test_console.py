"""The console: our lines only (no Ray chatter), a live progress view, warnings that matter.

Fast tests drive the view and the worker-line routing directly; the `ray` tests run the real entry
points in subprocesses (their own local Ray in a private RAY_TMPDIR) and read what a user would see.
"""

from __future__ import annotations

import io
import json
import re
import struct
import sys
from pathlib import Path

import pytest

from orchestrator import console
from salt_model import run_folder
from tests.conftest import TINY
from tests.processes import run, run_entry

# What the bare console used to show, from Ray, Tune, Ray Data and Optuna
NOISE = (
    "Reporting training result",
    "TrainingReport(",
    "PreemptionWatcher",
    "RayDeprecationWarning",
    "pid=",
    "Running Dataset",
    "logging_progress",
    "MapBatches(",
    "To visualize your results with TensorBoard",
    "Configuration for experiment",
    "View detailed results here",
    "A new study created",
    "core_worker.cc",
    "Started a local Ray instance",
)
PLAIN_PROGRESS = re.compile(
    r"epoch (\d+)/(\d+) \| \w* ?val_map [\d.]+ best [\d.]+ \| folds now/best( [\d.]+/[\d.]+)+ \| "
    r"[\d:]+ elapsed, ETA [\d:?]+"
)


def metrics(epoch: int, folds: int = 3) -> dict:
    m = {"epoch": epoch, "loss": "bce", "val_map": 0.3 + 0.1 * epoch, "best_val_map": 0.35 + 0.1 * epoch}
    for r in range(folds):
        m[f"val_map_fold{r}"] = 0.3 + 0.1 * epoch + 0.01 * r
        m[f"best_val_map_fold{r}"] = 0.35 + 0.1 * epoch + 0.01 * r
    return m


def test_plain_view_prints_one_line_per_epoch_with_every_fold_and_an_eta():
    stream = io.StringIO()
    view = console.ProgressView(epochs=4, folds=3, stream=stream, tty=False)
    view.start("t1", "(cosine, switch 2) ")
    view.update("t1", metrics(1))
    view.update("t1", metrics(2))
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2 and all(PLAIN_PROGRESS.search(line) for line in lines), lines
    assert lines[1].startswith("trial t1 (cosine, switch 2) epoch 2/4")
    assert "0.520/0.570" in lines[1]  # fold 2: current / best
    assert "\x1b[" not in stream.getvalue()  # no cursor control when not a terminal


def test_tty_view_redraws_a_block_with_bars_per_trial_and_fold():
    stream = io.StringIO()
    view = console.ProgressView(epochs=4, folds=2, stream=stream, tty=True)
    view.update("t1", metrics(1, folds=2))
    view.update("t1", metrics(2, folds=2))
    out = stream.getvalue()
    assert "\x1b[3F\x1b[J" in out  # second draw moves up over the 3-line block (trial + 2 folds) first
    block = view.block()
    assert len(block) == 3 and "█" in block[0] and block[1].lstrip().startswith("fold 0")
    assert "2/4" in block[2] and "ETA" in block[0]


def test_worker_lines_route_failures_to_a_warning_and_messages_to_the_console(capsys):
    console._State.view = console.ProgressView(epochs=4, folds=3, stream=io.StringIO(), tty=False)
    console._State.closed = False
    try:
        console.on_worker_line(json.dumps({"event": "failure", "folds": {"1": "RuntimeError: disk full"}}))
        console.on_worker_line("fold 1: worker restarted, resuming after epoch 1")
    finally:
        console._State.view = None
    out = capsys.readouterr().out
    assert "warning: fold worker failed (fold 1: RuntimeError: disk full)" in out
    assert "fold 1: worker restarted, resuming after epoch 1" in out


def test_the_follower_shows_each_new_epoch_of_progress_jsonl_once_and_not_the_earlier_ones(tmp_path):
    from orchestrator.progress_follower import ProgressFollower

    progress = tmp_path / "progress.jsonl"
    progress.write_text(json.dumps(metrics(1)) + "\n")  # a resumed run's epoch from before
    stream = io.StringIO()
    console._State.view = console.ProgressView(epochs=4, folds=3, stream=stream, tty=False)
    console._State.closed = False
    try:
        follower = ProgressFollower(progress)
        with open(progress, "a") as f:
            f.write(json.dumps(metrics(2)) + "\n" + json.dumps(metrics(3))[:20])  # the last one half-written
        follower.poll()
        follower.poll()
        with open(progress, "a") as f:
            f.write(json.dumps(metrics(3))[20:] + "\n")
        follower.poll()
    finally:
        console._State.view = None
    lines = stream.getvalue().splitlines()
    assert [line.split(" | ")[0].split()[:2] for line in lines] == [["epoch", "2/4"], ["epoch", "3/4"]], lines
    assert all(PLAIN_PROGRESS.search(line) for line in lines), lines


def test_cause_is_the_last_line_of_a_wrapped_traceback():
    err = RuntimeError("Traceback (most recent call last):\n  File x\nValueError: bad tile 3")
    assert console.cause(err) == "ValueError: bad tile 3"
    assert console.cause(OSError("no space left")) == "OSError: no space left"


def test_error_line_is_the_last_line_of_a_failed_trials_error_txt(tmp_path):
    from types import SimpleNamespace

    trial = SimpleNamespace(local_path=str(tmp_path))
    assert console.error_line(trial) == ""  # no error.txt
    (tmp_path / "error.txt").write_text("Traceback ...\n  File x\n  RuntimeError: CUDA out of memory  \n\n")
    assert console.error_line(trial) == "RuntimeError: CUDA out of memory"
    assert console.error_file(trial) == tmp_path / "error.txt"
    (tmp_path / "error.txt").write_text("\n \n")
    assert console.error_line(trial) == ""


def assert_clean(text: str) -> None:
    for noise in NOISE:
        hits = [line for line in text.splitlines() if noise in line]
        assert not hits, f"Ray noise {noise!r} on the console: {hits[:3]}"


def read_scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """tag -> [(step, value)] from the TFRecord event files in `folder` (tensorboardX's protobufs)."""
    from tensorboardX.proto.event_pb2 import Event

    scalars: dict[str, list] = {}
    for path in sorted(folder.glob("events.out.tfevents.*")):
        data = path.read_bytes()
        pos = 0
        while pos < len(data):
            (length,) = struct.unpack("<Q", data[pos : pos + 8])
            event = Event.FromString(data[pos + 12 : pos + 12 + length])
            pos += 12 + length + 4  # length, its crc, the record, its crc
            for value in event.summary.value:
                scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
    return scalars


@pytest.mark.ray
def test_train_console_shows_progress_and_no_ray_noise(train_run):
    out, result = train_run
    assert_clean(result.stdout + result.stderr)
    epochs = sorted(int(m.group(1)) for m in PLAIN_PROGRESS.finditer(result.stdout))
    assert epochs == [1, 2], result.stdout  # one progress line per epoch, each fold on it
    assert f"Ray's own output: {out}/logs/" in result.stdout
    assert result.stdout.rstrip().splitlines()[-1].startswith("done in"), "lines after the summary"
    workers = (out / "logs" / "workers.log").read_text()
    assert "pid=" in workers  # Ray's worker lines kept, in the run folder
    assert '"event": "epoch"' not in workers  # the epochs came from progress.jsonl, not Ray's log stream


@pytest.mark.ray
def test_train_writes_fold_curves_as_tensorboard_events(train_run):
    out, _ = train_run
    for fold in range(3):
        scalars = read_scalars(out / run_folder.TENSORBOARD / f"fold_{fold}")
        for tag in ("train_loss", "val_loss", "val_map", "lr"):
            assert [step for step, _ in scalars[tag]] == [1, 2], (fold, tag)
    progress = [json.loads(line) for line in (out / run_folder.PROGRESS).read_text().splitlines()]
    assert read_scalars(out / run_folder.TENSORBOARD / "fold_1")["val_map"][-1][1] == pytest.approx(
        progress[-1]["val_map_fold1"], rel=1e-6
    )


@pytest.mark.ray
def test_a_real_tiny_run_writes_its_report(train_run):
    from orchestrator.report import main
    from tests.test_report import assert_real_pngs

    out, result = train_run
    page = out / "report" / "index.html"
    assert f"report: {page}" in result.stdout
    assert {"curves.png", "threshold.png"} <= set(assert_real_pngs(page))
    before = (out / "report" / "curves.png").stat().st_mtime_ns
    assert main(["--run", str(out)]) == 0  # rebuilt from the run folder alone
    assert (out / "report" / "curves.png").stat().st_mtime_ns > before


def check_search_console(out, result, trials: int, epochs: int) -> None:
    """Every trial: a start line, one plain progress line per epoch in order, and an end line that
    matches its epochs; no Ray noise; the summary last; per-fold TensorBoard curves."""
    text = result.stdout + result.stderr
    assert_clean(text)
    started = re.findall(r"^trial (\w+) started: ", result.stdout, re.M)
    assert len(started) == trials, result.stdout
    for trial in started:
        seen = [
            int(e)
            for e in re.findall(rf"^trial {trial} \(.*?\) epoch (\d+)/{epochs} \|", result.stdout, re.M)
        ]
        assert seen and seen == list(range(1, len(seen) + 1)), (trial, seen)
        odd = [
            line
            for line in result.stdout.splitlines()
            if line.startswith(f"trial {trial} (") and not PLAIN_PROGRESS.search(line)
        ]
        assert not odd, odd
        end = re.search(
            rf"^(?:error: )?trial {trial} (finished|pruned by ASHA after epoch (\d+)/{epochs}|FAILED)",
            text,
            re.M,
        )
        assert end, f"trial {trial} has no end line"
        assert end.group(1) != "finished" or seen[-1] == epochs
        assert not end.group(2) or int(end.group(2)) == len(seen)
        assert read_scalars(out / run_folder.TENSORBOARD / f"trial-{trial}" / "fold_1")["val_map"]
    assert result.stdout.rstrip().splitlines()[-1].startswith("search done"), "lines after the summary"
    assert (out / "report" / "index.html").exists()


@pytest.mark.ray
def test_the_search_console_shows_every_trial_its_folds_and_its_end(search_run):
    out, result, _ = search_run
    check_search_console(out, result, trials=4, epochs=3)
    assert re.search(r"^trial \w+ pruned by ASHA after epoch 1/3: ", result.stdout, re.M), result.stdout
    assert re.search(r"^error: trial \w+ FAILED: .*FloatingPointError", result.stderr, re.M), result.stderr


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_bare_tune_console_shows_trials_and_folds_and_no_ray_noise(tmp_path):
    """The bare command a new user runs (embedded default: 4 trials x 3 folds x 4 epochs, ~5 min)."""
    out = tmp_path / "tune"
    result = run_entry("orchestrator.tune", ["--out", str(out)], timeout=1200)
    (tmp_path / "console.txt").write_text(result.stdout + "\n--- stderr ---\n" + result.stderr)
    assert result.returncode == 0, result.stderr[-3000:]
    check_search_console(out, result, trials=4, epochs=4)


RESTART_SCRIPT = """
import sys
from pathlib import Path
from orchestrator import console
from orchestrator.kfold import run_kfold
from orchestrator.runtime import fold_resources, init_ray
from salt_model.config import load_config
from salt_model.data.loading import load_split
from salt_model.data.folds import make_folds

root, out, overrides = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:]
config = load_config(None, overrides)
data = load_split(root, "train")
folds = make_folds(data.masks, 3, config.data.fold_seed)
console.setup(out, False, config.train.epochs, 3)
init_ray()
run_kfold(config, data, folds, out, fold_resources(3, None, None), max_failures=2,
          inject_failure={"fold": 1, "epoch": 2, "marker": str(out / "failed-once")})
console.end_live_view()
print("trained")
"""


@pytest.mark.ray
@pytest.mark.slow
def test_a_failed_fold_worker_and_its_restart_show_as_warnings(tiny_data_root, tmp_path):
    out = tmp_path / "run"
    result = run([sys.executable, "-c", RESTART_SCRIPT, str(tiny_data_root), str(out), *TINY])
    assert result.returncode == 0, result.stderr[-3000:]
    assert (out / "failed-once").exists(), "the injected failure did not happen"
    assert_clean(result.stdout + result.stderr)
    assert (
        "warning: fold worker failed (fold 1: RuntimeError: injected failure in fold 1 at epoch 2)"
        in result.stdout
    )
    for fold in range(3):
        assert f"fold {fold}: worker restarted, resuming after epoch 1" in result.stdout
    assert result.stdout.rstrip().splitlines()[-1] == "trained"


def test_tune_progress_table_records_each_trial_epoch_and_names_pruned_and_failed_trials(tmp_path, capsys):
    from types import SimpleNamespace

    from orchestrator.tune_callbacks import ProgressTable

    console._State.view = console.ProgressView(epochs=4, folds=3, stream=sys.stdout, tty=False)
    console._State.closed = False
    table = ProgressTable(epochs=4, folds=3, out=tmp_path)
    trial = SimpleNamespace(
        trial_id="t1",
        config={"schedule": "cosine", "loss_switch_epoch": 2, "lr": 0.01},
        local_path=str(tmp_path),
    )
    try:
        table.on_trial_start(0, [], trial)
        for epoch in (1, 2):
            table.on_trial_result(0, [], trial, {**metrics(epoch), "config": trial.config})
        trial.last_result = metrics(2)
        table.on_trial_complete(0, [], trial)  # stopped at epoch 2 of 4: ASHA pruned it
        (tmp_path / "error.txt").write_text("Traceback ...\nRuntimeError: CUDA out of memory\n")
        table.on_trial_error(0, [], SimpleNamespace(trial_id="t2", local_path=str(tmp_path)))
    finally:
        console._State.view = None
    out, err = capsys.readouterr()
    assert "trial t1 started: " in out and "lr=0.01" in out
    assert [int(m.group(1)) for m in PLAIN_PROGRESS.finditer(out)] == [1, 2]
    assert "trial t1 (cosine, switch 2) epoch 2/4" in out
    assert "trial t1 pruned by ASHA after epoch 2/4: best_val_map 0.5500" in out
    assert "error: trial t2 FAILED: RuntimeError: CUDA out of memory" in err
    rows = [json.loads(line) for line in (tmp_path / run_folder.PROGRESS).read_text().splitlines()]
    assert [(r["trial_id"], r["epoch"]) for r in rows] == [("t1", 1), ("t1", 2)] and "config" not in rows[0]
    assert [
        s for s, _ in read_scalars(tmp_path / run_folder.TENSORBOARD / "trial-t1" / "fold_0")["val_map"]
    ] == [1, 2]


def test_the_controller_merges_every_folds_report_into_means_and_per_fold_values():
    from orchestrator.callbacks import merge_fold_metrics

    per_fold = [
        {"fold": r, "epoch": 3, "lr": 0.01, "loss": "bce", "epoch_s": 10.0 + r, "val_map": 0.5 + 0.1 * r,
         "train_loss": 0.2, "node": f"n{r}", "resumed_after": 2 - r}
        for r in range(3)
    ]  # fmt: skip
    merged = merge_fold_metrics(per_fold)
    assert merged["val_map"] == pytest.approx(0.6) and merged["val_map_fold2"] == pytest.approx(0.7)
    assert merged["epoch_s"] == 12.0 and merged["resumed_after"] == 0 and merged["resumed_after_fold0"] == 2
    assert merged["node_fold1"] == "n1" and "val_iou" not in merged
    fatal = {"fatal_error": "fold 1: FloatingPointError: nan loss", "epoch": 3}
    assert merge_fold_metrics([fatal] * 3) == fatal
