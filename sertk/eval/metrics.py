"""SER metrics: UAR, WA, macro-F1, confusion, CCC, bootstrap CIs, fold aggregation.

Point estimates come from scikit-learn so that they mean what the literature
means by them; the bootstrap recomputes UAR/WA/macro-F1 and CCC from batched
confusion matrices and moments in numpy, because a thousand sklearn calls per
test set would dominate evaluation time. With ``groups`` (speakers) it resamples
whole groups, since utterances of one speaker are not independent. ``docs/metrics.md`` states every
definition (which classes are averaged, which variance, which std).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, mean_absolute_error, recall_score

# Bootstrap resamples are drawn in blocks of about this many indices, which
# bounds memory (n_boot x n int64) without changing the result for a seed.
_BOOT_BLOCK = 2_000_000

# CCC is undefined when its denominator var(x) + var(y) + (mean(x) - mean(y))^2 vanishes (both
# inputs the same constant); below this fraction of the squared means it is rounding noise.
_CCC_EPS = 1e-12

CLASSIFICATION_BOOT_METRICS = ("uar", "wa", "macro_f1")
REGRESSION_BOOT_METRICS = ("ccc", "ccc_mean")


# ---------------------------------------------------------------- classification

def _encode(values: Sequence, index: dict[str, int], what: str) -> np.ndarray:
    """Class indices of ``values``; an unknown label names its position."""
    out = np.empty(len(values), dtype=np.int64)
    for i, v in enumerate(values):
        try:
            out[i] = index[v]
        except (KeyError, TypeError):
            raise ValueError(f"{what} {i}: label {v!r} is not one of {list(index)}") from None
    return out


def _check_labels(labels: Sequence[str]) -> list[str]:
    labels = [str(x) for x in labels]
    if not labels:
        raise ValueError("labels: empty label list")
    if len(set(labels)) != len(labels):
        dup = sorted({x for x in labels if labels.count(x) > 1})
        raise ValueError(f"labels: duplicated label(s) {dup}")
    return labels


def scores_from_confusion(confusion) -> dict[str, np.ndarray | float]:
    """UAR, WA and macro-F1 from confusion matrices (rows true, cols predicted).

    Accepts one ``[C, C]`` matrix or a batch ``[..., C, C]``. Only classes with
    support (a non-empty row) are averaged, as in :func:`classification_metrics`.
    """
    cm = np.asarray(confusion, dtype=np.float64)
    if cm.ndim < 2 or cm.shape[-1] != cm.shape[-2]:
        raise ValueError(f"confusion must be square [.., C, C], got shape {cm.shape}")
    support = cm.sum(-1)
    predicted = cm.sum(-2)
    tp = np.diagonal(cm, axis1=-2, axis2=-1)
    n = support.sum(-1)
    if np.any(n == 0):
        raise ValueError("confusion matrix is empty (no utterances)")
    present = support > 0
    n_present = present.sum(-1)
    recall = np.where(present, tp / np.where(present, support, 1.0), 0.0)
    f1 = np.where(present, 2.0 * tp / np.where(present, support + predicted, 1.0), 0.0)
    out = {"uar": recall.sum(-1) / n_present, "wa": tp.sum(-1) / n, "macro_f1": f1.sum(-1) / n_present}
    if cm.ndim == 2:
        return {k: float(v) for k, v in out.items()}
    return out


def classification_metrics(y_true: Sequence[str], y_pred: Sequence[str], labels: Sequence[str]) -> dict:
    """Every categorical figure of one test set, plus the majority and chance baselines.

    Classes of ``labels`` that never occur in ``y_true`` stay in the confusion
    matrix (a prediction of them is an error that must show) but are left out
    of the UAR and macro-F1 averages, whose per-class terms are undefined.
    """
    labels = _check_labels(labels)
    if len(y_true) != len(y_pred):
        raise ValueError(f"{len(y_true)} references but {len(y_pred)} predictions")
    if len(y_true) == 0:
        raise ValueError("no utterances to score")
    index = {lab: i for i, lab in enumerate(labels)}
    _encode(y_true, index, "reference")
    _encode(y_pred, index, "prediction")
    y_true, y_pred = [str(x) for x in y_true], [str(x) for x in y_pred]

    cm = confusion_matrix(y_true, y_pred, labels=labels)
    support = cm.sum(1)
    n = int(support.sum())
    present = [lab for lab, s in zip(labels, support) if s > 0]
    recall = recall_score(y_true, y_pred, labels=labels, average=None, zero_division=0)
    f1 = f1_score(y_true, y_pred, labels=labels, average=None, zero_division=0)
    priors = support[support > 0] / n
    c = len(present)
    p_major = float(priors.max())
    return {
        "n": n,
        "uar": float(recall_score(y_true, y_pred, labels=present, average="macro", zero_division=0)),
        "wa": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1_score(y_true, y_pred, labels=present, average="macro", zero_division=0)),
        "per_class_recall": {lab: (float(r) if s > 0 else None) for lab, r, s in zip(labels, recall, support)},
        "per_class_f1": {lab: (float(f) if s > 0 else None) for lab, f, s in zip(labels, f1, support)},
        "support": {lab: int(s) for lab, s in zip(labels, support)},
        "confusion": cm.astype(int).tolist(),
        "n_classes_present": c,
        # always predicting the most frequent test class
        "majority_wa": p_major,
        "majority_uar": 1.0 / c,
        "majority_macro_f1": (2.0 * p_major / (1.0 + p_major)) / c,
        # guessing at random with the test-set class priors (uniform guessing has the same UAR)
        "chance_uar": 1.0 / c,
        "chance_wa": float(np.sum(priors ** 2)),
    }


# ---------------------------------------------------------------- regression

def ccc_from_moments(mx, my, vx, vy, cov, shift=0.0) -> np.ndarray:
    """Lin's CCC from population means, variances and covariance; NaN where undefined (the denominator
    vanishes: reference and prediction one constant). ``shift``: what was subtracted from both before the
    moments were taken (CCC does not see it; the threshold of "vanishes" does)."""
    den = vx + vy + (mx - my) ** 2
    defined = den > _CCC_EPS * (1.0 + (mx + shift) ** 2 + (my + shift) ** 2)
    return np.where(defined, 2.0 * cov / np.where(defined, den, 1.0), np.nan)


def ccc_from_sums(n, sx, sy, sxx, syy, sxy, shift=0.0) -> np.ndarray:
    """Lin's CCC from sums over utterances (n, x, y, x^2, y^2, xy; x prediction, y reference): what a
    resample or a swap of whole speakers re-weights (cluster bootstrap, paired tests)."""
    mx, my = sx / n, sy / n
    return ccc_from_moments(mx, my, sxx / n - mx ** 2, syy / n - my ** 2, sxy / n - mx * my, shift)


def _ccc_batched(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Lin's CCC along the last axis (population moments); NaN where undefined."""
    mx, my = x.mean(-1), y.mean(-1)
    cov = ((x - mx[..., None]) * (y - my[..., None])).mean(-1)
    return ccc_from_moments(mx, my, x.var(-1), y.var(-1), cov)


