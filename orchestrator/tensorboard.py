"""Per-fold training curves as TensorBoard event files inside the run folder.

`tensorboard --logdir OUT/logs/tensorboard` shows one run per fold (`fold_{r}`, and `[trial-ID/]fold_{r}`
for every trial of a search) with the same tags, so the folds of a trial overlay on one chart.
Written with tensorboardX's event writer (a Ray Tune dependency) from the orchestrator's report path: the Train
controller's callback for orchestrator.train, the Tune driver's callback for orchestrator.tune.
"""

from __future__ import annotations

import time
from pathlib import Path

FOLD_TAGS = ("train_loss", "val_loss", "val_map", "val_iou", "best_val_map")  # `{tag}_fold{r}` in a report


class FoldCurves:
    """One event file per fold under `root`; `add` takes one merged epoch report.

    Events are written and flushed synchronously: tensorboardX's SummaryWriter queues them for a
    background thread, and the Train controller that calls `add` may exit before that thread has
    written the last epoch (seen in CI: a fold's last epoch missing from its curve).
    """

    def __init__(self, root: str | Path, folds: int):
        self.root, self.folds = Path(root), folds
        self.writers: dict[int, object] = {}

    def _writer(self, fold: int):
        if fold not in self.writers:
            from tensorboardX.event_file_writer import EventsWriter

            folder = self.root / f"fold_{fold}"
            folder.mkdir(parents=True, exist_ok=True)
            self.writers[fold] = EventsWriter(str(folder / "events"))
        return self.writers[fold]

    def add(self, metrics: dict) -> None:
        from tensorboardX.proto.event_pb2 import Event
        from tensorboardX.summary import scalar

        epoch, now = int(metrics["epoch"]), time.time()
        for fold in range(self.folds):
            values = {tag: metrics.get(f"{tag}_fold{fold}") for tag in FOLD_TAGS}
            values["lr"] = metrics.get("lr")
            writer = self._writer(fold)
            for tag, value in values.items():
                if value is not None:
                    writer.write_event(Event(wall_time=now, step=epoch, summary=scalar(tag, float(value))))
            writer.flush()

    def close(self) -> None:
        for writer in self.writers.values():
            writer.close()
        self.writers.clear()
