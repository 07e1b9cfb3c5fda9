"""Confusion-matrix figures for the report.

Drawn with matplotlib's object API on an Agg canvas (no pyplot, no global
backend switch), so it works headless and never disturbs a caller's figures.
Cells are coloured by row-normalised recall and labelled with the count, so
that class imbalance cannot hide a weak class.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from sertk.common.fileio import atomic_path


def plot_confusion(confusion, labels: list[str], out_png, title: str = "") -> Path:
    """Save a row-normalised confusion matrix (rows true, columns predicted) as PNG, atomically."""
    cm = np.asarray(confusion, dtype=np.float64)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1] or cm.shape[0] != len(labels):
        raise ValueError(f"confusion of shape {cm.shape} does not match {len(labels)} labels")
    rows = cm.sum(1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    c = len(labels)
    size = 1.6 + 0.75 * c
    fig = Figure(figsize=(size + 1.2, size), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(norm, vmin=0.0, vmax=1.0, cmap="Blues")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="row-normalised (recall)")
    ax.set_xticks(range(c), labels=labels, rotation=45, ha="right")
    ax.set_yticks(range(c), labels=labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(c):
        for j in range(c):
            ax.text(j, i, f"{int(cm[i, j])}\n{norm[i, j]:.0%}", ha="center", va="center", fontsize=8,
                    color="white" if norm[i, j] > 0.6 else "black")
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    out_png = Path(out_png)
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, format="png")
    return out_png
