"""What a user sees: our own lines on the console, Ray's chatter in log files in the run folder.

Levers, all public Ray/Python settings except one: Ray's, Optuna's and Python's warnings loggers get a
file handler instead of the terminal (`OUT/logs/driver.log`); Tune's own reporter is the legacy one at
verbosity 0 (`RAY_AIR_NEW_OUTPUT=0`, which also drops its TensorBoard hint into /tmp/ray); Ray Data's
progress bars are off (DataContext); and the worker lines Ray streams to the driver (`log_to_driver`)
are routed by a handler on Ray's stdstream dispatcher (Ray's internal fan-out, the one private piece)
into `OUT/logs/workers.log`; the C++ core's own stderr lines in the driver go to
`OUT/logs/driver-native.log` (file descriptor 2 is pointed there, Python's sys.stderr keeps the
terminal). Worker lines that start with `MARK` are ours (restarts, failures, placement): they come
to the console without Ray's `(pid=...)` prefix. `--verbose` keeps Ray's own output on the terminal.

The live view itself is orchestrator/progress_view.py. Its epochs do not travel through Ray's log
stream: orchestrator.train's driver follows the run's progress.jsonl (orchestrator/progress_follower.py)
and a search's driver gets them from Tune (orchestrator/tune_callbacks.py).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import warnings
from pathlib import Path

from orchestrator.progress_view import LOCK, ProgressView
from salt_model import run_folder

MARK = "[salt] "  # a worker line that starts with this is ours: JSON event or plain message


class _State:
    log_dir: Path | None = None
    verbose: bool = True  # until setup() says otherwise, Ray behaves as it always does
    view: ProgressView | None = None
    closed = False  # after the run's last epoch: late worker lines stay in the log file


def setup(out: Path, verbose: bool, epochs: int, folds: int) -> Path:
    """Call before Ray starts: route Ray/Optuna/warnings to OUT/logs and create the live view."""
    log_dir = Path(out) / run_folder.LOGS
    log_dir.mkdir(parents=True, exist_ok=True)
    _State.log_dir, _State.verbose = log_dir, verbose
    _State.view = ProgressView(epochs, folds)
    _State.closed = False
    if not verbose:
        os.environ["RAY_AIR_NEW_OUTPUT"] = "0"  # legacy reporter: silent at verbose=0, no TB hint
        os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
        quiet_loggers()
        native_stderr_to(log_dir / "driver-native.log")
    return log_dir


def quiet_loggers() -> None:
    """Ray, Optuna, Python warnings -> OUT/logs/driver.log (no terminal handler)."""
    if _State.verbose or _State.log_dir is None:
        return
    import optuna

    optuna.logging.disable_default_handler()
    logging.captureWarnings(True)
    warnings.filterwarnings("default")  # keep them, in the file
    handler = logging.FileHandler(_State.log_dir / "driver.log", delay=True)  # opened on first record
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    names = ["ray", "optuna", "py.warnings", "filelock"]
    names += [n for n in logging.root.manager.loggerDict if n.startswith(("ray.", "optuna."))]
    for name in names:
        logger = logging.getLogger(name)
        for old in list(logger.handlers):
            if isinstance(old, logging.StreamHandler) and not isinstance(old, logging.FileHandler):
                logger.removeHandler(old)
        if name in ("ray", "optuna", "py.warnings") or not logger.propagate:  # e.g. ray.data keeps its own
            if not any(getattr(h, "baseFilename", None) == handler.baseFilename for h in logger.handlers):
                logger.addHandler(handler)
            logger.propagate = False


def native_stderr_to(path: Path) -> None:
    """Ray's C++ core in this process writes its errors straight to file descriptor 2 (e.g.
    `core_worker.cc: Actor ... has constructor arguments in the object store`): point fd 2 at a log
    file, and Python's sys.stderr (our errors, tracebacks) at a copy of the terminal's."""
    if getattr(native_stderr_to, "done", False) or sys.stderr is not sys.__stderr__:
        return  # done already, or stderr is captured (pytest running an entry point in-process)
    sys.stderr.flush()
    terminal = os.dup(2)
    with open(path, "ab") as f:
        os.dup2(f.fileno(), 2)
    sys.stderr = os.fdopen(
        terminal, "w", buffering=1, encoding=sys.stderr.encoding, errors="backslashreplace"
    )
    native_stderr_to.done = True


def capture_ray_logs() -> None:
    """Call right after ray.init(log_to_driver=True): worker lines -> OUT/logs/workers.log, ours -> here."""
    if _State.log_dir is None:
        return  # a library caller (tests, notebooks): leave Ray's output alone
    from ray._private.worker import global_worker_stdstream_dispatcher as dispatcher

    if not _State.verbose:
        dispatcher.remove_handler("ray_print_logs")
        from ray.data import DataContext  # importing it configures the ray.data logger, quieted next

        DataContext.get_current().enable_progress_bars = False
        quiet_loggers()  # Ray Train/Tune/Data loggers created since setup()
    path = _State.log_dir / "workers.log"
    sink = open(path, "a", buffering=1)  # noqa: SIM115 (open for the life of the driver)

    def handle(data: dict) -> None:
        name = f"({data.get('actor_name') or data.get('task_name') or 'worker'} pid={data.get('pid')})"
        for line in data.get("lines", []):
            sink.write(f"{name} {line}\n")
            if line.startswith(MARK):
                on_worker_line(line[len(MARK) :])

    dispatcher.add_handler("salt_console", handle)
    say(f"Ray's own output: {_State.log_dir}/ (driver.log, workers.log); --verbose shows it here")


def add_verbose_arg(parser) -> None:
    parser.add_argument(
        "--verbose",
        action="store_true",
        help="show Ray's own output on the console too (worker lines are always in OUT/logs/workers.log)",
    )


def last_line(text: str) -> str:
    """The last non-blank line of `text`, stripped; "" when there is none."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def cause(error: BaseException) -> str:
    """One line: the exception's type and the last line of its message (Ray wraps worker tracebacks)."""
    last = last_line(str(error))
    return (last if ":" in last else f"{type(error).__name__}: {last}")[:300]


