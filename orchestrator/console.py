"""What a user sees: our own lines on the console, Ray's chatter in log files in the run folder.

Levers, all public Ray/Python settings except one: Ray's, Optuna's and Python's warnings loggers get a
file handler instead of the terminal (`OUT/logs/driver.log`); Tune's own reporter is the legacy one at
verbosity 0 (`RAY_AIR_NEW_OUTPUT=0`, which also drops its TensorBoard hint into /tmp/ray); Ray Data's
progress bars are off (DataContext); and the worker lines Ray streams to the driver (`log_to_driver`)
are routed by a handler on Ray's stdstream dispatcher (Ray's internal fan-out, the one private piece)
into `OUT/logs/workers.log`; the C++ core's own stderr lines in the driver go to
`OUT/logs/driver-native.log` (file descriptor 2 is pointed there, Python's sys.stderr keeps the
terminal). Worker lines that start with `MARK` are ours (fold progress, restarts, failures): they come
to the console without Ray's `(pid=...)` prefix. `--verbose` keeps Ray's own output on the terminal.

The live view (`ProgressView`) shows every running trial (or the one train run) and its folds: epoch/of,
current and best metric, elapsed and ETA; redrawn in place with bars on a terminal, one plain line per
epoch otherwise.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
import warnings
from pathlib import Path

MARK = "[salt] "  # a worker line that starts with this is ours: JSON event or plain message
BAR = 20  # bar width in characters


class _State:
    log_dir: Path | None = None
    verbose: bool = True  # until setup() says otherwise, Ray behaves as it always does
    view: ProgressView | None = None
    closed = False  # after the run's last epoch: late worker lines stay in the log file
    lock = threading.Lock()


def setup(out: Path, verbose: bool, epochs: int, folds: int) -> Path:
    """Call before Ray starts: route Ray/Optuna/warnings to OUT/logs and create the live view."""
    log_dir = Path(out) / "logs"
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


def cause(error: BaseException) -> str:
    """One line: the exception's type and the last line of its message (Ray wraps worker tracebacks)."""
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    last = lines[-1] if lines else ""
    return (last if ":" in last else f"{type(error).__name__}: {last}")[:300]


def worker_say(message: str | dict) -> None:
    """In a Ray worker or Train controller: a line (or JSON event) for the driver's console."""
    text = json.dumps(message) if isinstance(message, dict) else message
    print(MARK + text, flush=True)


def on_worker_line(text: str) -> None:
    if _State.closed:
        return
    if text.startswith("{"):
        event = json.loads(text)
        kind = event.pop("event", None)
        if kind == "epoch" and _State.view is not None:
            _State.view.update(event.pop("trial", "run"), event)
            return
        if kind == "failure":
            causes = "; ".join(f"fold {r}: {c}" for r, c in sorted(event["folds"].items()))
            say(
                f"warning: fold worker failed ({causes}); Ray Train restarts the folds from the last checkpoint"
            )
            return
    say(text)


def say(line: str, error: bool = False) -> None:
    """A line of ours, printed above the live view."""
    with _State.lock:
        view = _State.view
        if view is not None:
            view.clear()
        print(line, file=sys.stderr if error else sys.stdout, flush=True)
        if view is not None:
            view.draw()


def view() -> ProgressView | None:
    return _State.view


def end_live_view(final_epoch: int | None = None, wait_s: float = 10.0) -> None:
    """The training is over: wait (briefly) for the last epoch's line, which travels through Ray's log
    stream, clear the live block, and keep any later worker line in the log file only."""
    deadline = time.time() + wait_s
    while final_epoch and _State.view is not None and time.time() < deadline:
        metrics = _State.view.runs.get("run", {}).get("metrics") or {}
        if metrics.get("epoch", 0) >= final_epoch:
            break
        time.sleep(0.1)
    with _State.lock:
        if _State.view is not None:
            _State.view.clear()
            _State.view.runs.clear()
        _State.closed = True


