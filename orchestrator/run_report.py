"""Runs on the driver (or alone, `python -m orchestrator.report`): the run report, `OUT/report/index.html`
and its PNGs, built from the run folder's files (what `python -m orchestrator.report --help` lists).
"""

from __future__ import annotations

import html
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from orchestrator.study import STUDY_FILE, load_run_study
from salt_model import run_folder
from salt_model.evaluation import charts, error_analysis
from salt_model.evaluation.pictures import overlay_grid
from salt_model.evaluation.thresholds import Thresholds, binarize
from salt_model.io import atomic_savez, atomic_write_text, read_jsonl


def save_oof_truth(out: Path, ids: np.ndarray, images: np.ndarray, masks: np.ndarray) -> None:
    """OUT/state/oof_truth.npz: what the report needs from the data set, so the run folder stands alone."""
    atomic_savez(
        out / run_folder.OOF_TRUTH, ids=ids, images=images, masks=np.packbits(masks.astype(bool), axis=-1)
    )


def read_progress(run: Path) -> pd.DataFrame:
    rows = read_jsonl(run / run_folder.PROGRESS)  # a run still going may be writing its last line
    if not rows:
        return pd.DataFrame()
    frame = pd.DataFrame(rows)
    if "trial_id" not in frame:
        frame["trial_id"] = "run"
    # a restarted fold group reports its epochs again: keep the last report of each epoch
    return frame.drop_duplicates(["trial_id", "epoch"], keep="last").sort_values(["trial_id", "epoch"])


def fold_histories(progress: pd.DataFrame, folds: int) -> list[list[dict]]:
    histories = []
    for r in range(folds):
        rows = []
        for m in progress.to_dict("records"):
            row = {"epoch": m["epoch"], "lr": m.get("lr")}
            for key in ("train_loss", "val_loss", "val_map"):
                value = m.get(f"{key}_fold{r}")
                if value is not None and not (isinstance(value, float) and math.isnan(value)):
                    row[key] = value
            rows.append(row)
        histories.append(rows)
    return histories


def snapshot_epochs(config: dict) -> list[int]:
    """Epochs (1-based) whose weights join the ensemble besides the last: the snapshots
    (salt_model.training.cadence) and the `train.swa_epochs` averaged at the end."""
    from salt_model.config import Config
    from salt_model.training import cadence

    run = Config.from_dict(config, source="run config")
    t = run.train
    swa = range(t.epochs - t.swa_epochs + 1, t.epochs + 1) if t.swa_epochs else []
    return sorted({*cadence.snapshot_epochs(run), *swa})


