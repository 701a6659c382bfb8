"""MLflow tracking against a real `mlflow server` (SQLite backend, local artifact root) on 127.0.0.1,
started in its own process group and stopped by its pid: a tiny search (one trial PRUNED by ASHA, one
FAIL), a train run killed and resumed, an unreachable server, and no tracking at all."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from salt_model import run_folder
from tests.cluster_helpers import free_port
from tests.conftest import SEARCH, SEARCH_FAULTS, TINY, check_run, records, tiny_args
from tests.processes import child_env, run, run_entry, start, stop

pytest.importorskip("mlflow", reason='the tracking extra: pip install -e ".[tracking]"')

TRIALS = 4
SEARCH_EPOCHS = 3


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """A real MLflow tracking server: its URI. No job runner (it would spawn consumers we do not need)."""
    root = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    cmd = [
        sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
        "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
        "--default-artifact-root", str(root / "artifacts"), "--workers", "1",
    ]  # fmt: skip
    proc = start(cmd, child_env(MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false"))
    uri = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while True:
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2) as reply:
                if reply.status == 200:
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.time() > deadline:
            stop(proc)
            raise AssertionError(f"mlflow server did not start:\n{proc.stdout.read()[-3000:]}")
        time.sleep(0.5)
    try:
        yield uri
    finally:
        stop(proc)


def client(uri):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri)


def runs_of(uri, out: Path) -> tuple:
    """(parent run, {child key: child run}) of the command whose run folder is `out`."""
    state = json.loads((out / run_folder.TRACKING).read_text())
    c = client(uri)
    return c.get_run(state["parent"]), {k: c.get_run(v) for k, v in state["children"].items()}


def history(uri, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client(uri).get_metric_history(run_id, key))


# -- no Ray


def test_no_tracking_configured_imports_no_mlflow(tiny_data_root):
    """The entry points, their parsers and the tracker factory without a URI leave mlflow unimported."""
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "import orchestrator.train, orchestrator.tune, orchestrator.search_setup\n"
        "from orchestrator import tracking\n"
        "from salt_model.config import load_config\n"
        "config = load_config(None)\n"
        "assert tracking.tracking_uri(None, config) is None\n"
        "assert tracking.start_tracker(None, Path('.'), config, 'train', Path('.'), 0) is None\n"
        "assert orchestrator.search_setup.trial_callbacks(None, config, Path('.'), None) == []\n"
        "print('mlflow' in sys.modules, sorted(m for m in sys.modules if m.startswith('mlflow')))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], env=child_env(), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False []", done.stdout


def test_the_mlflow_flag_without_the_extra_is_one_line_error(tiny_data_root, tmp_path):
    """mlflow made unimportable: --mlflow is one `error:` line naming the install, exit 2, nothing written."""
    out = tmp_path / "run"
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] == 'mlflow':\n"
        "            raise ModuleNotFoundError(name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "from orchestrator.train import main\n"
        "from salt_model.cli import run_cli\n"
        f"run_cli(main, {tiny_args(tiny_data_root, out, '--mlflow', 'http://127.0.0.1:9')!r})\n"
    )
    done = subprocess.run([sys.executable, "-c", code], env=child_env(), capture_output=True, text=True)
    assert done.returncode == 2, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --mlflow http://127.0.0.1:9"), done.stderr
    assert 'pip install -e ".[tracking]"' in lines[0]
    assert not out.exists()


# -- a tiny search, tracked


@pytest.fixture(scope="module")
def tracked_search(mlflow_server, tiny_data_root, tmp_path_factory):
    """`orchestrator.tune --mlflow URI`: 4 trials x 2 folds x 3 epochs, two at once; study trial 2
    learns nothing (PRUNED by ASHA), trial 3 hits a NaN loss (FAIL): (run folder, CompletedProcess)."""
    base = tmp_path_factory.mktemp("tracked")
    out = base / "search"
    faults = [{**f, "marker": str(base / f"fault-{f['study_trial']}")} for f in SEARCH_FAULTS]
    overrides = [*SEARCH, f"search.trials={TRIALS}", "search.max_concurrent=2"]
    result = run_entry(
        "orchestrator.tune",
        tiny_args(tiny_data_root, out, "--mlflow", mlflow_server, overrides=overrides),
        timeout=900,
        SALT_INJECT_FAULT=json.dumps(faults),
    )
    check_run(result, "orchestrator.tune --mlflow")
    print(describe(mlflow_server, out))
    return out, result


def describe(uri, out: Path) -> str:
    """What the server holds for the command in `out`: runs, their tags, metrics, artifacts."""
    parent, children = runs_of(uri, out)
    c = client(uri)
    lines = [
        f"parent {parent.info.run_id} {parent.info.run_name!r} {parent.info.status}: "
        f"{len(parent.data.params)} params, tags "
        + str({k: v for k, v in parent.data.tags.items() if not k.startswith("mlflow.") or "git" in k}),
        "  artifacts: " + ", ".join(a.path for a in c.list_artifacts(parent.info.run_id)),
    ]
    for key, child in sorted(children.items()):
        metrics = sorted(child.data.metrics)
        steps = [s for s, _ in history(uri, child.info.run_id, "val_map")]
        lines.append(
            f"  child {key} {child.info.run_name!r} {child.info.status} state={child.data.tags.get('state')} "
            f"reason={child.data.tags.get('fail_reason', '')[:80]!r} params={dict(sorted(child.data.params.items()))} "
            f"val_map steps {steps}; {len(metrics)} metrics: {', '.join(metrics)}"
        )
    return "\n".join(lines)


@pytest.mark.ray
@pytest.mark.slow
def test_a_search_logs_one_parent_and_one_child_per_trial_with_fold_metrics(mlflow_server, tracked_search):
    out, _ = tracked_search
    parent, children = runs_of(mlflow_server, out)
    assert parent.info.status == "FINISHED"
    assert (
        parent.data.params["train.epochs"] == str(SEARCH_EPOCHS) and parent.data.params["data.folds"] == "2"
    )
    assert parent.data.tags["command"] == "tune" and int(parent.data.tags["data_tiles"]) == 60
    assert parent.data.tags["data"].startswith("synthetic")
    assert len(parent.data.tags.get("mlflow.source.git.commit", "")) == 40
    assert sorted(children) == [f"trial_{n}" for n in range(TRIALS)]
    progress = records(out / run_folder.PROGRESS)
    for key, child in children.items():
        number = int(key.split("_")[1])
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert child.data.params["study_trial"] == str(number) and "lr" in child.data.params
        epochs = sorted(
            {p["epoch"] for p in progress if p.get("study_trial") == number and not p.get("rereport")}
        )
        assert epochs, f"trial {number} reported nothing"
        for metric in ("val_map", "val_map_fold0", "val_map_fold1", "train_loss", "train_loss_fold1", "lr"):
            assert [s for s, _ in history(mlflow_server, child.info.run_id, metric)] == epochs, (key, metric)
        # the fold mean is the mean of the folds, epoch by epoch
        folds = [dict(history(mlflow_server, child.info.run_id, f"val_map_fold{r}")) for r in range(2)]
        for step, value in history(mlflow_server, child.info.run_id, "val_map"):
            assert value == pytest.approx((folds[0][step] + folds[1][step]) / 2, abs=1e-6)


@pytest.mark.ray
@pytest.mark.slow
def test_each_trial_run_carries_its_final_state_and_the_pruned_one_is_tagged_pruned(
    mlflow_server, tracked_search
):
    import pandas as pd

    out, _ = tracked_search
    _, children = runs_of(mlflow_server, out)
    table = pd.read_csv(out / "trials.csv")
    states = {int(row.param_study_trial): row.state for row in table.itertuples()}
    assert {int(k.split("_")[1]): r.data.tags["state"] for k, r in children.items()} == states
    assert children["trial_2"].data.tags["state"] == "PRUNED"
    assert children["trial_2"].info.status == "FINISHED"
    failed = children["trial_3"]
    assert failed.data.tags["state"] == "FAIL" and failed.info.status == "FAILED"
    assert "FloatingPointError" in failed.data.tags["fail_reason"] or "NaN" in failed.data.tags["fail_reason"]
    assert "COMPLETE" in states.values()
    assert all(r.info.status != "RUNNING" for r in children.values())


@pytest.mark.ray
@pytest.mark.slow
def test_the_parent_run_holds_the_run_folders_files(mlflow_server, tracked_search, tmp_path):
    out, _ = tracked_search
    parent, _ = runs_of(mlflow_server, out)
    c = client(mlflow_server)
    top = {a.path for a in c.list_artifacts(parent.info.run_id)}
    assert {"cv.json", "report", "submission.csv", "trials.csv", "best_config.json"} <= top
    assert "report/index.html" in {a.path for a in c.list_artifacts(parent.info.run_id, "report")}
    local = c.download_artifacts(parent.info.run_id, "submission.csv", str(tmp_path))
    assert Path(local).read_text() == (out / "submission.csv").read_text()


# -- train: killed and resumed; an unreachable server


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.faults
def test_a_killed_train_run_resumes_into_the_same_mlflow_runs(mlflow_server, tiny_data_root, tmp_path):
    """The driver SIGKILLed after 2 of 4 epochs: its runs stay RUNNING; the same command again takes
    them over, adds epochs 3-4 to the same child run (each epoch once) and ends them FINISHED."""
    from tests.test_faults_driver import killed

    out = tmp_path / "run"
    overrides = [*TINY, "data.folds=2"]
    cmd = [
        sys.executable, "-m", "orchestrator.train",
        *tiny_args(tiny_data_root, out, "--epochs", "4", "--mlflow", mlflow_server, overrides=overrides),
    ]  # fmt: skip
    progress = out / run_folder.PROGRESS
    state = out / run_folder.TRACKING

    def logged_two(lines) -> bool:  # two epochs in progress.jsonl and in MLflow
        return (
            len(records(progress)) >= 2
            and state.exists()
            and json.loads(state.read_text()).get("lines", {}).get("kfold", 0) >= 2
        )

    killed(cmd, logged_two)
    parent, children = runs_of(mlflow_server, out)
    child = children["kfold"]
    before = [s for s, _ in history(mlflow_server, child.info.run_id, "val_map")]
    assert parent.info.status == "RUNNING" and 2 <= len(before) < 4

    resumed = run(cmd, child_env(), timeout=900)
    check_run(resumed, "the resumed train run")
    again, children_again = runs_of(mlflow_server, out)
    assert again.info.run_id == parent.info.run_id and list(children_again) == ["kfold"]
    run_id = children_again["kfold"].info.run_id
    assert run_id == child.info.run_id
    assert [s for s, _ in history(mlflow_server, run_id, "val_map")] == [1, 2, 3, 4]
    assert [s for s, _ in history(mlflow_server, run_id, "val_map_fold1")] == [1, 2, 3, 4]
    assert again.info.status == "FINISHED" and children_again["kfold"].info.status == "FINISHED"
    assert again.data.tags["resumes"] == "1" and again.data.tags["resume_1_found"] == "RUNNING"
    assert children_again["kfold"].data.tags["state"] == "COMPLETE"
    print(describe(mlflow_server, out))


@pytest.mark.ray
@pytest.mark.slow
def test_an_unreachable_tracking_server_is_a_warning_and_the_run_goes_on(tiny_data_root, tmp_path):
    out = tmp_path / "run"
    overrides = [*TINY, "data.folds=2", "train.epochs=1", "train.loss_switch_epoch=0"]
    started = time.time()
    result = run_entry(
        "orchestrator.train",
        tiny_args(tiny_data_root, out, "--mlflow", "http://127.0.0.1:9", overrides=overrides),
        MLFLOW_HTTP_REQUEST_MAX_RETRIES="0",
        MLFLOW_HTTP_REQUEST_TIMEOUT="2",
    )
    check_run(result, "orchestrator.train with an unreachable tracking server")
    warnings = [
        line for line in result.stdout.splitlines() if "MLflow tracking at http://127.0.0.1:9" in line
    ]
    assert len(warnings) == 1 and warnings[0].startswith("warning:"), result.stdout[-2000:]
    assert (out / "submission.csv").exists()
    print(f"{warnings[0]} | run took {time.time() - started:.0f}s")


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.faults
def test_ctrl_c_ends_the_runs_killed(mlflow_server, tiny_data_root, tmp_path):
    """SIGINT to the driver alone (what Ctrl-C sends it) after an epoch was logged: the command exits
    130 with its resume hint, and its parent and child runs end KILLED, not RUNNING."""
    import os
    import signal

    from tests.test_faults_driver import read_until

    out = tmp_path / "run"
    overrides = [*TINY, "data.folds=2"]
    cmd = [
        sys.executable, "-m", "orchestrator.train",
        *tiny_args(tiny_data_root, out, "--epochs", "6", "--mlflow", mlflow_server, overrides=overrides),
    ]  # fmt: skip
    env = child_env()
    state = out / run_folder.TRACKING
    proc, sent = start(cmd, env), []

    def interrupted(lines) -> bool:  # SIGINT once an epoch is in MLflow; done when the hint is out
        if not sent and state.exists() and json.loads(state.read_text()).get("lines", {}).get("kfold", 0):
            os.kill(proc.pid, signal.SIGINT)
            sent.append(time.time())
        return any("interrupted:" in line for line in lines) and proc.poll() is not None

    try:
        lines = read_until(proc, interrupted, timeout=600)
        code = proc.wait(timeout=60)
    finally:
        stop(proc, env["RAY_TMPDIR"])
    text = "".join(lines)
    assert code == 130, text[-3000:]
    assert "interrupted: finished epochs are checkpointed" in text
    parent, children = runs_of(mlflow_server, out)
    assert parent.info.status == "KILLED" and children["kfold"].info.status == "KILLED", text[-3000:]