def clock(seconds: float) -> str:
    seconds = int(max(0, seconds))
    h, rest = divmod(seconds, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


def bar(done: int, total: int) -> str:
    filled = round(BAR * done / max(total, 1))
    return "█" * filled + "·" * (BAR - filled)


class ProgressView:
    """Running trials and their folds: epoch/of, metric, best, elapsed, ETA."""

    def __init__(self, epochs: int, folds: int, stream=None, tty: bool | None = None):
        self.epochs, self.folds = epochs, folds
        self.stream = stream or sys.stdout
        self.tty = self.stream.isatty() if tty is None else tty
        self.runs: dict[str, dict] = {}  # trial id -> last metrics, start time
        self.drawn = 0  # lines of the live block on screen (TTY only)
        self.ticker: threading.Thread | None = None

    def _tick(self) -> None:
        """Redraws the block every second on a terminal, so elapsed and ETA move between epochs."""
        while True:
            time.sleep(1.0)
            with _State.lock:
                if self.drawn:
                    self.clear()
                    self.draw()

    def start(self, run: str, label: str = "") -> None:
        self.runs.setdefault(run, {"start": time.time(), "label": label, "metrics": None})

    def finish(self, run: str) -> None:
        with _State.lock:
            self.clear()
            self.runs.pop(run, None)
            self.draw()

    def update(self, run: str, metrics: dict) -> None:
        with _State.lock:
            self.start(run)
            self.runs[run]["metrics"] = metrics
            if "epoch_s" in metrics:
                self.runs[run].setdefault("epoch_s", []).append(float(metrics["epoch_s"]))
            if self.tty:
                self.clear()
                self.draw()
                if self.ticker is None:
                    self.ticker = threading.Thread(target=self._tick, name="salt-progress", daemon=True)
                    self.ticker.start()
            else:
                print(self.plain_line(run), file=self.stream, flush=True)

    def timing(self, run: str) -> tuple[float, float | None]:
        """Elapsed since the run (trial) started; ETA from the mean epoch time of its slowest fold."""
        state = self.runs[run]
        elapsed = time.time() - state["start"]
        epoch = (state["metrics"] or {}).get("epoch", 0)
        times = state.get("epoch_s") or []
        eta = sum(times) / len(times) * (self.epochs - epoch) if times else None
        return elapsed, eta

    def fold_text(self, m: dict, r: int) -> str:
        return f"{m.get(f'val_map_fold{r}', float('nan')):.3f}/{m.get(f'best_val_map_fold{r}', float('nan')):.3f}"

    def plain_line(self, run: str) -> str:
        state, m = self.runs[run], self.runs[run]["metrics"]
        elapsed, eta = self.timing(run)
        name = f"trial {run} " if run != "run" else ""
        folds = " ".join(self.fold_text(m, r) for r in range(self.folds))
        return (
            f"{name}{state['label']}epoch {m['epoch']}/{self.epochs} | {m.get('loss', '')} val_map "
            f"{m['val_map']:.4f} best {m['best_val_map']:.4f} | folds now/best {folds} | "
            f"{clock(elapsed)} elapsed, ETA {clock(eta) if eta is not None else '?'}"
        )

    def block(self) -> list[str]:
        lines = []
        for run, state in self.runs.items():
            m = state["metrics"]
            if m is None:
                lines.append(f"trial {run} {state['label']}starting...")
                continue
            elapsed, eta = self.timing(run)
            eta_text = clock(eta) if eta is not None else "?"
            name = f"trial {run} {state['label']}" if run != "run" else "folds mean "
            lines.append(
                f"{name}{bar(m['epoch'], self.epochs)} {m['epoch']}/{self.epochs} val_map "
                f"{m['val_map']:.4f} best {m['best_val_map']:.4f}  {clock(elapsed)} ETA {eta_text}"
            )
            for r in range(self.folds):
                lines.append(
                    f"  fold {r} {bar(m['epoch'], self.epochs)} {m['epoch']}/{self.epochs} val_map "
                    f"{m.get(f'val_map_fold{r}', float('nan')):.4f} best "
                    f"{m.get(f'best_val_map_fold{r}', float('nan')):.4f}"
                )
        return lines

    def clear(self) -> None:
        if self.tty and self.drawn:
            self.stream.write(f"\x1b[{self.drawn}F\x1b[J")  # up to the block's first line, erase down
            self.stream.flush()
        self.drawn = 0

    def draw(self) -> None:
        if not self.tty:
            return
        lines = self.block()
        if lines:
            self.stream.write("\n".join(lines) + "\n")
            self.stream.flush()
        self.drawn = len(lines)
