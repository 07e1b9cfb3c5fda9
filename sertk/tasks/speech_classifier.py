"""Speech-encoder baseline: categorical classifier (task: classifier) or A/V/D
regressor (task: regressor), trained end to end with the sertk trainer.

Writes into the split's experiment dir: ``model.yaml`` (everything needed to
rebuild the model), ``best.safetensors`` (trainer), and per test set
``eval/<set>/{results.json,predictions.txt,scores.txt}``.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
import yaml

from sertk.common.fileio import write_text_atomic
from sertk.common.protocol import Split
from sertk.data.dataset import AudioDataset, collate_audio
from sertk.data.labels import LabelMap
from sertk.eval.metrics import classification_metrics, interval, regression_metrics
from sertk.eval.results import write_result
from sertk.models.encoder import SPEC_KEYS
from sertk.models.classifier import SpeechClassifier
from sertk.tasks import (CROP_KEYS, EVAL_CI_KEYS, TaskContext, audio_crop, check_ci_unit, label_map_of,
                         reject_unknown)
from sertk.train.losses import ccc_loss
from sertk.train.distributed import env_info
from sertk.train.inference import place, predict, run_model
from sertk.train.trainer import (Trainer, TrainConfig, bucketed_batches, chance_level, constant_outputs, load_weights,
                                 verdict)

log = logging.getLogger(__name__)
AVD_NAMES = ["arousal", "valence", "dominance"]


def _is_regression(cfg: dict) -> bool:
    return cfg.get("task") == "regressor"


def _labels(cfg: dict, split: Split, ctx: TaskContext) -> LabelMap | None:
    if _is_regression(cfg):
        return None
    return label_map_of(cfg, split, "classifier")


def build_model(cfg: dict, num_outputs: int) -> SpeechClassifier:
    m = cfg["model"]
    return SpeechClassifier(m["encoder"], num_outputs, pooling=m.get("pooling", "mean"),
                            head_hidden=m.get("head_hidden"), dropout=m.get("dropout", 0.1))


def _dataset(cfg: dict, ctx: TaskContext, set_name: str, labels: LabelMap | None, train: bool) -> AudioDataset:
    return AudioDataset(ctx.datadir(set_name), sample_rate=ctx.sample_rate, label_map=labels,
                        targets=("avd",) if labels is None else ("emo",), **audio_crop(cfg.get("data"), train))


def check_config(cfg: dict, where: str) -> None:
    reject_unknown(cfg, {"task", "model", "data", "train", "eval", "label_map", "baseline"}, where)
    model = cfg.get("model") or {}
    reject_unknown(model, {"encoder", "pooling", "head_hidden", "dropout"}, f"{where}: model")
    enc = model.get("encoder") or {}
    reject_unknown(enc, SPEC_KEYS | {"layer", "freeze",
                         "freeze_feature_encoder", "normalize"}, f"{where}: model.encoder")
    reject_unknown(cfg.get("data") or {}, CROP_KEYS | {"buckets"}, f"{where}: data")
    audio_crop(cfg.get("data"), True, f"{where}: data")
    reject_unknown(cfg.get("eval") or {}, {"batch_size"} | EVAL_CI_KEYS, f"{where}: eval")
    check_ci_unit(cfg.get("eval") or {}, where)
    TrainConfig.from_dict(dict(cfg.get("train") or {}))
    if not enc.get("name_or_path"):  # local configs are built for real; hub ones are not fetched
        build_model(cfg, 3)


def length_buckets(cfg: dict, train_cfg: TrainConfig):
    """``data.buckets`` length-bucketed batches (less padding); None = the trainer's default batches."""
    buckets = (cfg.get("data") or {}).get("buckets")
    return bucketed_batches(train_cfg.batch_size, train_cfg.seed, int(buckets)) if buckets else None


