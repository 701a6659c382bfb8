"""Per-fold training curves as TensorBoard event files inside the run folder.

`tensorboard --logdir OUT/tensorboard` shows one run per fold (`fold_{r}`, and `[trial-ID/]fold_{r}`
for every trial of a search) with the same tags, so the folds of a trial overlay on one chart.
Written with tensorboardX (a Ray Tune dependency) from the orchestrator's report path: the Train
controller's callback for orchestrator.train, the Tune driver's callback for orchestrator.tune.
"""

from __future__ import annotations

from pathlib import Path

FOLD_TAGS = ("train_loss", "val_loss", "val_map", "val_iou", "best_val_map")  # `{tag}_fold{r}` in a report


class FoldCurves:
    """One event-file writer per fold under `root`; `add` takes one merged epoch report."""

    def __init__(self, root: str | Path, folds: int):
        self.root, self.folds = Path(root), folds
        self.writers: dict[int, object] = {}

    def _writer(self, fold: int):
        if fold not in self.writers:
            from tensorboardX import SummaryWriter

            self.writers[fold] = SummaryWriter(str(self.root / f"fold_{fold}"), flush_secs=10)
        return self.writers[fold]

    def add(self, metrics: dict) -> None:
        epoch = int(metrics["epoch"])
        for fold in range(self.folds):
            writer = self._writer(fold)
            for tag in FOLD_TAGS:
                value = metrics.get(f"{tag}_fold{fold}")
                if value is not None:
                    writer.add_scalar(tag, float(value), epoch)
            if "lr" in metrics:
                writer.add_scalar("lr", float(metrics["lr"]), epoch)
            writer.flush()

    def close(self) -> None:
        for writer in self.writers.values():
            writer.close()
        self.writers.clear()