def table(rows: list[dict], fmt: dict | None = None) -> str:
    if not rows:
        return "<p>none</p>"
    fmt = fmt or {}
    head = "".join(f"<th>{html.escape(str(k))}</th>" for k in rows[0])
    body = "".join(
        "<tr>"
        + "".join(f"<td>{html.escape(fmt.get(k, '{}').format(v))}</td>" for k, v in r.items())
        + "</tr>"
        for r in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def img(name: str, alt: str) -> str:
    return f'<img src="{name}" alt="{html.escape(alt)}">'


def build(run: Path) -> Path:
    """Writes run/report/index.html and its PNGs from what the run folder holds now; returns the page."""
    run = Path(run)
    if not (run / run_folder.CONFIG).exists():
        raise ValueError(
            f"--run {run}: not a run folder (no config.json); expected an orchestrator.train/tune --out"
        )
    report = run / run_folder.REPORT
    report.mkdir(exist_ok=True)
    for old in report.glob("*.png"):  # a rebuild draws only what the run holds now
        old.unlink()
    base = json.loads((run / run_folder.CONFIG).read_text())
    cv = json.loads((run / run_folder.CV).read_text()) if (run / run_folder.CV).exists() else None
    config = cv["config"] if cv else base
    folds = config["data"]["folds"]
    progress = read_progress(run)
    is_search = (run / STUDY_FILE).exists()
    sections = [
        f"<h1>Run report: {html.escape(run.resolve().name)}</h1>",
        summary_html(run, cv, config, is_search),
    ]

    if not progress.empty:
        trial = pick_trial(progress, cv)
        rows = progress[progress["trial_id"] == trial]
        charts.training_curves(
            report / "curves.png", fold_histories(rows, folds), config["train"]["loss_switch_epoch"],
            snapshot_epochs(config),
        )  # fmt: skip
        title = "Training curves per fold" + (f" (trial {trial})" if trial != "run" else "")
        sections.append(
            f"<h2>{title}</h2><p>Dashed line: BCE &rarr; Lovasz switch after epoch "
            f"{config['train']['loss_switch_epoch']}.</p>{img('curves.png', 'training curves')}"
        )
    else:
        sections.append("<h2>Training curves</h2><p>No epoch reported yet.</p>")

    if cv and (run / run_folder.OOF).exists() and (run / run_folder.OOF_TRUTH).exists():
        sections.append(oof_html(run, report, cv))
    else:
        sections.append(
            "<h2>Out-of-fold predictions</h2><p>Not collected yet (the folds are still training).</p>"
        )

    if (run / run_folder.ROUNDS).exists():
        sections.append(rounds_html(json.loads((run / run_folder.ROUNDS).read_text())))
    if is_search:
        sections.append(search_html(run, report, progress, base))
    page = PAGE.format(title=html.escape(run.resolve().name), body="\n".join(sections))
    atomic_write_text(report / "index.html", page)
    for path in report.iterdir():
        path.chmod(0o644)  # atomic writes start as private temporary files; the page is for sharing
    return report / "index.html"


def rounds_html(rounds: dict) -> str:
    """Pseudo-label rounds (orchestrator/rounds.py): OOF on the labelled tiles and the tiles kept."""
    rows = []
    for e in rounds["rounds"]:
        p = e["pseudo"] or {}
        rows.append(
            {
                "round": e["round"],
                "OOF (labelled tiles)": e["oof_score"],
                "variant": e["submission_variant"],
                "teacher": p.get("teacher", "ensemble") if p else "-",
                "pseudo-labelled tiles": (
                    f"{'/'.join(map(str, p.get('kept_per_fold', [p['kept']])))} of {p['offered']}"
                    if p
                    else "-"
                ),
                "kept fraction": f"{p['kept_fraction']:.1%}" if p else "-",
                "with salt": p.get("kept_with_salt", "-") if p else "-",
                "report": f"{e['folder']}/report/index.html" if e["round"] else "this page",
            }
        )
    return (
        "<h2>Pseudo-label rounds</h2>"
        f"<p>submission.csv is round {rounds['submission_round']}'s ({html.escape(rounds['why'])}). "
        "Curves and OOF above are round 0's; each later round has its own report.</p>"
        + table(rows, {"OOF (labelled tiles)": "{:.4f}"})
    )


def pick_trial(progress: pd.DataFrame, cv: dict | None) -> str:
    if cv and cv.get("best_trial") in set(progress["trial_id"]):
        return cv["best_trial"]
    metric = "best_val_map" if "best_val_map" in progress else "val_map"
    return str(progress.loc[progress[metric].idxmax(), "trial_id"])


def summary_html(run: Path, cv: dict | None, config: dict, is_search: bool) -> str:
    t = config["train"]
    lines = [
        f"<p>{'Search' if is_search else 'k-fold training'} in <code>{html.escape(str(run.resolve()))}</code>: "
        f"{config['data']['folds']} folds x {t['epochs']} epochs, model {config['model']['encoder']} "
        f"width {config['model']['width']}, schedule {config['schedule']['name']} lr {config['schedule']['lr']:.3g}, "
        f"loss switch {t['loss_switch_epoch']}.</p>"
    ]
    if cv:
        rows = [
            {"fold": r, "best val_map": s, "best epoch": e}
            for r, (s, e) in enumerate(zip(cv["fold_scores"], cv["best_epochs"], strict=True))
        ]
        lines.append(table(rows, {"best val_map": "{:.4f}"}))
        lines.append(
            f"<p>Mean fold score <b>{cv['mean_fold_score']:.4f}</b>; OOF competition metric "
            f"<b>{cv['oof_score']:.4f}</b> with thresholds {html.escape(json.dumps(cv['thresholds']))} "
            f"(default thresholds {cv['oof_score_default_thresholds']:.4f}).</p>"
        )
    return "\n".join(lines)


def oof_html(run: Path, report: Path, cv: dict) -> str:
    oof = np.load(run / run_folder.OOF)
    tiles = np.load(run / run_folder.OOF_TRUTH)
    probs = oof["probs"].astype(np.float32)
    empty = oof.get("empty")
    if list(tiles["ids"]) != list(oof["ids"]):
        raise ValueError(
            f"{run / run_folder.OOF_TRUTH} and {run / run_folder.OOF} hold different tiles; rerun the finalize step"
        )
    h, w = probs.shape[1:]
    truth = np.unpackbits(tiles["masks"], axis=-1, count=w).astype(bool).reshape(probs.shape)
    chosen = Thresholds(**cv["thresholds"])
    pred = binarize(probs, empty, chosen)
    grid, scores = error_analysis.threshold_curve(probs, empty, truth, chosen)
    charts.threshold_plot(report / "threshold.png", grid, scores, chosen.pixel, cv["oof_score"])
    shown = overlay_grid(report / "worst_oof.png", tiles["images"], truth, pred, oof["ids"])
    conf = error_analysis.empty_confusion(truth, pred)
    confusion = table(
        [
            {
                "truth \\ prediction": "empty",
                "empty": conf["empty_pred_empty"],
                "salt": conf["empty_pred_salt"],
            },
            {"truth \\ prediction": "salt", "empty": conf["salt_pred_empty"], "salt": conf["salt_pred_salt"]},
        ]
    )
    return (
        "<h2>Out-of-fold predictions</h2>"
        f"<h3>Threshold vs metric</h3>{img('threshold.png', 'threshold curve')}"
        f"<h3>Worst {len(shown)} OOF tiles, worst first</h3>"
        + (
            "<p>green: salt found (TP); red: false salt (FP); blue: missed salt (FN); the tile's competition "
            f"score beside its id.</p>{img('worst_oof.png', 'worst tiles')}"
            if shown
            else "<p>Every OOF tile scores 1.</p>"
        )
        + "<div class=row><div><h3>By salt coverage class</h3>"
        f"{table(error_analysis.by_coverage(truth, pred), {'score': '{:.4f}'})}</div>"
        f"<div><h3>Emptiness called wrong, by coverage class</h3>{emptiness_html(truth, pred)}</div>"
        "<div><h3>By per-image score</h3>"
        f"{table(error_analysis.by_score_bucket(truth, pred), {'share': '{:.1%}'})}</div>"
        f"<div><h3>Empty-image confusion</h3>{confusion}</div></div>"
    )


def emptiness_html(truth: np.ndarray, pred: np.ndarray) -> str:
    """Salt tiles predicted empty (false-empty rate) per coverage class, and empty tiles given salt."""
    e = error_analysis.emptiness(truth, pred)
    rows = [
        {
            "class": r["class"],
            "tiles": r["tiles"],
            "called wrong": r["wrong"],
            "rate": r["rate"],
            "wrong means": "given salt" if r["class"] == "empty" else "predicted empty",
        }
        for r in e["by_coverage"]
    ]
    return (
        f"<p>{e['salt_pred_empty']} of {e['salt_tiles']} salt tiles predicted empty "
        f"(<b>{e['false_empty_rate']:.1%}</b>); {e['empty_pred_salt']} of {e['empty_tiles']} empty tiles "
        f"given salt (<b>{e['false_salt_rate']:.1%}</b>). Each scores 0.</p>"
        + table(rows, {"rate": "{:.1%}"})
    )


def search_html(run: Path, report: Path, progress: pd.DataFrame, base: dict) -> str:
    parts = ["<h2>Search</h2>"]
    if (run / run_folder.TRIALS).exists():
        trials = pd.read_csv(run / run_folder.TRIALS)
        parts.append(trials.to_html(index=False, float_format=lambda v: f"{v:.4g}", border=0))
    study = load_run_study(run)
    if study.trials:
        charts.optuna_history(report / "optuna_history.png", study)
        parts.append(
            "<h3>Optimisation history (Optuna)</h3><p>Complete trials only: a pruned trial has no final value "
            f"(see the pruning picture).</p>{img('optuna_history.png', 'optimisation history')}"
            "<h3>Parameter importances (Optuna, PED-ANOVA)</h3>"
        )
        if charts.optuna_importances(report / "importances.png", study):
            parts.append(img("importances.png", "parameter importances"))
        else:
            parts.append("<p>Needs at least two complete trials.</p>")
    pruned = {t.user_attrs.get("tune_trial_id") for t in study.trials if t.state.name == "PRUNED"}
    if not progress.empty:
        curves = {
            trial: (list(rows["epoch"]), list(rows["best_val_map"]))
            for trial, rows in progress.groupby("trial_id", sort=False)
        }
        charts.pruning_plot(report / "pruning.png", curves, pruned, asha_rungs(base))
        stops = [{"trial": t, "stopped after epoch": curves[t][0][-1]} for t in sorted(pruned) if t in curves]
        parts.append(f"<h3>Pruning (ASHA)</h3>{img('pruning.png', 'pruning')}{table(stops)}")
    return "\n".join(parts)


def asha_rungs(config: dict) -> list[int]:
    """The epochs at which ASHA compares trials (orchestrator.search_setup.make_scheduler's settings)."""
    from salt_model.config import Config
    from salt_model.training import cadence

    parsed = Config.from_dict(config, source="run config")
    return cadence.asha_rungs(parsed.search, parsed.train.epochs)


PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: sans-serif; margin: 24px; max-width: 1500px; color: #222; }}
img {{ max-width: 100%; border: 1px solid #ddd; margin: 6px 0; }}
table {{ border-collapse: collapse; margin: 8px 0; font-size: 13px; }}
td, th {{ border: 1px solid #ccc; padding: 3px 8px; text-align: right; }}
th {{ background: #f3f3f3; }}
.row {{ display: flex; gap: 32px; flex-wrap: wrap; align-items: flex-start; }}
h2 {{ border-bottom: 1px solid #ccc; margin-top: 32px; }}
</style></head>
<body>
{body}
</body></html>
"""
