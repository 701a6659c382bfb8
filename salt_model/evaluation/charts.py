"""The run report's charts, drawn with matplotlib's Agg backend (files only, no display, no Ray).

Training curves per fold (train loss, val loss, val metric, lr) with the BCE -> Lovasz switch and any
snapshot epochs marked; the OOF threshold-vs-metric curve; and for a search Optuna's own matplotlib
optimisation history and parameter importances (PED-ANOVA: Optuna's evaluator that needs no
scikit-learn, unlike the default fANOVA), plus the pruning picture: every trial's fold-mean metric by
epoch, ASHA's rungs, and where each pruned trial stopped.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

PANELS = (
    ("train_loss", "train loss"),
    ("val_loss", "val loss"),
    ("val_map", "val metric (mAP@IoU)"),
    ("lr", "lr"),
)


def _save(fig, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90, bbox_inches="tight")
    plt.close(fig)
    return path


def training_curves(
    path: Path, histories: list[list[dict]], switch_epoch: int | None, snapshot_epochs: list[int] = ()
) -> Path:
    """One panel per quantity, one line per fold. `histories[r]` holds fold r's epoch dicts (1-based
    `epoch`); `switch_epoch` is train.loss_switch_epoch (0-based: epoch switch+1 is the first Lovasz one)."""
    fig, axes = plt.subplots(1, 4, figsize=(17, 3.6))
    for (key, title), ax in zip(PANELS, axes, strict=True):
        for fold, history in enumerate(histories):
            rows = [h for h in history if key in h]
            if rows:
                ax.plot([h["epoch"] for h in rows], [h[key] for h in rows], marker=".", label=f"fold {fold}")
        if switch_epoch is not None and switch_epoch > 0:
            ax.axvline(switch_epoch + 0.5, color="gray", linestyle="--", linewidth=1)
        for i, epoch in enumerate(snapshot_epochs):
            ax.axvline(
                epoch,
                color="tab:purple",
                linestyle=":",
                linewidth=1,
                label="snapshot/SWA" if i == 0 else None,
            )
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if key == "lr":
            ax.ticklabel_format(axis="y", style="sci", scilimits=(0, 0))
    axes[0].legend(fontsize=8)
    if switch_epoch:
        axes[1].annotate(
            "BCE | Lovasz", (switch_epoch + 0.5, 0.97), xycoords=("data", "axes fraction"), ha="center",
            va="top", fontsize=8, color="gray", backgroundcolor="white",
        )  # fmt: skip
    return _save(fig, path)


def threshold_plot(
    path: Path, grid: np.ndarray, scores: np.ndarray, chosen: float, chosen_score: float
) -> Path:
    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.plot(grid, scores, marker=".")
    ax.axvline(chosen, color="tab:red", linestyle="--", linewidth=1)
    ax.annotate(f"chosen {chosen:g}: {chosen_score:.4f}", (chosen, 0.04), xycoords=("data", "axes fraction"),
                xytext=(5, 0), textcoords="offset points", color="tab:red", fontsize=9)  # fmt: skip
    ax.set_xlabel("pixel threshold (min area and empty threshold as chosen)")
    ax.set_ylabel("OOF competition metric")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def optuna_history(path: Path, study) -> Path:
    """Optuna's optimisation history (value per trial, best so far)."""
    from optuna.visualization.matplotlib import plot_optimization_history

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Optuna marks its matplotlib plots experimental
        ax = plot_optimization_history(study)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.figure.set_size_inches(7, 3.8)
    return _save(ax.figure, path)


def optuna_importances(path: Path, study) -> Path | None:
    """Parameter importances by PED-ANOVA; None when too few trials finished to compare."""
    from optuna.importance import PedAnovaImportanceEvaluator
    from optuna.trial import TrialState
    from optuna.visualization.matplotlib import plot_param_importances

    if len(study.get_trials(states=(TrialState.COMPLETE,))) < 2:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ax = plot_param_importances(study, evaluator=PedAnovaImportanceEvaluator())
    ax.figure.set_size_inches(7, 3.8)
    return _save(ax.figure, path)


def pruning_plot(
    path: Path, curves: dict[str, tuple[list, list]], pruned: set[str], rungs: list[int]
) -> Path:
    """Every trial's fold-mean metric by epoch; a pruned trial ends in a red x at the rung it stopped."""
    with plt.style.context("default"):  # Optuna's plots switch matplotlib to its ggplot style
        fig, ax = plt.subplots(figsize=(7, 3.8))
    for rung in rungs:
        ax.axvline(rung, color="gray", linestyle=":", linewidth=1)
    for trial, (epochs, values) in curves.items():
        (line,) = ax.plot(epochs, values, marker=".", alpha=0.8, label=trial)
        if trial in pruned and epochs:
            ax.plot(epochs[-1], values[-1], "x", color="tab:red", markersize=10, markeredgewidth=2)
    ax.set_xlabel("epoch (dotted: ASHA rungs)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("fold-mean best_val_map")
    ax.set_title("trials by epoch; red x = pruned there")
    if len(curves) <= 12:
        ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return _save(fig, path)