def _as_float_array(a, what: str) -> np.ndarray:
    arr = np.asarray(a, dtype=np.float64)
    if not np.all(np.isfinite(arr)):
        bad = np.argwhere(~np.isfinite(arr))[0].tolist()
        raise ValueError(f"{what}: non-finite value at index {bad}")
    return arr


def ccc(x, y) -> float | None:
    """Lin's concordance correlation coefficient over the whole set; None where it is undefined.

    2*cov(x, y) / (var(x) + var(y) + (mean(x) - mean(y))^2), population
    (1/N) moments, so a constant shift or a scale change lowers it where
    Pearson's r would not notice. A constant prediction of a varying
    reference (or the reverse) scores 0. Undefined (None, never an exception:
    one test set's constant dimension must not take the whole evaluation
    down) when the denominator vanishes -- reference and prediction are the
    same constant, e.g. a dimension the test set annotates with one value and
    a model that learned it -- or with fewer than 2 values.
    """
    x, y = _as_float_array(x, "ccc x"), _as_float_array(y, "ccc y")
    if x.ndim != 1 or y.ndim != 1 or len(x) != len(y):
        raise ValueError(f"ccc needs two 1-D arrays of equal length, got shapes {x.shape} and {y.shape}")
    if len(x) < 2:
        return None
    value = float(_ccc_batched(x, y))
    return None if math.isnan(value) else value


