"""Cross-validation of the ensemble variants: per-fold and overall OOF scores, and the honest choice.

The best epoch of a fold is picked on that fold's held-out tiles, so its OOF score is optimistic: it
is chosen on the tiles it is scored on. The last epoch, the cycle-end snapshot ensemble and SWA are fixed before the
held-out labels are seen; the run uses whichever of these honest variants scores highest on OOF, and
reports the best-epoch figure beside them. Each variant's thresholds are chosen on the OOF of that
same member average, since averaging members moves probabilities (the empty head's most of all)
towards 0.5, so thresholds tuned on one model do not fit an average.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from salt_model.evaluation.error_analysis import emptiness
from salt_model.evaluation.metric import image_scores
from salt_model.evaluation.thresholds import (
    RULES,
    Thresholds,
    at_edge,
    binarize,
    choose_thresholds,
    default_thresholds,
)
from salt_model.training.members import HONEST, Member, fold_variants, mean_probs


@dataclass
class VariantCV:
    name: str
    honest: bool
    members_per_fold: list[int]
    member_names: list[list[str]]  # per fold
    fold_scores: list[float]  # each fold's OOF metric at the default thresholds
    oof_score_default_thresholds: float  # all folds' tiles together, default thresholds
    thresholds: Thresholds  # chosen on this variant's own OOF
    oof_score: float  # at those thresholds
    probs: np.ndarray = field(repr=False)  # (N, 101, 101) float32, in `index` order
    empty: np.ndarray | None = field(repr=False)  # (N,)
    extra: dict = field(default_factory=dict)

    def summary(self) -> dict:
        return {
            "honest": self.honest,
            "members_per_fold": self.members_per_fold,
            "members": self.member_names,
            "fold_scores": self.fold_scores,
            "mean_fold_score": float(np.mean(self.fold_scores)),
            "oof_score_default_thresholds": self.oof_score_default_thresholds,
            "oof_score": self.oof_score,
            "thresholds": self.thresholds.to_dict(),
            **self.extra,
        }


def cross_validate(
    folds: list[tuple[np.ndarray, dict[str, Member]]], masks: np.ndarray, rule: str = "gate"
) -> dict:
    """Scores every variant present in all `folds` ((val_index, members) each) against `masks`.

    masks: (N_all, 101, 101) truth of the whole training split; the variants' stitched OOF arrays follow
    the concatenated val_index order, returned as "index". `rule`: decode.empty_rule, the rule every
    variant's thresholds are chosen for (the chosen variant also reports the other rule's best score).
    Returns {"index", "variants", "chosen"}.
    """
    index = np.concatenate([val for val, _ in folds])
    truth = masks[index].astype(bool)
    per_fold = [fold_variants(members) for _, members in folds]
    names = [n for n in ("best", *HONEST) if all(n in v for v in per_fold)]
    if not names:
        raise ValueError("cross_validate: the folds share no ensemble variant (no 'best' member?)")
    variants = {}
    offsets = np.cumsum([0] + [len(val) for val, _ in folds])
    for name in names:
        stacked = [mean_probs(v[name]) for v in per_fold]
        probs = np.concatenate([p for p, _ in stacked])
        has_empty = all(e is not None for _, e in stacked)
        empty = np.concatenate([e for _, e in stacked]) if has_empty else None
        default = default_thresholds(empty, rule)
        pred = binarize(probs, empty, default)
        scores = image_scores(truth, pred)
        thresholds, score = choose_thresholds(probs, empty, truth, rule=rule)
        variants[name] = VariantCV(
            name=name,
            honest=name in HONEST,
            members_per_fold=[len(v[name]) for v in per_fold],
            member_names=[[m.name for m in v[name]] for v in per_fold],
            fold_scores=[float(scores[a:b].mean()) for a, b in zip(offsets[:-1], offsets[1:], strict=True)],
            oof_score_default_thresholds=float(scores.mean()),
            thresholds=thresholds,
            oof_score=score,
            probs=probs,
            empty=empty,
        )
    chosen = choose_variant(variants)
    _emptiness_figures(variants[chosen], truth, rule)
    return {"index": index, "variants": variants, "chosen": chosen}


def choose_variant(variants: dict[str, VariantCV]) -> str:
    """The honest variant with the highest OOF score (ties: the one with fewer members, HONEST order)."""
    honest = [variants[n] for n in HONEST if n in variants]
    if not honest:
        raise ValueError("no honest variant (last/snapshots/swa) to choose from")
    return max(honest, key=lambda v: v.oof_score).name  # max keeps the first of equal scores


def _emptiness_figures(v: VariantCV, truth: np.ndarray, rule: str) -> None:
    """The submission variant's salt tiles called empty and empty tiles given salt, per coverage class
    (at its chosen thresholds), which thresholds sit at a grid edge, and the other empty rule's best."""
    v.extra["emptiness"] = emptiness(truth, binarize(v.probs, v.empty, v.thresholds))
    v.extra["thresholds_at_grid_edge"] = at_edge(v.thresholds, v.empty is not None)
    if v.empty is None:
        return
    by_rule = {rule: {"oof_score": v.oof_score, "thresholds": v.thresholds.to_dict()}}
    for other in (r for r in RULES if r != rule):
        th, score = choose_thresholds(v.probs, v.empty, truth, rule=other)
        by_rule[other] = {"oof_score": score, "thresholds": th.to_dict()}
    v.extra["oof_score_by_empty_rule"] = by_rule