def train(cfg: dict, split: Split, ctx: TaskContext) -> None:
    labels = _labels(cfg, split, ctx)
    regression = labels is None
    model = build_model(cfg, 3 if regression else labels.num_classes)
    train_set = _dataset(cfg, ctx, split.train, labels, train=True)
    dev_set = _dataset(cfg, ctx, split.dev or split.train, labels, train=False)
    if not split.dev:
        log.warning("protocol %s has no dev set: selecting the checkpoint on the training data", split.tag)

    def compute_loss(m, batch):  # m may be the DDP wrapper: call it, not its module
        out = m(batch["wav"], batch["lengths"])
        if regression:
            return ccc_loss(out, batch["avd"])
        return torch.nn.functional.cross_entropy(out, batch["labels"])

    def evaluate(m, loader):
        utts, out = run_model(m, loader, amp=train_cfg.amp)
        flags = {"constant_outputs": constant_outputs(out)}
        if regression:
            gold = np.array([dev_set.datadir.utt2avd[u] for u in utts])
            r = regression_metrics(out, gold, AVD_NAMES)
            return {"ccc_mean": r["ccc_mean"], **{f"ccc_{k}": v for k, v in r["ccc"].items()}, **flags}
        gold = [labels.canonical(dev_set.datadir.utt2emo[u]) for u in utts]
        pred = [labels.labels[i] for i in out.argmax(1)]
        r = classification_metrics(gold, pred, labels.labels)
        return {"uar": r["uar"], "wa": r["wa"], "macro_f1": r["macro_f1"], **flags}

    tcfg = dict(cfg.get("train", {}))
    tcfg.setdefault("select_metric", "ccc_mean" if regression else "uar")
    tcfg.setdefault("select_mode", "max")
    # HF encoders skip parameters per step (LayerDrop, the unused mask embedding): DDP must allow it
    tcfg.setdefault("find_unused_parameters", True)
    train_cfg = TrainConfig.from_dict(tcfg)
    # UAR is scored over the classes present: chance is 1/(classes in the dev set)
    n_dev_classes = None if regression else len(set(dev_set.label_ids))
    trainer = Trainer(model, train_set, dev_set, collate_audio, compute_loss, evaluate, train_cfg, ctx.expdir,
                      batch_sampler_fn=length_buckets(cfg, train_cfg),
                      **chance_level(train_cfg.select_metric, n_dev_classes))
    summary = trainer.fit(resume=True)
    info = {"task": cfg["task"], "model": cfg["model"], "sample_rate": ctx.sample_rate,
            "labels": None if regression else labels.labels,
            "outputs": AVD_NAMES if regression else None,
            "best_epoch": summary.get("best_epoch"), "best_dev": summary.get("best_metrics"),
            **verdict(summary)}
    if env_info().is_main:
        write_text_atomic(ctx.expdir / "model.yaml", yaml.safe_dump(info, sort_keys=False))


def load_trained(expdir: Path) -> tuple[SpeechClassifier, dict]:
    """Rebuild a trained model from its experiment dir (model.yaml + best.safetensors)."""
    info = yaml.safe_load((expdir / "model.yaml").read_text())
    n = 3 if info["task"] == "regressor" else len(info["labels"])
    model = build_model({"model": info["model"]}, n)
    load_weights(model, expdir / "best.safetensors")
    model.eval()
    return model, info


def evaluate(cfg: dict, split: Split, ctx: TaskContext) -> list[Path]:
    model, info = load_trained(ctx.expdir)
    train_cfg = TrainConfig.from_dict(dict(cfg.get("train") or {}))
    model = place(model, train_cfg.device)
    labels = _labels(cfg, split, ctx)
    written = []
    for test in split.tests:
        ds = _dataset(cfg, ctx, test, labels, train=False)
        utts, out = predict(model, ds, batch_size=cfg.get("eval", {}).get("batch_size", 16), amp=train_cfg.amp)
        outdir = ctx.expdir / "eval" / test
        protocol = split.record(test, ctx.data)
        extra = {"fold": split.fold, "baseline": bool(cfg.get("baseline")), "model_dir": str(ctx.expdir),
                 "best_dev": info.get("best_dev"), "collapsed": bool(info.get("collapsed"))}
        n_boot = cfg.get("eval", {}).get("bootstrap", 1000)
        ci_unit = cfg.get("eval", {}).get("ci_unit", "speaker")
        if labels is None:
            gold = np.array([ds.datadir.utt2avd[u] for u in utts])
            metrics = regression_metrics(out, gold, AVD_NAMES)
            if n_boot:
                metrics["ccc_mean_ci"], metrics["ci_method"] = interval(
                    gold, out, "ccc_mean", [ds.datadir.utt2spk[u] for u in utts], ci_unit, n_boot)
            write_text_atomic(outdir / "predictions.txt",
                              "".join(f"{u} {' '.join(f'{v:.5f}' for v in row)}\n" for u, row in zip(utts, out)))
            path = outdir / "results.json"
            write_result(path, stage=ctx.stage, name=ctx.name, task="regression", protocol=protocol,
                         metrics=metrics, extra=extra)
        else:
            gold = [labels.canonical(ds.datadir.utt2emo[u]) for u in utts]
            pred = [labels.labels[i] for i in out.argmax(1)]
            metrics = classification_metrics(gold, pred, labels.labels)
            if n_boot:
                metrics["uar_ci"], metrics["ci_method"] = interval(
                    gold, pred, "uar", [ds.datadir.utt2spk[u] for u in utts], ci_unit, n_boot)
            probs = torch.softmax(torch.from_numpy(out), 1).numpy()
            write_text_atomic(outdir / "predictions.txt", "".join(f"{u} {p}\n" for u, p in zip(utts, pred)))
            write_text_atomic(outdir / "scores.txt", "# utt " + " ".join(labels.labels) + "\n" + "".join(
                f"{u} {' '.join(f'{v:.5f}' for v in row)}\n" for u, row in zip(utts, probs)))
            path = outdir / "results.json"
            write_result(path, stage=ctx.stage, name=ctx.name, task="classification", protocol=protocol,
                         metrics=metrics, labels=labels.labels, confusion=metrics["confusion"], extra=extra)
        log.info("%s %s -> %s: %s", ctx.name, split.tag, test,
                 {k: round(v, 4) for k, v in metrics.items() if isinstance(v, float)})
        written.append(path)
    return written