def _as_2d(pred, gold, names: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    pred, gold = _as_float_array(pred, "predictions"), _as_float_array(gold, "references")
    if pred.ndim == 1:
        pred = pred[:, None]
    if gold.ndim == 1:
        gold = gold[:, None]
    if pred.shape != gold.shape or pred.ndim != 2:
        raise ValueError(f"predictions {pred.shape} and references {gold.shape} must both be [N, D]")
    if pred.shape[1] != len(names):
        raise ValueError(f"{pred.shape[1]} dimensions but {len(names)} names {list(names)}")
    return pred, gold


def ccc_per_dim(pred, gold, names: Sequence[str]) -> dict[str, float | None]:
    """CCC of each column of ``pred`` [N, D] against ``gold`` [N, D], keyed by ``names``
    (None for a dimension where it is undefined, see :func:`ccc`)."""
    pred, gold = _as_2d(pred, gold, names)
    return {str(name): ccc(pred[:, j], gold[:, j]) for j, name in enumerate(names)}


def mean_defined(values) -> float | None:
    """Mean of the values that are not None; None when none is."""
    defined = [v for v in values if v is not None]
    return float(np.mean(defined)) if defined else None


def _pearson(x: np.ndarray, y: np.ndarray) -> float | None:
    if x.std() == 0 or y.std() == 0:
        return None  # undefined for a constant prediction or reference
    return float(np.corrcoef(x, y)[0, 1])


def regression_metrics(pred, gold, names: Sequence[str]) -> dict:
    """CCC per dimension and their mean, Pearson's r and MAE per dimension.

    A dimension whose CCC is undefined (see :func:`ccc`) has None (null in
    results.json) and is named in ``ccc_undefined``; ``ccc_mean`` is the mean
    over the defined dimensions only (``ccc_undefined`` says how many it
    lacks), and None when no dimension is defined.
    """
    pred, gold = _as_2d(pred, gold, names)
    per_dim = ccc_per_dim(pred, gold, names)
    mae = mean_absolute_error(gold, pred, multioutput="raw_values")
    out = {
        "n": int(pred.shape[0]),
        "dims": [str(k) for k in names],  # the order of the dimensions (JSON objects lose it)
        "ccc": per_dim,
        "ccc_mean": mean_defined(per_dim.values()),
        "pearson": {str(k): _pearson(pred[:, j], gold[:, j]) for j, k in enumerate(names)},
        "mae": {str(k): float(v) for k, v in zip(names, mae)},
    }
    undefined = [k for k, v in per_dim.items() if v is None]
    if undefined:
        out["ccc_undefined"] = undefined
    return out


# ---------------------------------------------------------------- bootstrap

def _boot_blocks(n: int, n_boot: int, seed: int):
    """Yield index blocks [b, n] of resamples; the same stream for a given seed."""
    rng = np.random.default_rng(seed)
    block = max(1, _BOOT_BLOCK // n)
    for start in range(0, n_boot, block):
        yield rng.integers(0, n, size=(min(block, n_boot - start), n))


def _boot_classification(y_true, y_pred, name: str, n_boot: int, seed: int) -> np.ndarray:
    classes = sorted({str(v) for v in y_true} | {str(v) for v in y_pred})
    index = {c: i for i, c in enumerate(classes)}
    t = _encode([str(v) for v in y_true], index, "reference")
    p = _encode([str(v) for v in y_pred], index, "prediction")
    k = len(classes)
    pair = t * k + p
    stats = []
    for idx in _boot_blocks(len(t), n_boot, seed):
        b = idx.shape[0]
        flat = pair[idx] + (np.arange(b) * k * k)[:, None]
        cm = np.bincount(flat.ravel(), minlength=b * k * k).reshape(b, k, k)
        stats.append(scores_from_confusion(cm)[name])
    return np.concatenate(stats)


def _boot_ccc(y_true, y_pred, name: str, n_boot: int, seed: int) -> np.ndarray:
    gold, pred = _as_float_array(y_true, "references"), _as_float_array(y_pred, "predictions")
    if gold.shape != pred.shape or gold.ndim not in (1, 2):
        raise ValueError(f"references {gold.shape} and predictions {pred.shape} must match, [N] or [N, D]")
    if name == "ccc" and gold.ndim != 1:
        raise ValueError("metric 'ccc' needs 1-D inputs; use 'ccc_mean' for [N, D]")
    gold = gold.reshape(len(gold), -1).T  # [D, N]
    pred = pred.reshape(len(pred), -1).T
    stats = []
    for idx in _boot_blocks(gold.shape[1], n_boot, seed):
        c = _ccc_batched(pred[:, idx], gold[:, idx])  # [D, b]
        stats.append(_nanmean_rows(c))
    return np.concatenate(stats)


def _group_counts(groups: np.ndarray, n_groups: int, n_boot: int, seed: int):
    """Yield [b, G] multiplicities of each group in blocks of resamples of G groups with replacement."""
    for idx in _boot_blocks(n_groups, n_boot, seed):
        b = idx.shape[0]
        flat = idx + (np.arange(b) * n_groups)[:, None]
        yield np.bincount(flat.ravel(), minlength=b * n_groups).reshape(b, n_groups)


def group_confusions(y_true, y_pred, groups: np.ndarray, n_groups: int, classes: Sequence[str]) -> np.ndarray:
    """[G, K*K] flattened confusion matrix (rows: reference, in ``classes`` order) of each group's items:
    a resample's or a swap's matrix is their weighted sum."""
    index = {c: i for i, c in enumerate(classes)}
    k = len(classes)
    pair = _encode([str(v) for v in y_true], index, "reference") * k + \
        _encode([str(v) for v in y_pred], index, "prediction")
    return np.bincount(groups * k * k + pair, minlength=n_groups * k * k).reshape(n_groups, k * k)


def _cluster_classification(y_true, y_pred, groups: np.ndarray, n_groups: int, name: str, n_boot: int,
                            seed: int) -> np.ndarray:
    """Cluster resamples from per-group confusion matrices: a resample's matrix is their weighted sum."""
    classes = sorted({str(v) for v in y_true} | {str(v) for v in y_pred})
    k = len(classes)
    per_group = group_confusions(y_true, y_pred, groups, n_groups, classes)
    stats = [scores_from_confusion((counts @ per_group).reshape(-1, k, k))[name]
             for counts in _group_counts(groups, n_groups, n_boot, seed)]
    return np.concatenate(stats)


def _cluster_ccc(y_true, y_pred, groups: np.ndarray, n_groups: int, name: str, n_boot: int,
                 seed: int) -> np.ndarray:
    """Cluster resamples of CCC from per-group sums (n, x, y, x^2, y^2, xy) per dimension."""
    gold, pred = _as_float_array(y_true, "references"), _as_float_array(y_pred, "predictions")
    if gold.shape != pred.shape or gold.ndim not in (1, 2):
        raise ValueError(f"references {gold.shape} and predictions {pred.shape} must match, [N] or [N, D]")
    if name == "ccc" and gold.ndim != 1:
        raise ValueError("metric 'ccc' needs 1-D inputs; use 'ccc_mean' for [N, D]")
    x, y = pred.reshape(len(pred), -1), gold.reshape(len(gold), -1)  # [N, D]
    parts = [np.ones_like(x), x, y, x * x, y * y, x * y]
    sums = np.stack([np.stack([np.bincount(groups, weights=p[:, d], minlength=n_groups) for d in range(x.shape[1])],
                              -1) for p in parts])  # [6, G, D]
    stats = []
    for counts in _group_counts(groups, n_groups, n_boot, seed):
        stats.append(_nanmean_rows(ccc_from_sums(*np.einsum("bg,sgd->sdb", counts, sums))))  # [D, b] each
    return np.concatenate(stats)


def _cluster_callable(y_true, y_pred, groups: np.ndarray, n_groups: int, fn: Callable, n_boot: int,
                      seed: int) -> np.ndarray:
    yt, yp = np.asarray(y_true), np.asarray(y_pred)
    members = [np.flatnonzero(groups == g) for g in range(n_groups)]
    return np.array([_as_stat(fn(yt[rows], yp[rows]))
                     for idx in _boot_blocks(n_groups, n_boot, seed) for row in idx
                     for rows in [np.concatenate([members[g] for g in row])]])


def _nanmean_rows(c: np.ndarray) -> np.ndarray:
    """Mean over axis 0 of the defined (non-NaN) entries, NaN where none is: ccc_mean per resample."""
    defined = ~np.isnan(c)
    n = defined.sum(0)
    return np.where(n > 0, np.where(defined, c, 0.0).sum(0) / np.maximum(n, 1), np.nan)


def bootstrap_ci(y_true, y_pred, metric_fn: str | Callable, n_boot: int = 1000, alpha: float = 0.05,
                 seed: int = 0, groups: Sequence | None = None) -> tuple[float, float] | tuple[None, None]:
    """Percentile bootstrap interval of a test-set metric (utterances resampled with replacement).

    ``groups`` (one id per item, e.g. its speaker) makes it a cluster bootstrap:
    each resample draws as many groups as there are, with replacement, and
    scores all items of every drawn group (a group drawn twice counts twice).
    Items of one speaker are correlated, and an item scored several times
    (once per enrolment draw) is one observation, not several: resampling
    items would give too narrow an interval. One group only: ``(None, None)``
    (no between-group variability to estimate).

    ``metric_fn`` is a name computed vectorised in numpy -- ``"uar"``, ``"wa"``,
    ``"macro_f1"`` (label strings) or ``"ccc"`` (1-D floats) / ``"ccc_mean"``
    ([N, D] floats, mean over the dimensions defined in each resample, as
    :func:`regression_metrics`) -- or any ``f(y_true, y_pred) -> float | None``,
    called once per resample on numpy arrays (slow for sklearn-based functions).
    Both paths draw the same resamples for a given ``seed``. Resamples where
    the metric is undefined (None/NaN) are left out; ``(None, None)`` when it
    is undefined on all of them (a constant CCC dimension): no interval, no error.
    """
    n = len(y_true)
    if n != len(y_pred):
        raise ValueError(f"{n} references but {len(y_pred)} predictions")
    if n == 0:
        raise ValueError("no utterances to resample")
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    stats = bootstrap_stats(y_true, y_pred, metric_fn, n_boot, seed, groups)
    if stats is None:
        return None, None
    finite = stats[np.isfinite(stats)]
    if finite.size == 0:
        return None, None
    low, high = np.quantile(finite, [alpha / 2.0, 1.0 - alpha / 2.0])
    return float(low), float(high)


def _check_metric_name(name: str) -> None:
    if name not in CLASSIFICATION_BOOT_METRICS + REGRESSION_BOOT_METRICS:
        raise ValueError(f"unknown bootstrap metric {name!r}; known: "
                         f"{', '.join(CLASSIFICATION_BOOT_METRICS + REGRESSION_BOOT_METRICS)} or a callable")


def _cluster_stats(y_true, y_pred, groups: Sequence, metric_fn: str | Callable, n_boot: int,
                   seed: int) -> np.ndarray | None:
    """Per-resample metric of the cluster bootstrap; None with fewer than two groups."""
    if len(groups) != len(y_true):
        raise ValueError(f"{len(y_true)} references but {len(groups)} group ids")
    if isinstance(metric_fn, str):
        _check_metric_name(metric_fn)
    _, inv = np.unique(np.asarray([str(g) for g in groups]), return_inverse=True)
    inv = inv.reshape(-1).astype(np.int64)
    n_groups = int(inv.max()) + 1
    if n_groups < 2:
        return None
    if not isinstance(metric_fn, str):
        return _cluster_callable(y_true, y_pred, inv, n_groups, metric_fn, n_boot, seed)
    if metric_fn in CLASSIFICATION_BOOT_METRICS:
        return _cluster_classification(y_true, y_pred, inv, n_groups, metric_fn, n_boot, seed)
    return _cluster_ccc(y_true, y_pred, inv, n_groups, metric_fn, n_boot, seed)


def _as_stat(value) -> float:
    """A callable metric's value for one resample; None (undefined) counts as NaN."""
    return math.nan if value is None else float(value)


# ---------------------------------------------------------------- folds

def _is_number(v) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))


