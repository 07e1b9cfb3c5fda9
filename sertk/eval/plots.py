"""Figures for the report: confusion matrices and learning curves.

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
    return _save(fig, out_png)


def _save(fig: Figure, out_png) -> Path:
    """Lay the figure out and write it as PNG atomically (a reader never sees half a file)."""
    fig.tight_layout()
    out_png = Path(out_png)
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, format="png")
    return out_png


def plot_learning_curve(history: list[dict], out_png, select_metric: str, best_epoch: int | None = None,
                        title: str = "") -> Path:
    """Train loss and the dev metric per epoch (the trainer's history), best epoch marked; PNG, atomically.

    One look shows what a table cannot: a dev metric flat at chance, a
    training loss that never fell, or a best epoch at the very end (more
    epochs would have helped).
    """
    if not history:
        raise ValueError("learning curve: empty history")
    epochs = [h["epoch"] for h in history]
    loss = [h.get("train_loss", np.nan) for h in history]
    dev = [(h.get("dev") or {}).get(select_metric, np.nan) for h in history]
    dev = [np.nan if v is None else v for v in dev]
    fig = Figure(figsize=(6.4, 3.2), dpi=100)
    FigureCanvasAgg(fig)
    ax_loss, ax_dev = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    ax_loss.plot(epochs, loss, marker="o", color="tab:red")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("train loss")
    ax_dev.plot(epochs, dev, marker="o", color="tab:blue")
    ax_dev.set_xlabel("epoch")
    ax_dev.set_ylabel(f"dev {select_metric}")
    if all(np.isnan(v) for v in dev):
        ax_dev.text(0.5, 0.5, "no dev set", transform=ax_dev.transAxes, ha="center", va="center", color="grey")
    if best_epoch is not None:
        for ax in (ax_loss, ax_dev):
            ax.axvline(best_epoch, color="grey", linestyle="--", linewidth=1)
        ax_dev.annotate("best", (best_epoch, ax_dev.get_ylim()[1]), ha="center", va="top", fontsize=8, color="grey")
    for ax in (ax_loss, ax_dev):
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=9)
    return _save(fig, out_png)