def error_file(trial) -> Path:
    """The traceback Tune writes into a failed trial's local folder."""
    return Path(trial.local_path or "") / "error.txt"


def error_line(trial) -> str:
    """The last line of a failed trial's error.txt (the exception); "" when there is none."""
    path = error_file(trial)
    return last_line(path.read_text()) if path.exists() else ""


def worker_say(message: str | dict) -> None:
    """In a Ray worker or Train controller: a line (or JSON event) for the driver's console."""
    text = json.dumps(message) if isinstance(message, dict) else message
    print(MARK + text, flush=True)


def on_worker_line(text: str) -> None:
    if _State.closed:
        return
    if text.startswith("{"):
        event = json.loads(text)
        if event.pop("event", None) == "failure":
            causes = "; ".join(f"fold {r}: {c}" for r, c in sorted(event["folds"].items()))
            say(
                f"warning: fold worker failed ({causes}); Ray Train restarts the folds from the last checkpoint"
            )
            return
    say(text)


def say(line: str, error: bool = False) -> None:
    """A line of ours, printed above the live view."""
    with LOCK:
        view = _State.view
        if view is not None:
            view.clear()
        print(line, file=sys.stderr if error else sys.stdout, flush=True)
        if view is not None:
            view.draw()


def view() -> ProgressView | None:
    return _State.view


def show_epoch(metrics: dict) -> None:
    """One epoch of orchestrator.train's k-fold run (its merged fold metrics) in the live view."""
    if not _State.closed and _State.view is not None:
        _State.view.update("run", metrics)


def restart_live_view(label: str = "", epochs: int | None = None) -> None:
    """A new stage of the same run (a pseudo-label round): its epochs are shown again, `label` first,
    out of `epochs` when the stage trains another number of them."""
    with LOCK:
        _State.closed = False
        if _State.view is not None:
            if epochs:
                _State.view.epochs = epochs
            _State.view.runs.pop("run", None)
            _State.view.start("run", label)


def end_live_view() -> None:
    """The training is over: clear the live block, and keep any later worker line in the log file only."""
    with LOCK:
        if _State.view is not None:
            _State.view.clear()
            _State.view.runs.clear()
        _State.closed = True
