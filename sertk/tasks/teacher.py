"""Stage 7/8 teacher: the Dawn A/D/V regressor, alone or as an ensemble (task: teacher).

Each member is either the released checkpoint (``pretrained:`` a hub name or
local dir; used as is) or a Dawn model on a ``backbone:`` encoder spec (a hub
checkpoint or local config: Wav2Vec2, WavLM, HuBERT, or a Whisper encoder with
its ``window``) trained here on the split's human A/V/D with the CCC loss. ``train`` writes
``<member>/best.safetensors`` and ``teacher.yaml`` (what :func:`load_teacher`
needs); ``evaluate`` scores the ensemble mean against human labels.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
import yaml

from sertk.common.fileio import hash_obj, sha256_file, write_text_atomic
from sertk.common.protocol import Split
from sertk.data.dataset import AudioDataset, collate_audio
from sertk.eval.metrics import interval, regression_metrics
from sertk.eval.results import write_result
from sertk.models.encoder import SPEC_KEYS
from sertk.models.dawn import AVD_OUTPUTS, DawnRegressor, EnsembleTeacher, load_released
from sertk.tasks import CROP_KEYS, EVAL_CI_KEYS, TaskContext, audio_crop, check_ci_unit, reject_unknown
from sertk.tasks.speech_classifier import length_buckets
from sertk.train.inference import place, predict, run_model
from sertk.train.losses import ccc_loss
from sertk.train.trainer import Trainer, TrainConfig, chance_level, constant_outputs, load_weights, verdict

log = logging.getLogger(__name__)
_TO_DAWN = [AVD_OUTPUTS.index(n) for n in ("arousal", "dominance", "valence")]
BACKBONE_KEYS = SPEC_KEYS  # sertk.models.encoder specs


def check_config(cfg: dict, where: str) -> None:
    reject_unknown(cfg, {"task", "members", "data", "train", "eval", "baseline"}, where)
    members = cfg.get("members")
    if not members:
        raise ValueError(f"{where}: teacher needs 'members' (a list of Dawn regressors)")
    names = [m.get("name") for m in members]
    if None in names or len(set(names)) != len(names):
        raise ValueError(f"{where}: every member needs a unique 'name', got {names}")
    for m in members:
        w = f"{where}: members.{m['name']}"
        reject_unknown(m, {"name", "pretrained", "revision", "backbone", "dropout", "freeze_feature_encoder"}, w)
        if bool(m.get("pretrained")) == bool(m.get("backbone")):
            raise ValueError(f"{w}: give exactly one of 'pretrained' (released checkpoint) or 'backbone' (local)")
        reject_unknown(m.get("backbone") or {}, BACKBONE_KEYS, f"{w}: backbone")
        if m.get("backbone") and not m["backbone"].get("name_or_path"):  # hub weights are not fetched here
            build_member(m)
    reject_unknown(cfg.get("data") or {}, CROP_KEYS | {"buckets"}, f"{where}: data")
    audio_crop(cfg.get("data"), True, f"{where}: data")
    reject_unknown(cfg.get("eval") or {}, {"batch_size", "gold_range"} | EVAL_CI_KEYS, f"{where}: eval")
    check_ci_unit(cfg.get("eval") or {}, where)
    gold_range(cfg, where)
    TrainConfig.from_dict(dict(cfg.get("train") or {}))


def gold_range(cfg: dict, where: str = "config") -> tuple[float, float] | None:
    """``eval.gold_range: [lo, hi]`` maps human labels onto the teacher's 0-1 scale before scoring
    (MSP-Podcast 1-7, IEMOCAP 1-5); CCC penalises a scale offset, so the released teacher is
    only comparable with human labels on its own scale."""
    r = (cfg.get("eval") or {}).get("gold_range")
    if r is None:
        return None
    if not (isinstance(r, (list, tuple)) and len(r) == 2 and float(r[1]) > float(r[0])):
        raise ValueError(f"{where}: eval.gold_range must be [low, high] with high > low, got {r!r}")
    return float(r[0]), float(r[1])


def scaled_gold(cfg: dict, gold: np.ndarray) -> np.ndarray:
    r = gold_range(cfg)
    return gold if r is None else (gold - r[0]) / (r[1] - r[0])


def build_member(m: dict) -> DawnRegressor:
    if m.get("pretrained"):
        return load_released(m["pretrained"], m.get("revision"))
    model = DawnRegressor.from_spec({**m["backbone"], "dropout": m.get("dropout")})
    if m.get("freeze_feature_encoder", True):
        model.wav2vec2.freeze_feature_encoder()
    return model


def _dataset(cfg: dict, ctx: TaskContext, name: str, train: bool) -> AudioDataset:
    return AudioDataset(ctx.datadir(name), ctx.sample_rate, targets=("avd",), **audio_crop(cfg.get("data"), train))


class _AVD(torch.nn.Module):
    """A Dawn member seen in sertk's A/V/D order."""

    def __init__(self, m: DawnRegressor):
        super().__init__()
        self.m = m

    def forward(self, wav, lengths=None):
        return self.m.avd(wav, lengths)


