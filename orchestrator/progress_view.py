"""The live progress view: every running trial (or the one train run) and its folds, with epoch/of,
current and best metric, elapsed and ETA. On a terminal the block is redrawn in place with bars (and
ticks every second so the clocks move); otherwise one plain line per epoch, fit for logs and CI.
"""

from __future__ import annotations

import sys
import threading
import time

BAR = 20  # bar width in characters
LOCK = threading.RLock()  # one writer at a time: the view, and console lines printed above it


def clock(seconds: float) -> str:
    seconds = int(max(0, seconds))
    h, rest = divmod(seconds, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


def score(value, digits: int = 4) -> str:
    """A metric, or "-" on an epoch that was not evaluated (train.eval_every)."""
    return "-" if value is None else f"{value:.{digits}f}"


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
            with LOCK:
                if self.drawn:
                    self.clear()
                    self.draw()

    def start(self, run: str, label: str = "") -> None:
        self.runs.setdefault(run, {"start": time.time(), "label": label, "metrics": None})

    def finish(self, run: str) -> None:
        with LOCK:
            self.clear()
            self.runs.pop(run, None)
            self.draw()

    def update(self, run: str, metrics: dict) -> None:
        with LOCK:
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
        return f"{score(m.get(f'val_map_fold{r}'), 3)}/{score(m.get(f'best_val_map_fold{r}'), 3)}"

    def plain_line(self, run: str) -> str:
        state, m = self.runs[run], self.runs[run]["metrics"]
        elapsed, eta = self.timing(run)
        name = f"trial {run} " if run != "run" else ""
        folds = " ".join(self.fold_text(m, r) for r in range(self.folds))
        return (
            f"{name}{state['label']}epoch {m['epoch']}/{self.epochs} | {m.get('loss', '')} val_map "
            f"{score(m.get('val_map'))} best {score(m.get('best_val_map'))} | folds now/best {folds} | "
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
            name = f"trial {run} {state['label']}" if run != "run" else f"{state['label']}folds mean "
            lines.append(
                f"{name}{bar(m['epoch'], self.epochs)} {m['epoch']}/{self.epochs} val_map "
                f"{score(m.get('val_map'))} best {score(m.get('best_val_map'))}  {clock(elapsed)} ETA {eta_text}"
            )
            for r in range(self.folds):
                lines.append(
                    f"  fold {r} {bar(m['epoch'], self.epochs)} {m['epoch']}/{self.epochs} val_map "
                    f"{score(m.get(f'val_map_fold{r}'))} best {score(m.get(f'best_val_map_fold{r}'))}"
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
