"""QC pictures of a predicted volume: amplitudes in grey, the salt probability over them, the 0.5
contour, and the HTML page that shows them (matplotlib's Agg backend, no display needed)."""

from __future__ import annotations

import html
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from salt_model.io import atomic_write, atomic_write_text  # noqa: E402


def qc_png(
    path: Path, amplitudes: np.ndarray, probs: np.ndarray, title: str, xlabel: str, ylabel: str
) -> Path:
    """amplitudes and probs (rows, cols) as displayed (depth down the rows for sections); NaN probs
    (dead or missing traces) are left uncoloured."""
    amplitudes = np.asarray(amplitudes, np.float32)
    probs = np.asarray(probs, np.float32)
    lim = float(np.nanpercentile(np.abs(amplitudes), 99)) or 1.0
    aspect = max(0.2, min(5.0, amplitudes.shape[1] / max(amplitudes.shape[0], 1)))
    fig, ax = plt.subplots(figsize=(8, max(3.0, 8 / aspect)), dpi=100)
    ax.imshow(amplitudes, cmap="gray", vmin=-lim, vmax=lim, aspect="auto", interpolation="nearest")
    shown = np.ma.masked_where(~(probs >= 0.05), probs)  # NaN and near-zero stay clear
    im = ax.imshow(shown, cmap="autumn_r", vmin=0, vmax=1, alpha=0.45, aspect="auto", interpolation="nearest")
    if np.nanmax(np.nan_to_num(probs, nan=0.0)) >= 0.5 and np.nanmin(np.nan_to_num(probs, nan=1.0)) < 0.5:
        ax.contour(np.nan_to_num(probs, nan=0.0), levels=[0.5], colors="cyan", linewidths=1.0)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    fig.colorbar(im, ax=ax, label="salt probability", fraction=0.04)
    fig.tight_layout()

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            fig.savefig(f, format="png")

    try:
        atomic_write(Path(path), write)
    finally:
        plt.close(fig)
    return Path(path)


def report_html(path: Path, summary: dict, pictures: list[tuple[str, str]]) -> Path:
    """One page: the facts of volume.json that matter at a glance and the QC pictures (file, caption)."""
    geometry, scaling = summary["geometry"], summary["scaling"]
    facts = {
        "input": geometry["file"],
        "geometry": f"{geometry['kind']}, grid {geometry['grid']} x {geometry['samples']} samples, "
        f"{geometry['traces']} traces, {geometry['missing_traces']} missing, {summary['dead_traces']} dead",
        "amplitude scaling": f"clip [{scaling['lo']:.4g}, {scaling['hi']:.4g}], center {scaling['center']:.4g}, "
        f"scale {scaling['scale']:.4g} -> tile mean {scaling['tile_mean']:g}, std {scaling['tile_std']:g}",
        "windows": json.dumps(summary["windows"]),
        "directions": ", ".join(summary["directions"]),
        "members": str(len(summary["members"])),
        "time": f"{summary['timings']['total_s']:.1f} s ({summary['traces_per_s']:.1f} traces/s)",
    }
    if "truth_iou" in summary:
        facts["IoU vs truth (p > 0.5)"] = f"{summary['truth_iou']:.4f}"
    rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in facts.items())
    warnings = "".join(f"<p class=warn>{html.escape(w)}</p>" for w in summary.get("warnings", []))
    figures = "".join(
        f'<figure><img src="{html.escape(src)}"><figcaption>{html.escape(cap)}</figcaption></figure>'
        for src, cap in pictures
    )
    page = (
        "<!doctype html><meta charset=utf-8><title>salt probability QC</title>"
        "<style>body{font-family:sans-serif;max-width:1000px;margin:auto}th{text-align:left;padding-right:1em}"
        "img{max-width:100%}.warn{color:#a60}</style>"
        f"<h1>Salt probability: {html.escape(Path(geometry['file']).name)}</h1><table>{rows}</table>{warnings}"
        f"<p>Grey: amplitudes; colour: salt probability (clear below 0.05); cyan: the 0.5 contour.</p>{figures}"
    )
    atomic_write_text(Path(path), page)
    return Path(path)
