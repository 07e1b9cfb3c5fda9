"""Is system A better than system B on the same test utterances? Paired tests and Holm's correction.

Two systems scored on one test set are correlated (the same hard utterances
defeat both), so their own intervals overlapping says little; a paired test
looks at the difference. Both tests here resample or permute *speakers* by
default: utterances of one speaker are not independent, and treating them
as such makes p-values too small.

* :func:`paired_bootstrap` scores A and B on the same resamples (the cluster
  bootstrap of :func:`sertk.eval.metrics.bootstrap_stats`, same seed), giving
  the difference's percentile interval and a two-sided p-value from the
  resampled differences shifted to zero mean (Efron & Tibshirani 1993, 16.4).
* :func:`approximate_randomization` swaps A's and B's outputs for a random
  half of the speakers (or utterances) and counts how often the absolute
  difference is at least the observed one (Noreen 1989; Yeh 2000), with the
  usual +1 correction so p is never 0.
* :func:`holm` adjusts the p-values of one table's comparisons (Holm 1979).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from sertk.eval.metrics import CLASSIFICATION_BOOT_METRICS, bootstrap_stats, scores_from_confusion

RESAMPLE_UNITS = ("speaker", "utterance")
MIN_SPEAKERS = 5  # fewest speakers a speaker-level test runs on: 4 speakers have 35 distinct resamples


def _check(gold: Sequence, pred_a: Sequence, pred_b: Sequence, metric: str, groups: Sequence | None) -> None:
    if not (len(gold) == len(pred_a) == len(pred_b)):
        raise ValueError(f"paired test: {len(gold)} references, {len(pred_a)} and {len(pred_b)} predictions")
    if len(gold) == 0:
        raise ValueError("paired test: no utterances")
    if groups is not None and len(groups) != len(gold):
        raise ValueError(f"paired test: {len(gold)} references but {len(groups)} speaker ids")
    if metric not in CLASSIFICATION_BOOT_METRICS:
        raise ValueError(f"paired test: metric must be one of {', '.join(CLASSIFICATION_BOOT_METRICS)}, got {metric!r}")


def _unit_confusions(gold, pred, groups, classes) -> np.ndarray:
    """[U, C, C] confusion matrix of each resampling unit (speaker, or utterance when ``groups`` is None)."""
    index = {c: i for i, c in enumerate(classes)}
    k = len(classes)
    units = np.arange(len(gold)) if groups is None else np.unique(np.asarray([str(g) for g in groups]),
                                                                   return_inverse=True)[1].reshape(-1)
    n_units = int(units.max()) + 1
    cell = np.array([index[str(g)] * k + index[str(p)] for g, p in zip(gold, pred)])
    return np.bincount(units * k * k + cell, minlength=n_units * k * k).reshape(n_units, k, k).astype(np.float64)


def _point(gold, pred, metric: str, classes) -> float:
    """The metric on the whole set: its confusion is that of one unit holding every utterance."""
    return float(scores_from_confusion(_unit_confusions(gold, pred, [0] * len(gold), classes)[0])[metric])


def paired_bootstrap(gold: Sequence, pred_a: Sequence, pred_b: Sequence, metric: str = "uar",
                     groups: Sequence | None = None, n_boot: int = 10000, seed: int = 0,
                     alpha: float = 0.05) -> dict:
    """Difference metric(A) - metric(B), its percentile interval and two-sided p over paired resamples.

    ``groups`` (speaker per utterance) resamples speakers; None resamples utterances.
    """
    _check(gold, pred_a, pred_b, metric, groups)
    classes = sorted({str(x) for x in gold} | {str(x) for x in pred_a} | {str(x) for x in pred_b})
    diff = _point(gold, pred_a, metric, classes) - _point(gold, pred_b, metric, classes)
    sa = bootstrap_stats(gold, pred_a, metric, n_boot=n_boot, seed=seed, groups=groups)
    sb = bootstrap_stats(gold, pred_b, metric, n_boot=n_boot, seed=seed, groups=groups)
    if sa is None:
        raise ValueError("paired bootstrap: one speaker only; nothing to resample (use utterances)")
    d = sa - sb
    d = d[~np.isnan(d)]
    lo, hi = np.percentile(d, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    p = (1 + int(np.sum(np.abs(d - d.mean()) >= abs(diff) - 1e-12))) / (len(d) + 1)
    return {"diff": diff, "ci": [float(lo), float(hi)], "p": float(min(1.0, p)),
            "test": "paired bootstrap", "resample": "utterance" if groups is None else "speaker",
            "n_boot": int(n_boot), "seed": int(seed)}


def approximate_randomization(gold: Sequence, pred_a: Sequence, pred_b: Sequence, metric: str = "uar",
                              groups: Sequence | None = None, n_perm: int = 10000, seed: int = 0) -> dict:
    """Two-sided p of metric(A) - metric(B) when A's and B's outputs are swapped per speaker (or utterance)."""
    _check(gold, pred_a, pred_b, metric, groups)
    classes = sorted({str(x) for x in gold} | {str(x) for x in pred_a} | {str(x) for x in pred_b})
    ca, cb = _unit_confusions(gold, pred_a, groups, classes), _unit_confusions(gold, pred_b, groups, classes)
    diff = float(scores_from_confusion(ca.sum(0))[metric] - scores_from_confusion(cb.sum(0))[metric])
    rng = np.random.default_rng(seed)
    delta = (cb - ca).reshape(len(ca), -1)  # what swapping one unit moves from A's matrix to B's
    base_a, base_b = ca.sum(0).reshape(-1), cb.sum(0).reshape(-1)
    hits, done, k = 0, 0, len(classes)
    while done < n_perm:
        b = min(4096, n_perm - done)
        swap = rng.integers(0, 2, size=(b, len(ca))).astype(np.float64)
        moved = swap @ delta  # [b, C*C]
        sa = scores_from_confusion((base_a + moved).reshape(b, k, k))[metric]
        sb = scores_from_confusion((base_b - moved).reshape(b, k, k))[metric]
        hits += int(np.sum(np.abs(sa - sb) >= abs(diff) - 1e-12))
        done += b
    return {"diff": diff, "p": (hits + 1) / (n_perm + 1), "test": "approximate randomization",
            "resample": "utterance" if groups is None else "speaker", "n_perm": int(n_perm), "seed": int(seed)}


def holm(pvalues: Sequence[float | None]) -> list[float | None]:
    """Holm's step-down adjusted p-values, in the input order (None stays None and is not counted)."""
    idx = [i for i, p in enumerate(pvalues) if p is not None]
    m = len(idx)
    out: list[float | None] = [None] * len(pvalues)
    running = 0.0
    for rank, i in enumerate(sorted(idx, key=lambda i: (pvalues[i], i))):
        running = max(running, min(1.0, (m - rank) * float(pvalues[i])))
        out[i] = running
    return out


