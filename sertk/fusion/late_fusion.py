"""Late fusion of per-model class scores: temperatures, weights, and a rule that reads no labels.

Every model gives ``[N, C]`` logits (a zero-shot ALM's ``scale x cosine``, a
probe's log-posteriors). Fusion combines their log-softmax posteriors:

* ``log`` domain: ``sum_m w_m log p_m`` (a weighted product of experts);
* ``prob`` domain: ``log sum_m w_m p_m`` (a weighted mixture).

Two ways to set it up. **Dev**: each model's temperature minimises its NLL on
the (source-domain) dev set, then the weights are the point of a simplex grid
with the best dev UAR. **Label-free**: no labels at all, so it can be used on
a target domain with none: temperatures stay 1 (each model's own scale) and
the weights are ``equal`` or, per utterance, ``entropy``-based (a model counts
more where its posterior is sharper: weight ``log C - H(p_m)``).
"""
from __future__ import annotations

import itertools

import numpy as np

from sertk.eval.metrics import scores_from_confusion

DOMAINS = ("log", "prob")
LABEL_FREE = ("equal", "entropy")


def log_softmax(z: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = np.asarray(z, dtype=np.float64) / float(temperature)
    z = z - z.max(1, keepdims=True)
    return z - np.log(np.exp(z).sum(1, keepdims=True))


def calibrate_temperature(logits: np.ndarray, y: np.ndarray, grid: np.ndarray | None = None) -> float:
    """The temperature (on a log grid, 0.01-100) that minimises the NLL of labels ``y``."""
    grid = np.exp(np.linspace(np.log(0.01), np.log(100.0), 121)) if grid is None else grid
    y = np.asarray(y)
    nll = [-log_softmax(logits, t)[np.arange(len(y)), y].mean() for t in grid]
    return float(grid[int(np.argmin(nll))])


def fuse(log_posts: list[np.ndarray], weights, domain: str = "log") -> np.ndarray:
    """[N, C] fused log-scores of M models' log-posteriors; ``weights``: [M] or per utterance [N, M]."""
    if domain not in DOMAINS:
        raise ValueError(f"fusion domain must be one of {DOMAINS}, got {domain!r}")
    lp = np.stack([np.asarray(p, dtype=np.float64) for p in log_posts])  # [M, N, C]
    w = np.asarray(weights, dtype=np.float64)
    w = w[:, None, None] if w.ndim == 1 else w.T[:, :, None]  # -> [M, N or 1, 1]
    if domain == "log":
        return (w * lp).sum(0)
    return np.log(np.clip((w * np.exp(lp)).sum(0), 1e-300, None))


def simplex_grid(m: int, step: float) -> np.ndarray:
    """Every weight vector of ``m`` non-negative multiples of ``step`` summing to 1: [K, m]."""
    n = int(round(1.0 / step))
    rows = [c for c in itertools.product(range(n + 1), repeat=m - 1) if sum(c) <= n]
    return np.array([[*c, n - sum(c)] for c in rows], dtype=np.float64) / n


def uar_of(scores: np.ndarray, y: np.ndarray, num_classes: int) -> np.ndarray:
    """UAR of argmax decisions; ``scores`` [..., N, C] (a batch of score sets) against ``y`` [N]."""
    pred = scores.argmax(-1)
    cm = np.zeros(pred.shape[:-1] + (num_classes, num_classes))
    idx = np.asarray(y) * num_classes + pred  # flat (true, predicted) cell per utterance
    flat = cm.reshape(-1, num_classes * num_classes)
    for k, row in enumerate(idx.reshape(-1, idx.shape[-1])):
        flat[k] = np.bincount(row, minlength=num_classes * num_classes)
    return np.asarray(scores_from_confusion(flat.reshape(cm.shape))["uar"])


def dev_weights(log_posts: list[np.ndarray], y: np.ndarray, domain: str = "log", step: float = 0.1) -> np.ndarray:
    """The simplex-grid weights with the best dev UAR (ties: the most even weights, then grid order)."""
    grid = simplex_grid(len(log_posts), step)
    lp = np.stack(log_posts)
    if domain == "log":
        fused = np.einsum("km,mnc->knc", grid, lp)
    else:
        fused = np.log(np.clip(np.einsum("km,mnc->knc", grid, np.exp(lp)), 1e-300, None))
    uar = uar_of(fused, y, lp.shape[-1])
    spread = grid.max(1) - grid.min(1)
    best = np.lexsort((spread, -np.round(uar, 10)))[0]
    return grid[best]


def label_free_weights(log_posts: list[np.ndarray], rule: str = "entropy") -> np.ndarray:
    """Weights from the posteriors alone: ``equal`` [M], or ``entropy`` per utterance [N, M]."""
    m = len(log_posts)
    if rule == "equal":
        return np.full(m, 1.0 / m)
    if rule != "entropy":
        raise ValueError(f"label-free rule must be one of {LABEL_FREE}, got {rule!r}")
    lp = np.stack(log_posts)  # [M, N, C]
    h = -(np.exp(lp) * lp).sum(-1)  # [M, N]
    conf = np.clip(np.log(lp.shape[-1]) - h, 0.0, None) + 1e-6
    return (conf / conf.sum(0, keepdims=True)).T  # [N, M]


def fuse_label_free(logits: list[np.ndarray], rule: str = "entropy", domain: str = "log") -> np.ndarray:
    """Fused log-scores of M models' logits with no label anywhere (temperatures 1, ``rule`` weights)."""
    lp = [log_softmax(z) for z in logits]
    return fuse(lp, label_free_weights(lp, rule), domain)