def _aggregate(dicts: list[dict]) -> tuple[dict, dict]:
    """Mean and sample std (ddof=1) of every number, recursing into nested dicts."""
    mean, std = {}, {}
    keys = list(dict.fromkeys(k for d in dicts for k in d))
    for key in keys:
        if key in ("confusion", "n") or str(key).endswith("_ci"):
            continue
        values = [d.get(key) for d in dicts]
        defined = [v for v in values if v is not None]
        if not defined:
            continue
        if all(_is_number(v) for v in defined):
            arr = np.asarray(defined, dtype=np.float64)
            mean[key] = float(arr.mean())
            std[key] = float(arr.std(ddof=1)) if arr.size > 1 else None
        elif all(isinstance(v, dict) for v in defined):
            m, s = _aggregate(defined)
            if m:
                mean[key], std[key] = m, s
    return mean, std


def aggregate_folds(fold_metrics: list[dict]) -> dict:
    """Combine per-fold metric dicts: mean and sample std (ddof=1) per metric, summed confusion.

    A metric missing (or None) in some folds is averaged over the folds that
    define it. With a summed confusion the pooled UAR/WA/macro-F1 (all folds'
    utterances scored as one set) are given too. Per-fold CIs are not combined.
    """
    if not fold_metrics:
        raise ValueError("aggregate_folds: no folds given")
    mean, std = _aggregate(fold_metrics)
    out = {"n_folds": len(fold_metrics), "mean": mean, "std": std}
    if all(_is_number(d.get("n")) for d in fold_metrics):
        out["n"] = int(sum(d["n"] for d in fold_metrics))
    confusions = [d.get("confusion") for d in fold_metrics]
    if all(c is not None for c in confusions):
        arrays = [np.asarray(c, dtype=np.int64) for c in confusions]
        if len({a.shape for a in arrays}) != 1:
            raise ValueError(f"aggregate_folds: confusion shapes differ across folds: {[a.shape for a in arrays]}")
        total = np.sum(arrays, axis=0)
        out["confusion"] = total.tolist()
        out["pooled"] = scores_from_confusion(total)
    return out