def paired_test(gold: Sequence, pred_a: Sequence, pred_b: Sequence, metric: str = "uar",
                speakers: Sequence | None = None, test: str = "bootstrap", n: int = 10000, seed: int = 0,
                min_speakers: int = MIN_SPEAKERS) -> dict:
    """The paired test sertk reports: over speakers when the test set has ``min_speakers`` or more
    (``test``: bootstrap, with the difference's interval, or permutation); otherwise approximate
    randomisation over utterances, whose p speaks for these utterances only (not for new speakers),
    and the result says so (``resample: utterance``, ``note``)."""
    n_spk = len(set(speakers)) if speakers is not None else 0
    if speakers is not None and n_spk >= min_speakers:
        if test == "bootstrap":
            res = paired_bootstrap(gold, pred_a, pred_b, metric, groups=speakers, n_boot=n, seed=seed)
        else:
            res = approximate_randomization(gold, pred_a, pred_b, metric, groups=speakers, n_perm=n, seed=seed)
        return {**res, "speakers": n_spk}
    res = approximate_randomization(gold, pred_a, pred_b, metric, groups=None, n_perm=n, seed=seed)
    why = f"{n_spk} speakers, fewer than {min_speakers}" if speakers is not None else "no speakers given"
    return {**res, "speakers": n_spk, "note": f"{why}: utterances permuted, p holds for these utterances only"}