def _train_member(cfg: dict, m: dict, split: Split, ctx: TaskContext, outdir: Path) -> dict:
    model = build_member(m)
    train_set = _dataset(cfg, ctx, split.train, train=True)
    dev_set = _dataset(cfg, ctx, split.dev or split.train, train=False)

    lo, hi = gold_range(cfg) or (0.0, 1.0)

    def compute_loss(net, batch):  # gold is A/V/D; the Dawn head is trained in its native A/D/V order
        return ccc_loss(net(batch["wav"], batch["lengths"]), (batch["avd"][:, _TO_DAWN] - lo) / (hi - lo))

    def evaluate(net, loader):
        utts, out = run_model(_AVD(net.module if hasattr(net, "module") else net), loader, amp=train_cfg.amp)
        gold = scaled_gold(cfg, np.array([dev_set.datadir.utt2avd[u] for u in utts]))
        r = regression_metrics(out, gold, list(AVD_OUTPUTS))
        return {"ccc_mean": r["ccc_mean"], **{f"ccc_{k}": v for k, v in r["ccc"].items()},
                "constant_outputs": constant_outputs(out)}

    tcfg = dict(cfg.get("train") or {})
    tcfg.setdefault("select_metric", "ccc_mean")
    tcfg.setdefault("select_mode", "max")
    train_cfg = TrainConfig.from_dict(tcfg)
    summary = Trainer(model, train_set, dev_set, collate_audio, compute_loss, evaluate, train_cfg, outdir,
                      batch_sampler_fn=length_buckets(cfg, train_cfg),
                      **chance_level(train_cfg.select_metric)).fit(resume=True)
    return {"best_epoch": summary.get("best_epoch"), "best_dev": summary.get("best_metrics"), **verdict(summary)}


def train(cfg: dict, split: Split, ctx: TaskContext) -> None:
    members = []
    for m in cfg["members"]:
        entry = {"name": m["name"], "spec": m}
        if m.get("backbone"):
            entry.update(_train_member(cfg, m, split, ctx, ctx.expdir / m["name"]))
            entry["weights"] = f"{m['name']}/best.safetensors"
            entry["sha256"] = sha256_file(ctx.expdir / entry["weights"])
        members.append(entry)
    info = {"task": "teacher", "outputs": list(AVD_OUTPUTS), "sample_rate": ctx.sample_rate, "members": members,
            "data": cfg.get("data") or {}}
    info["collapsed"] = bool(collapsed_members(info))  # one member that learned nothing spoils the ensemble mean
    write_text_atomic(ctx.expdir / "teacher.yaml", yaml.safe_dump(info, sort_keys=False))


def collapsed_members(info: dict) -> list[str]:
    """``name (reason)`` of every trained member of a teacher.yaml whose training did not learn."""
    return [f"{e['name']} ({e.get('collapse_reason')})" for e in info["members"] if e.get("collapsed")]


def teacher_info(expdir: str | Path) -> dict:
    """The teacher.yaml of an experiment dir, without loading any weights."""
    path = Path(expdir) / "teacher.yaml"
    if not path.exists():
        raise FileNotFoundError(f"{path}: no teacher here (run stage 7 with the teacher config first)")
    return yaml.safe_load(path.read_text())


def teacher_digest(expdir: str | Path, info: dict | None = None) -> str:
    """Names the teacher's exact weights (trained members' sha256, released names + revisions), without loading."""
    info = info or teacher_info(expdir)
    return hash_obj([(e["name"], e.get("sha256"), e["spec"].get("pretrained"), e["spec"].get("revision"))
                     for e in info["members"]])


def load_teacher(expdir: str | Path) -> tuple[EnsembleTeacher, dict]:
    """The trained (or released) ensemble of an experiment dir and a digest naming its exact weights."""
    expdir = Path(expdir)
    info = teacher_info(expdir)
    models = []
    for e in info["members"]:
        model = build_member(e["spec"])
        if e.get("weights"):
            load_weights(model, expdir / e["weights"])
        models.append(model)
    info["digest"] = teacher_digest(expdir, info)
    return EnsembleTeacher(models).eval(), info


def evaluate(cfg: dict, split: Split, ctx: TaskContext) -> list[Path]:
    teacher, info = load_teacher(ctx.expdir)
    train_cfg = TrainConfig.from_dict(dict(cfg.get("train") or {}))
    teacher = place(teacher, train_cfg.device)
    written = []
    for test in split.tests:
        ds = _dataset(cfg, ctx, test, train=False)
        utts, out = predict(teacher, ds, batch_size=(cfg.get("eval") or {}).get("batch_size", 16), amp=train_cfg.amp)
        gold = scaled_gold(cfg, np.array([ds.datadir.utt2avd[u] for u in utts]))
        metrics = regression_metrics(out, gold, list(AVD_OUTPUTS))
        n_boot = (cfg.get("eval") or {}).get("bootstrap", 1000)
        if n_boot:
            metrics["ccc_mean_ci"], metrics["ci_method"] = interval(
                gold, out, "ccc_mean", [ds.datadir.utt2spk[u] for u in utts], (cfg.get("eval") or {}).get("ci_unit", "speaker"),
                n_boot)
        metrics["params"] = sum(p.numel() for p in teacher.parameters())
        outdir = ctx.expdir / "eval" / test
        write_text_atomic(outdir / "predictions.txt",
                          "".join(f"{u} {' '.join(f'{v:.5f}' for v in row)}\n" for u, row in zip(utts, out)))
        path = outdir / "results.json"
        write_result(path, stage=ctx.stage, name=ctx.name, task="regression", protocol=split.record(test, ctx.data),
                     metrics=metrics, extra={"fold": split.fold, "role": "teacher", "model_dir": str(ctx.expdir),
                                             "members": [m["name"] for m in info["members"]],
                                             "collapsed": bool(info.get("collapsed"))})
        log.info("%s %s -> %s: ccc %s", ctx.name, split.tag, test, {k: v if v is None else round(v, 4) for k, v in metrics["ccc"].items()})
        written.append(path)
    return written
