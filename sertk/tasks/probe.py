"""Linear probe (stages 3-4): logistic regression on one layer of a frozen speech encoder.

Measures how linearly a layer's features separate the emotion classes, so
encoders and layers can be compared without fine-tuning. The layer's frame
features are cached per utterance (by audio content, shared by every set and fold) under ``<dump>/encoder_feats``
(sertk.features.embedding_cache, shared with SELM: a second run, or another
C, never runs the encoder again), pooled over the valid frames of each
utterance (``mean`` or ``mean+std``), optionally z-normalised per speaker,
standardised and fed to a multinomial logistic regression (the eGeMAPS
baseline's code, without its clipping). ``layer: weighted`` is the plain
average of all layers here, since nothing trains the weights.

Per split the experiment dir holds ``model.npz`` (scaler, coef, intercept,
classes: plain arrays, never pickled), ``model.yaml`` (encoder spec, layer,
pooling, labels, dev UAR) and per test set
``eval/<set>/{results.json,predictions.txt,scores.txt}``; results.json's
``extra.encoder`` / ``extra.layer`` let a report line probes up by encoder.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
import yaml

from sertk.common.fileio import atomic_path, write_text_atomic
from sertk.common.protocol import Split
from sertk.data.dataset import AudioDataset
from sertk.data.labels import LabelMap
from sertk.eval.metrics import classification_metrics
from sertk.features.embedding_cache import encoder_features, frozen_encoder
from sertk.models.encoder import SPEC_KEYS
from sertk.models.heads import build_pooling
from sertk.tasks import EVAL_CI_KEYS, TaskContext, check_ci_unit, label_map_of, reject_unknown
from sertk.tasks.egemaps_linear import fit_logreg, logreg_predict, speaker_normalize, standardize, write_classification

log = logging.getLogger(__name__)
POOLINGS = {"mean": "mean", "mean+std": "meanstd"}  # config name -> sertk.models.heads name
ENCODER_KEYS = SPEC_KEYS | {"layer", "normalize", "freeze"}


def check_config(cfg: dict, where: str) -> None:
    reject_unknown(cfg, {"task", "model", "data", "eval", "label_map", "baseline"}, where)
    m = cfg.get("model") or {}
    reject_unknown(m, {"encoder", "pooling", "C", "max_iter", "class_weight", "speaker_norm", "seed"},
                   f"{where}: model")
    enc = m.get("encoder") or {}
    reject_unknown(enc, ENCODER_KEYS, f"{where}: model.encoder")
    if not (enc.get("name_or_path") or enc.get("type")):
        raise ValueError(f"{where}: model.encoder needs name_or_path or type+config")
    if enc.get("freeze", True) is not True:
        raise ValueError(f"{where}: model.encoder.freeze: a probe's encoder is always frozen")
    if m.get("pooling", "mean") not in POOLINGS:
        raise ValueError(f"{where}: model.pooling must be one of {sorted(POOLINGS)}")
    reject_unknown(cfg.get("data") or {}, {"max_duration", "cache_batch_size"}, f"{where}: data")
    reject_unknown(cfg.get("eval") or {}, EVAL_CI_KEYS, f"{where}: eval")
    check_ci_unit(cfg.get("eval") or {}, where)
    _check_layer(enc.get("layer", "last"), where)
    if not enc.get("name_or_path"):  # local configs are built for real; hub/zoo ones are not fetched
        try:
            frozen_encoder(enc, _seed(cfg))
        except ValueError as e:  # an out-of-range layer, a window on a non-Whisper encoder: name the key
            raise ValueError(f"{where}: model.encoder: {e}") from e


def _check_layer(layer, where: str) -> None:
    """The layer's kind; its range is checked where the encoder is built (SpeechEncoder, which names
    the layers it has), for hub checkpoints at the first training too."""
    if layer not in ("last", "weighted") and (isinstance(layer, bool) or not isinstance(layer, int)):
        raise ValueError(f"{where}: model.encoder.layer {layer!r}: use last, weighted or a layer number")


def encoder_name(spec: dict) -> str | None:
    """An encoder as results name it: its checkpoint, or a local config's type (``whisper``)."""
    return spec.get("name_or_path") or spec.get("type")


def _seed(cfg: dict) -> int:
    return int(cfg["model"].get("seed", 0))


def _labels(cfg: dict, split: Split) -> LabelMap:
    return label_map_of(cfg, split, "probe")


