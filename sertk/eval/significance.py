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

Metrics: UAR, WA, macro-F1 of label sequences, and ``ccc`` (= ``ccc_mean``:
Lin's CCC averaged over the defined dimensions) of continuous [n] or [n, D]
predictions. Both kinds are sums over utterances (a confusion matrix; the
moments n, x, y, x^2, y^2, xy), so a resample or a swap only re-weights each
unit's sums: no loop over resamples in Python.

Repeated training seeds: ``pred_a``/``pred_b`` may be lists over seeds (A's
seed s paired with B's seed s). The tested difference is the mean over pairs
of metric(A_s) - metric(B_s), every pair resampled or swapped with the SAME
speakers, so the test is paired across seeds too; the result adds ``pairs``
and ``diff_sd`` (sd over pairs). One pair gives exactly the single-run test.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from sertk.eval.metrics import (CLASSIFICATION_BOOT_METRICS, _as_float_array, _group_counts, _nanmean_rows,
                                ccc_from_sums, group_confusions, scores_from_confusion)

RESAMPLE_UNITS = ("speaker", "utterance")
MIN_SPEAKERS = 5  # fewest speakers a speaker-level test runs on: 4 speakers have 35 distinct resamples
CCC_METRICS = ("ccc", "ccc_mean")  # both: mean CCC over the dimensions of [n] or [n, D] predictions
PAIRED_METRICS = CLASSIFICATION_BOOT_METRICS + CCC_METRICS


def _runs(pred, gold_shape: tuple, what: str) -> list:
    """One system's predictions as a list over seeds: a single run shaped like the references, or a list of runs."""
    try:
        shape = np.shape(pred)
    except ValueError as e:  # ragged
        raise ValueError(f"paired test: {what}: runs of different lengths") from e
    if shape == gold_shape:
        return [pred]
    if len(shape) == len(gold_shape) + 1 and shape[1:] == gold_shape and shape[0] > 0:
        return list(pred)
    raise ValueError(f"paired test: {gold_shape[0]} references but {what} of shape {shape}")


def _check(gold, pred_a, pred_b, metric: str, groups) -> tuple[list, list]:
    """(A's runs, B's runs), one pair per seed, after checking lengths and the metric."""
    if metric not in PAIRED_METRICS:
        raise ValueError(f"paired test: metric must be one of {', '.join(PAIRED_METRICS)}, got {metric!r}")
    if len(gold) == 0:
        raise ValueError("paired test: no utterances")
    if groups is not None and len(groups) != len(gold):
        raise ValueError(f"paired test: {len(gold)} references but {len(groups)} speaker ids")
    shape = np.shape(gold)
    ra, rb = _runs(pred_a, shape, "A's predictions"), _runs(pred_b, shape, "B's predictions")
    if len(ra) != len(rb):
        raise ValueError(f"paired test: {len(ra)} runs (seeds) of A but {len(rb)} of B; pair them first")
    return ra, rb


def _unit_ids(n: int, groups: Sequence | None) -> np.ndarray:
    """Resampling unit of each utterance: its speaker (sorted ids, as the cluster bootstrap numbers them) or itself."""
    if groups is None:
        return np.arange(n)
    return np.unique(np.asarray([str(g) for g in groups]), return_inverse=True)[1].reshape(-1)


def _unit_sums(units: np.ndarray, values: np.ndarray) -> np.ndarray:
    """[U, S] sums of per-utterance statistics ``values`` [N, S] within each unit."""
    n_units, s = int(units.max()) + 1, values.shape[1]
    idx = units[:, None] * s + np.arange(s)
    return np.bincount(idx.ravel(), weights=values.ravel(), minlength=n_units * s).reshape(n_units, s)


def _confusion_stats(gold, runs: list, units: np.ndarray, metric: str) -> tuple[np.ndarray, Callable]:
    """Per run and unit the flattened confusion matrix [R, U, C*C], and the metric of summed matrices."""
    classes = sorted({str(x) for x in gold} | {str(x) for r in runs for x in r})
    k, n_units = len(classes), int(units.max()) + 1
    stats = np.stack([group_confusions(gold, r, units, n_units, classes) for r in runs]).astype(np.float64)

    def score(s: np.ndarray) -> np.ndarray:
        return np.asarray(scores_from_confusion(s.reshape(*s.shape[:-1], k, k))[metric])
    return stats, score


def _ccc_stats(gold, runs: list, units: np.ndarray) -> tuple[np.ndarray, Callable]:
    """Per run and unit the sums n, x, y, x^2, y^2, xy of each dimension [R, U, 6*D] (x: prediction, y: gold,
    both centred on the gold mean: CCC is unchanged by a common shift, and the sums lose less precision),
    and the mean CCC over the defined dimensions of summed moments."""
    y = _as_float_array(gold, "references")
    y = y.reshape(len(y), -1)
    centre = y.mean(0)
    y = y - centre
    d = y.shape[1]

    def per_utt(pred) -> np.ndarray:
        x = _as_float_array(pred, "predictions").reshape(len(y), -1) - centre
        return np.concatenate([np.ones_like(x), x, y, x * x, y * y, x * y], 1)
    stats = np.stack([_unit_sums(units, per_utt(r)) for r in runs])

    def score(s: np.ndarray) -> np.ndarray:
        c = ccc_from_sums(*np.moveaxis(s.reshape(*s.shape[:-1], 6, d), -2, 0), shift=centre)
        return _nanmean_rows(np.moveaxis(c, -1, 0))
    return stats, score


def _stats(gold, runs_a: list, runs_b: list, metric: str, units: np.ndarray):
    """(A's [R, U, S], B's [R, U, S], score): additive per-unit statistics and the metric of their sums."""
    if metric in CCC_METRICS:
        stats, score = _ccc_stats(gold, runs_a + runs_b, units)
    else:
        stats, score = _confusion_stats(gold, runs_a + runs_b, units, metric)
    return stats[:len(runs_a)], stats[len(runs_a):], score


def _observed(sa: np.ndarray, sb: np.ndarray, score: Callable) -> tuple[float, dict]:
    """The mean over pairs of metric(A_s) - metric(B_s), and ``pairs``/``diff_sd`` when there are several."""
    per_pair = score(sa.sum(1)) - score(sb.sum(1))
    if np.any(np.isnan(per_pair)):
        raise ValueError("paired test: the metric is undefined on the whole test set (constant CCC dimensions)")
    if len(per_pair) == 1:
        return float(per_pair[0]), {}
    return float(per_pair.mean()), {"pairs": len(per_pair), "diff_sd": float(per_pair.std(ddof=1)),
                                    "diff_per_pair": [float(x) for x in per_pair]}


def _prepare(gold, pred_a, pred_b, metric: str, groups):
    runs_a, runs_b = _check(gold, pred_a, pred_b, metric, groups)
    units = _unit_ids(len(gold), groups)
    sa, sb, score = _stats(gold, runs_a, runs_b, metric, units)
    return units, sa, sb, score


def paired_bootstrap(gold: Sequence, pred_a: Sequence, pred_b: Sequence, metric: str = "uar",
                     groups: Sequence | None = None, n_boot: int = 10000, seed: int = 0,
                     alpha: float = 0.05) -> dict:
    """Difference metric(A) - metric(B), its percentile interval and two-sided p over paired resamples.

    ``groups`` (speaker per utterance) resamples speakers; None resamples utterances. The resamples are
    those of :func:`sertk.eval.metrics.bootstrap_stats` with the same seed.
    """
    units, sa, sb, score = _prepare(gold, pred_a, pred_b, metric, groups)
    n_units = sa.shape[1]
    if groups is not None and n_units < 2:
        raise ValueError("paired bootstrap: one speaker only; nothing to resample (use utterances)")
    diff, seeds = _observed(sa, sb, score)
    chunks = []
    for counts in _group_counts(units, n_units, n_boot, seed):
        c = counts.astype(np.float64)
        chunks.append((score(np.einsum("bu,rus->rbs", c, sa)) - score(np.einsum("bu,rus->rbs", c, sb))).mean(0))
    d = np.concatenate(chunks)
    d = d[~np.isnan(d)]
    lo, hi = np.percentile(d, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    p = (1 + int(np.sum(np.abs(d - d.mean()) >= abs(diff) - 1e-12))) / (len(d) + 1)
    return {"diff": diff, "ci": [float(lo), float(hi)], "p": float(min(1.0, p)),
            "test": "paired bootstrap", "resample": "utterance" if groups is None else "speaker",
            "n_boot": int(n_boot), "seed": int(seed), **seeds}


def approximate_randomization(gold: Sequence, pred_a: Sequence, pred_b: Sequence, metric: str = "uar",
                              groups: Sequence | None = None, n_perm: int = 10000, seed: int = 0) -> dict:
    """Two-sided p of metric(A) - metric(B) when A's and B's outputs are swapped per speaker (or utterance),
    the same units swapped in every pair of seeds."""
    _, sa, sb, score = _prepare(gold, pred_a, pred_b, metric, groups)
    diff, seeds = _observed(sa, sb, score)
    rng = np.random.default_rng(seed)
    delta = sb - sa  # what swapping one unit moves from A's sums to B's
    base_a, base_b = sa.sum(1)[:, None], sb.sum(1)[:, None]
    hits, done = 0, 0
    while done < n_perm:
        b = min(4096, n_perm - done)
        moved = np.einsum("bu,rus->rbs", rng.integers(0, 2, size=(b, sa.shape[1])).astype(np.float64), delta)
        d = (score(base_a + moved) - score(base_b - moved)).mean(0)
        hits += int(np.sum(np.abs(d) >= abs(diff) - 1e-12))
        done += b
    return {"diff": diff, "p": (hits + 1) / (n_perm + 1), "test": "approximate randomization",
            "resample": "utterance" if groups is None else "speaker", "n_perm": int(n_perm), "seed": int(seed),
            **seeds}


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
                min_speakers: int = MIN_SPEAKERS, units: Sequence | None = None) -> dict:
    """The paired test sertk reports: over speakers when the test set has ``min_speakers`` or more
    (``test``: bootstrap, with the difference's interval, or permutation); otherwise approximate
    randomisation over utterances, whose p speaks for these utterances only (not for new speakers),
    and the result says so (``resample: utterance``, ``note``). ``units``: what the fallback swaps
    together (default each item; ICL's items repeat a query once per enrolment draw, so it passes
    the query). ``metric`` picks the classification or the CCC path."""
    n_spk = len(set(speakers)) if speakers is not None else 0
    if speakers is not None and n_spk >= min_speakers:
        if test == "bootstrap":
            res = paired_bootstrap(gold, pred_a, pred_b, metric, groups=speakers, n_boot=n, seed=seed)
        else:
            res = approximate_randomization(gold, pred_a, pred_b, metric, groups=speakers, n_perm=n, seed=seed)
        return {**res, "speakers": n_spk}
    res = approximate_randomization(gold, pred_a, pred_b, metric, groups=units, n_perm=n, seed=seed)
    why = f"{n_spk} speakers, fewer than {min_speakers}" if speakers is not None else "no speakers given"
    return {**res, "resample": "utterance", "speakers": n_spk,
            "note": f"{why}: utterances permuted, p holds for these utterances only"}
