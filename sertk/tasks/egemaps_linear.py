"""eGeMAPS functionals + linear models (scikit-learn): the feature baseline.

Logistic regression for the categorical labels and ridge regression for
A/V/D when the data has them. ``model.speaker_norm: true`` z-normalises each
speaker's features with that speaker's own statistics (test speakers use their
own unlabelled utterances), the classic per-speaker normalisation.
The fitted model is saved as plain arrays (npz), never pickled.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import yaml
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.preprocessing import StandardScaler

from sertk.common.fileio import atomic_path, write_text_atomic
from sertk.common.protocol import Split
from sertk.data.datadir import DataDir
from sertk.eval.metrics import classification_metrics, interval, regression_metrics
from sertk.eval.results import write_result
from sertk.features.store import feats_matrix
from sertk.tasks import EVAL_CI_KEYS, TaskContext, check_ci_unit, label_map_of, reject_unknown, speakers_of

log = logging.getLogger(__name__)
AVD_NAMES = ["arousal", "valence", "dominance"]


def speaker_normalize(x: np.ndarray, speakers: list[str]) -> np.ndarray:
    """z-normalise features per speaker (speakers with one utterance are only centred)."""
    out = np.empty_like(x)
    spk = np.asarray(speakers)
    for s in np.unique(spk):
        idx = spk == s
        mu = x[idx].mean(0)
        sd = x[idx].std(0) if idx.sum() > 1 else np.ones(x.shape[1])
        out[idx] = (x[idx] - mu) / np.where(sd > 1e-8, sd, 1.0)
    return out


def standardize(x: np.ndarray, mean: np.ndarray, scale: np.ndarray, clip: float | None = 5.0) -> np.ndarray:
    """z-scores clipped to +-clip: one functional that explodes on one utterance
    (a normalised std whose mean is near zero) must not swamp a linear model."""
    xs = (x - mean) / scale
    return np.clip(xs, -clip, clip) if clip else xs


def fit_logreg(x: np.ndarray, y: np.ndarray, clip: float | None = 5.0, seed: int | None = None,
               **lr_kwargs) -> dict[str, np.ndarray]:
    """Standardise + logistic regression, returned as plain arrays (saved as npz, never pickled)."""
    scaler = StandardScaler().fit(x)
    clf = LogisticRegression(random_state=seed, **lr_kwargs).fit(standardize(x, scaler.mean_, scaler.scale_, clip), y)
    return {"mean": scaler.mean_, "scale": scaler.scale_, "classes": clf.classes_,
            "coef": clf.coef_, "intercept": clf.intercept_}


def logreg_predict(xs: np.ndarray, z, num_labels: int) -> tuple[np.ndarray, np.ndarray]:
    """Predicted label indices and posteriors over all ``num_labels`` (a class absent in training gets 0)."""
    logits = xs @ z["coef"].T + z["intercept"]
    if logits.shape[1] == 1:  # binary logistic regression has one column: the second class's logit
        logits = np.concatenate([np.zeros_like(logits), logits], 1)
    p = np.exp(logits - logits.max(1, keepdims=True))
    probs = np.zeros((len(xs), num_labels))
    probs[:, z["classes"]] = p / p.sum(1, keepdims=True)
    return z["classes"][logits.argmax(1)], probs


def write_classification(outdir: Path, ctx: TaskContext, protocol: dict, utts: list[str], gold: list[str],
                         pred: list[str], labels: list[str], extra: dict, n_boot: int = 1000,
                         probs: np.ndarray | None = None, ci_unit: str = "speaker",
                         speakers: list[str] | None = None) -> tuple[Path, dict]:
    """One test set's metrics (+ UAR bootstrap CI, speakers resampled unless ``ci_unit`` says utterances),
    predictions.txt, scores.txt (posteriors, when given) and results.json: the files the report and score
    fusion read. ``speakers`` (per utterance) when the caller holds them, else read from the test set."""
    metrics = classification_metrics(gold, pred, labels)
    if n_boot:  # eval.bootstrap: 0 turns the CI off
        spk = speakers if speakers is not None else speakers_of(ctx, protocol["test"], utts)
        metrics["uar_ci"], metrics["ci_method"] = interval(gold, pred, "uar", spk, ci_unit, n_boot)
    write_text_atomic(outdir / "predictions.txt", "".join(f"{u} {p}\n" for u, p in zip(utts, pred)))
    if probs is not None:
        write_text_atomic(outdir / "scores.txt", "# utt " + " ".join(labels) + "\n" + "".join(
            f"{u} {' '.join(f'{v:.5f}' for v in row)}\n" for u, row in zip(utts, probs)))
    path = outdir / "results.json"
    write_result(path, stage=ctx.stage, name=ctx.name, task="classification", protocol=protocol,
                 metrics=metrics, labels=labels, confusion=metrics["confusion"], extra=extra)
    return path, metrics


def finite_rows(x: np.ndarray, utts: list[str], where: str | Path) -> np.ndarray:
    """``x`` when every row is finite; else an error naming the utterances (scikit-learn would
    only say "Input contains NaN", naming none)."""
    bad = [u for u, ok in zip(utts, np.isfinite(x).all(1)) if not ok]
    if bad:
        raise ValueError(f"{where}: the eGeMAPS features of {len(bad)} utterance(s) are not finite, e.g. "
                         f"{', '.join(bad[:5])}; clips that short give openSMILE no analysis window: drop them "
                         "(utils/fix_data_dir.sh, see --min-duration) and re-run stage 2")
    return x


def load_set(ctx: TaskContext, set_name: str, speaker_norm: bool):
    d = DataDir.read(ctx.datadir(set_name))
    utts = d.utts
    scp = ctx.dump / "egemaps" / set_name / "feats.scp"
    x = finite_rows(feats_matrix(scp, utts).astype(np.float64), utts, scp)
    if speaker_norm:
        x = speaker_normalize(x, [d.utt2spk[u] for u in utts])
    return d, utts, x


def check_config(cfg: dict, where: str) -> None:
    reject_unknown(cfg, {"task", "model", "eval", "label_map", "baseline"}, where)
    reject_unknown(cfg.get("model") or {}, {"C", "max_iter", "class_weight", "speaker_norm", "regression",
                                            "ridge_alpha", "clip"}, f"{where}: model")
    reject_unknown(cfg.get("eval") or {}, EVAL_CI_KEYS, f"{where}: eval")
    check_ci_unit(cfg.get("eval") or {}, where)


def train(cfg: dict, split: Split, ctx: TaskContext) -> None:
    m = cfg.get("model", {})
    labels = label_map_of(cfg, split, "egemaps_linear")
    d, utts, x = load_set(ctx, split.train, m.get("speaker_norm", False))
    y = np.array([labels.index(labels.canonical(d.utt2emo[u])) for u in utts])
    arrays = fit_logreg(x, y, m.get("clip", 5.0), C=m.get("C", 1.0), max_iter=m.get("max_iter", 5000),
                        class_weight=m.get("class_weight", "balanced"))
    xs = standardize(x, arrays["mean"], arrays["scale"], m.get("clip", 5.0))
    if d.has("utt2avd") and m.get("regression", True):
        avd = np.array([d.utt2avd[u] for u in utts])
        ridge = Ridge(alpha=m.get("ridge_alpha", 10.0)).fit(xs, avd)
        arrays.update(ridge_coef=ridge.coef_, ridge_intercept=ridge.intercept_)
    ctx.expdir.mkdir(parents=True, exist_ok=True)
    with atomic_path(ctx.expdir / "model.npz") as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, labels=np.array(labels.labels), **arrays)
    # what sertk predict needs to extract and standardise new audio as stages 2 and 4 did
    write_text_atomic(ctx.expdir / "model.yaml", yaml.safe_dump({
        "task": "egemaps_linear", "speaker_norm": bool(m.get("speaker_norm", False)), "clip": m.get("clip", 5.0),
        "sample_rate": ctx.sample_rate, "labels": labels.labels}, sort_keys=False))
    train_acc = float((logreg_predict(xs, arrays, len(labels.labels))[0] == y).mean())
    log.info("%s %s: trained on %d utterances, train accuracy %.3f", ctx.name, split.tag, len(y), train_acc)


def evaluate(cfg: dict, split: Split, ctx: TaskContext) -> list[Path]:
    m = cfg.get("model", {})
    labels = label_map_of(cfg, split, "egemaps_linear")
    z = np.load(ctx.expdir / "model.npz")
    written = []
    for test in split.tests:
        d, utts, x = load_set(ctx, test, m.get("speaker_norm", False))
        xs = standardize(x, z["mean"], z["scale"], m.get("clip", 5.0))
        pred = [labels.labels[i] for i in logreg_predict(xs, z, len(labels.labels))[0]]
        gold = [labels.canonical(d.utt2emo[u]) for u in utts]
        outdir = ctx.expdir / "eval" / test
        protocol = split.record(test, ctx.data)
        path, metrics = write_classification(outdir, ctx, protocol, utts, gold, pred, labels.labels,
                                             {"fold": split.fold, "baseline": bool(cfg.get("baseline"))},
                                             cfg.get("eval", {}).get("bootstrap", 1000),
                                             ci_unit=cfg.get("eval", {}).get("ci_unit", "speaker"),
                                             speakers=[d.utt2spk[u] for u in utts])
        written.append(path)
        if "ridge_coef" in z.files and d.has("utt2avd"):
            avd_pred = xs @ z["ridge_coef"].T + z["ridge_intercept"]
            gold_avd = np.array([d.utt2avd[u] for u in utts])
            rpath = outdir / "avd" / "results.json"
            write_result(rpath, stage=ctx.stage, name=f"{ctx.name}_ridge", task="regression",
                         protocol=protocol, metrics=regression_metrics(avd_pred, gold_avd, AVD_NAMES),
                         extra={"fold": split.fold, "baseline": bool(cfg.get("baseline"))})
            written.append(rpath)
        log.info("%s %s -> %s: UAR %.4f WA %.4f", ctx.name, split.tag, test, metrics["uar"], metrics["wa"])
    return written