class _Features:
    """The frozen encoder (built once, seeded) and the pooled utterance features of any set."""

    def __init__(self, cfg: dict, ctx: TaskContext):
        self.cfg, self.ctx = cfg, ctx
        self.m = cfg["model"]
        self.spec = {**self.m["encoder"], "freeze": True}  # as SELM's spec: both share one cache entry
        self.encoder, self.digest = frozen_encoder(self.spec, _seed(cfg))
        self.pool, self.dim = build_pooling(POOLINGS[self.m.get("pooling", "mean")], self.encoder.hidden_size)

    def pooled(self, set_name: str):
        """(data dir, utterances, [N, D] float64): cached frames pooled per utterance."""
        d = self.cfg.get("data") or {}
        ds = AudioDataset(self.ctx.datadir(set_name), sample_rate=self.ctx.sample_rate, label_map=None,
                          targets=(), max_duration=d.get("max_duration"))
        feats = encoder_features(self.ctx.dump / "encoder_feats", self.encoder, self.spec, self.digest, ds,
                                 set_name, batch_size=d.get("cache_batch_size", 1))
        # one lazy read per utterance, pooled into its row: no small array per utterance stays alive among
        # the freed frame tensors, which kept glibc from reusing their space (peak RSS grew with the set)
        x = np.empty((len(ds.utts), self.dim), dtype=np.float64)
        for i, u in enumerate(ds.utts):
            x[i] = self._pool_one(feats[u])
        if self.m.get("speaker_norm", False):
            x = speaker_normalize(x, [ds.datadir.utt2spk[u] for u in ds.utts])
        return ds.datadir, ds.utts, x

    def _pool_one(self, f: torch.Tensor) -> np.ndarray:
        """Cached features hold only valid frames: every frame counts."""
        with torch.no_grad():
            return self.pool(f[None], torch.tensor([len(f)]))[0].numpy()

    def predict(self, z, set_name: str, labels: LabelMap):
        """(utterances, gold, predicted labels, posteriors [N, num labels]) of a set."""
        d, utts, x = self.pooled(set_name)
        idx, probs = logreg_predict(standardize(x, z["mean"], z["scale"], None), z, len(labels.labels))
        gold = [labels.canonical(d.utt2emo[u]) for u in utts]
        return utts, gold, [labels.labels[i] for i in idx], probs

    def record(self) -> dict:
        """What results.json's extra names the probed encoder by (a Whisper encoder's window too)."""
        window = {"window": self.spec["window"]} if self.spec.get("window") else {}
        return {"encoder": encoder_name(self.spec),
                "layer": self.spec.get("layer", "last"), **window}


def train(cfg: dict, split: Split, ctx: TaskContext) -> None:
    m = cfg["model"]
    labels = _labels(cfg, split)
    feats = _Features(cfg, ctx)
    d, utts, x = feats.pooled(split.train)
    y = np.array([labels.index(labels.canonical(d.utt2emo[u])) for u in utts])
    arrays = fit_logreg(x, y, None, _seed(cfg), C=m.get("C", 1.0), max_iter=m.get("max_iter", 5000),
                        class_weight=m.get("class_weight", "balanced"))
    ctx.expdir.mkdir(parents=True, exist_ok=True)
    with atomic_path(ctx.expdir / "model.npz") as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, labels=np.array(labels.labels), **arrays)
    dev_uar = None
    if split.dev:
        _, gold, pred, _ = feats.predict(arrays, split.dev, labels)
        dev_uar = float(classification_metrics(gold, pred, labels.labels)["uar"])
    info = {"task": "probe", "encoder": feats.spec, "encoder_weights_sha256": feats.digest,
            "layer": feats.record()["layer"], "pooling": m.get("pooling", "mean"),
            "speaker_norm": bool(m.get("speaker_norm", False)), "feature_dim": int(x.shape[1]),
            "labels": labels.labels, "train_utterances": len(utts), "dev_uar": dev_uar,
            # what sertk predict needs to rebuild the encoder and read audio as stage 4 did
            "seed": _seed(cfg), "sample_rate": ctx.sample_rate,
            "max_duration": (cfg.get("data") or {}).get("max_duration")}
    write_text_atomic(ctx.expdir / "model.yaml", yaml.safe_dump(info, sort_keys=False))
    log.info("%s %s: probe of %s layer %s on %d utterances, dev UAR %s", ctx.name, split.tag,
             feats.record()["encoder"], info["layer"], len(utts), "n/a" if dev_uar is None else f"{dev_uar:.4f}")


def evaluate(cfg: dict, split: Split, ctx: TaskContext) -> list[Path]:
    labels = _labels(cfg, split)
    feats = _Features(cfg, ctx)
    z = np.load(ctx.expdir / "model.npz")
    extra = {"fold": split.fold, "baseline": bool(cfg.get("baseline")), **feats.record(),
             "model_dir": str(ctx.expdir)}
    written = []
    for test in split.tests:
        utts, gold, pred, probs = feats.predict(z, test, labels)
        path, metrics = write_classification(ctx.expdir / "eval" / test, ctx, split.record(test, ctx.data), utts,
                                             gold, pred, labels.labels, extra,
                                             (cfg.get("eval") or {}).get("bootstrap", 1000), probs,
                                             (cfg.get("eval") or {}).get("ci_unit", "speaker"))
        written.append(path)
        log.info("%s %s -> %s: UAR %.4f WA %.4f", ctx.name, split.tag, test, metrics["uar"], metrics["wa"])
    return written