def bootstrap_stats(y_true, y_pred, metric: str | Callable, n_boot: int = 1000, seed: int = 0,
                    groups: Sequence | None = None) -> np.ndarray | None:
    """The per-resample metric values behind :func:`bootstrap_ci` (None: a cluster bootstrap of one group).

    The resamples depend only on the number of items (or groups), ``n_boot`` and
    ``seed``, never on the predictions, so two systems scored with the same
    arguments are scored on the same resamples: their differences are the
    paired bootstrap of :mod:`sertk.eval.significance`.
    """
    if groups is not None:
        return _cluster_stats(y_true, y_pred, groups, metric, n_boot, seed)
    if not isinstance(metric, str):
        yt, yp = np.asarray(y_true), np.asarray(y_pred)
        return np.array([_as_stat(metric(yt[row], yp[row]))
                         for idx in _boot_blocks(len(yt), n_boot, seed) for row in idx])
    _check_metric_name(metric)
    if metric in CLASSIFICATION_BOOT_METRICS:
        return _boot_classification(y_true, y_pred, metric, n_boot, seed)
    return _boot_ccc(y_true, y_pred, metric, n_boot, seed)


CI_UNITS = ("speaker", "utterance")


def interval(y_true, y_pred, metric: str, speakers: Sequence | None, unit: str = "speaker", n_boot: int = 1000,
             seed: int = 0) -> tuple[list, str]:
    """The 95% interval a test set's result reports, and its ``ci_method``.

    Speakers are resampled by default: an utterance's errors go with its
    speaker's voice and style, so resampling utterances as if independent
    gives intervals too narrow on speaker-correlated test sets (docs/metrics.md).
    ``unit="utterance"`` is the classic utterance bootstrap.
    """
    if unit not in CI_UNITS:
        raise ValueError(f"eval.ci_unit must be one of {', '.join(CI_UNITS)}, got {unit!r}")
    if unit == "speaker":
        if speakers is None:
            raise ValueError("a speaker-level interval needs each utterance's speaker")
        return list(bootstrap_ci(y_true, y_pred, metric, n_boot=n_boot, seed=seed, groups=speakers)), \
            "speaker_bootstrap"
    return list(bootstrap_ci(y_true, y_pred, metric, n_boot=n_boot, seed=seed)), "utterance_bootstrap"
