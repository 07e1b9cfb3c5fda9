"""Zoo A/D/V regressor: a Dawn teacher on a zoo speech encoder, fine-tuned on the pool's A/V/D.

Stands in for the released ``audeering/wav2vec2-large-robust-12-ft-emotion-msp-dim``
(Dawn) in real recipes run offline (``./run.sh --zoo ../mini_emo/zoo``): their
teacher configs name it under ``pretrained:``, which :func:`sertk.models.dawn.load_released`
loads from a checkpoint dir (``config.json`` whose ``model_type`` picks the
backbone, ``model.safetensors`` in the release's key layout). This trainer
writes exactly that, so ``load_released(zoo/<name>)`` loads it unchanged, with
the release's outputs: (arousal, dominance, valence), on the 0-1 scale (the
pool's utt2avd is on 0-1, the scale the release was trained to).

Training is stage 7's own teacher member (sertk.tasks.teacher), nothing
re-implemented: the Dawn head (mean pooling, Dropout-Linear-tanh-Dropout-Linear)
on ``backbone.init``'s encoder (a zoo model built first: ``requires``), the CCC
loss in the head's native A/D/V order, length-bucketed batches of random
``data.train_crop`` windows, and the epoch chosen by dev CCC on ``data.dev_speakers``
pool speakers held out. The pool's train and dev halves are written as data dirs
under the work dir for it. After saving, the checkpoint is loaded back with
``load_released`` and must reproduce the trained model's outputs; the dev
figures in the card are the loaded model's.

Entry keys: ``backbone: {init}``, ``dropout``, ``freeze_feature_encoder``,
``data: {dev_speakers, max_duration, train_crop, buckets}``, ``train`` (the trainer's).
A Whisper backbone runs with the ``clip`` window, the one ``load_released`` builds.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from sertk.common.protocol import Split
from sertk.models.dawn import AVD_OUTPUTS, DAWN_OUTPUTS, DawnRegressor, EnsembleTeacher, load_released
from sertk.tasks import CROP_KEYS, TaskContext, audio_crop, reject_unknown
from sertk.train.trainer import TrainConfig, load_weights
from sertk.zoo.common import count_params
from sertk.zoo.pool import Pool

log = logging.getLogger(__name__)
DATA_KEYS = CROP_KEYS | {"dev_speakers", "buckets"}
MEMBER = "dawn"          # the member's dir under the work dir (checkpoints, best.safetensors)
ROUND_TRIP_TOL = 1e-4    # largest output difference allowed between the trained and the reloaded model


def check(entry: dict, where: str) -> None:
    reject_unknown(entry, {"trainer", "stands_in_for", "description", "backbone", "dropout", "freeze_feature_encoder",
                           "data", "train"}, where)
    backbone = entry.get("backbone") or {}
    reject_unknown(backbone, {"init"}, f"{where}: backbone")
    if not backbone.get("init"):
        raise ValueError(f"{where}: backbone.init must name the zoo speech encoder it starts from (whisper_tiny_en)")
    data = entry.get("data") or {}
    reject_unknown(data, DATA_KEYS, f"{where}: data")
    audio_crop(data, True, f"{where}: data")
    if int(data.get("dev_speakers", 4)) < 1:
        raise ValueError(f"{where}: data.dev_speakers must be >= 1 (the best epoch is chosen on them)")
    if not isinstance(entry.get("freeze_feature_encoder", True), bool):
        raise ValueError(f"{where}: freeze_feature_encoder must be true or false")
    TrainConfig.from_dict(dict(entry.get("train") or {}))


def requires(entry: dict) -> list[str]:
    """Zoo models built before this one: the speech encoder its backbone starts from."""
    return [entry["backbone"]["init"]]


def shrink(entry: dict) -> None:
    """Smoke size (sertk.zoo.common.shrink_zoo_config): one dev speaker, short crops; the backbone stays real."""
    entry.setdefault("data", {}).update(dev_speakers=1, max_duration=2.0, train_crop=1.0)


def _member(entry: dict, backbone_dir: Path) -> dict:
    """The stage-7 teacher member this entry trains (sertk.tasks.teacher's ``members:`` item)."""
    return {"name": MEMBER, "backbone": {"name_or_path": str(backbone_dir)}, "dropout": entry.get("dropout"),
            "freeze_feature_encoder": entry.get("freeze_feature_encoder", True)}


def _sample_rate(model: DawnRegressor) -> int:
    front = getattr(model.wav2vec2, "front", None)  # Whisper: its feature extractor's rate
    return int(front.sampling_rate) if front is not None else 16000


def save_released(model: DawnRegressor, outdir: Path) -> dict:
    """Write ``config.json`` (the backbone's config; its ``model_type`` picks the architecture) and
    ``model.safetensors`` (every weight, the release's key layout), what :func:`load_released` reads."""
    cfg = model.wav2vec2.config.to_dict()
    cfg.pop("_name_or_path", None)  # where the backbone was read from (a path on this machine)
    cfg["architectures"] = ["DawnRegressor"]
    (outdir / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    save_file(state, str(outdir / "model.safetensors"), metadata={"format": "pt"})
    return cfg


@torch.no_grad()
def _outputs(model: DawnRegressor, dataset) -> tuple[list[str], np.ndarray]:
    """A/V/D outputs (sertk order) of the model as the teacher task runs it (an ensemble of one)."""
    from sertk.train.inference import predict

    return predict(EnsembleTeacher([model]).eval(), dataset, batch_size=16, amp=False)


def train(name: str, entry: dict, pool: Pool, workdir: Path, outdir: Path, zoo_dir: Path | None = None) -> dict:
    from sertk.data.dataset import AudioDataset
    from sertk.eval.metrics import regression_metrics
    from sertk.tasks.teacher import _train_member, build_member

    data = dict(entry.get("data") or {})
    init = entry["backbone"]["init"]
    backbone_dir = Path(zoo_dir or outdir.parent) / init
    if not (backbone_dir / "config.json").is_file():
        raise FileNotFoundError(f"{backbone_dir}: zoo/{name} starts from zoo/{init}, which is not built")
    member = _member(entry, backbone_dir)
    model = build_member(member)
    sr = _sample_rate(model)

    # the pool's train/dev speakers as data dirs: the teacher task reads data dirs
    train_utts, dev_utts = pool.split(int(data.get("dev_speakers", 4)))
    root = workdir / "data"
    pool.datadir.subset(train_utts).write(root / "train")
    pool.datadir.subset(dev_utts).write(root / "dev")
    split = Split(corpus="pretrain_pool", protocol="pool", scheme="speakers", train="train", dev="dev", tests=[],
                  label_map=None)
    ctx = TaskContext(data=root, dump=workdir / "dump", expdir=workdir, name=name, stage=0, sample_rate=sr)
    cfg = {"data": {k: v for k, v in data.items() if k in CROP_KEYS | {"buckets"}},
           "train": dict(entry.get("train") or {})}
    result = _train_member(cfg, member, split, ctx, workdir / MEMBER)
    if result.get("collapsed"):
        log.warning("zoo/%s: training did not learn (%s); distillation will refuse it as a teacher",
                    name, result.get("collapse_reason"))
    load_weights(model, workdir / MEMBER / "best.safetensors")
    model = model.cpu().eval()
    config = save_released(model, outdir)

    # loaded back as real recipes load the release: the same outputs, on the pool's dev speakers
    dev_set = AudioDataset(root / "dev", sr, targets=("avd",), **audio_crop(data, False))
    utts, trained = _outputs(model, dev_set)
    loaded = load_released(outdir)
    utts2, out = _outputs(loaded, dev_set)
    diff = float(np.abs(out - trained).max()) if len(out) else 0.0
    if utts2 != utts or not diff <= ROUND_TRIP_TOL:
        raise RuntimeError(f"{outdir}: load_released does not reproduce the trained model (largest output "
                           f"difference {diff:.3g}); the saved checkpoint is not what was trained")
    gold = np.array([dev_set.datadir.utt2avd[u] for u in utts])
    r = regression_metrics(out, gold, list(AVD_OUTPUTS))
    dev = {"ccc_mean": _r(r["ccc_mean"]), **{f"ccc_{k}": _r(v) for k, v in r["ccc"].items()},
           **{f"pearson_{k}": _r(v) for k, v in r["pearson"].items()},
           "output_range": {k: [_r(float(out[:, j].min())), _r(float(out[:, j].max()))]
                            for j, k in enumerate(AVD_OUTPUTS)},
           "utterances": len(utts), "round_trip_max_diff": diff}
    tcfg = TrainConfig.from_dict(cfg["train"])
    frozen = "input convolutions frozen" if member["freeze_feature_encoder"] else "all of it trained"
    return {"class": type(model).__name__, "params": count_params(model),
            "loader": "sertk.models.dawn.load_released", "backbone": f"zoo/{init}",
            "model_type": config.get("model_type"), "outputs": list(DAWN_OUTPUTS), "output_scale": "0-1",
            "objective": f"CCC loss on the pool's A/V/D (0-1 scale), Dawn head (mean pooling, Dropout-Linear-tanh-"
                         f"Dropout-Linear) on zoo/{init}'s encoder, fine-tuned ({frozen})",
            "training": f"{tcfg.epochs} epochs (best {result.get('best_epoch')} by dev CCC), batch "
                        f"{tcfg.batch_size}, {tcfg.optimizer} lr {tcfg.lr:g} {tcfg.scheduler}, {_crops(data)}; "
                        f"{len(dev_utts)} utterances of {int(data.get('dev_speakers', 4))} pool speakers held out",
            "collapsed": bool(result.get("collapsed")), "collapse_reason": result.get("collapse_reason"),
            "dev": dev}


def _crops(data: dict) -> str:
    """The training and dev audio windows, as the teacher task's data section gives them."""
    crop = audio_crop(data, True)
    train = (f"{'random ' if crop['random_crop'] else 'centre '}{crop['max_duration']:g} s crops"
             if crop["max_duration"] else "whole clips")
    dev = f"dev clips <= {data['max_duration']:g} s" if data.get("max_duration") else "whole dev clips"
    return f"{train}, {dev}"


def _r(v):
    return None if v is None else round(float(v), 4)


def readme(meta: dict) -> str:
    """The card: a stand-in trained here on synthetic speech, not the released model."""
    from sertk.zoo import offline_note, primary_name

    pool, dev = meta["pool"], meta.get("dev") or {}
    ccc = " / ".join(f"{dev.get(f'ccc_{k}')}" for k in AVD_OUTPUTS)
    lines = [
        f"# zoo/{meta['name']}", "",
        f"A **stand-in** for `{primary_name(meta)}` (the released \"Dawn\" A/D/V regressor), **not the released "
        f"model**: the Dawn architecture on `{meta['backbone']}`'s encoder, fine-tuned by stage 0 of "
        f"`egs/mini_emo/run.sh` on the synthetic speech of mini_emo's pre-training pool. Real recipes run offline "
        f"(`./run.sh --zoo ../mini_emo/zoo`) load it where their teacher config names the release "
        f"(`pretrained: {primary_name(meta)}`), with the same loader (`{meta['loader']}`), so stages 7-8 "
        f"(teacher and distillation) run end to end; their figures then say whether the pipeline works, not "
        f"what the released teacher would give on real speech." + offline_note(meta), "",
        meta.get("description", "").strip(), "",
        "| | |", "|---|---|",
        f"| class | `{meta.get('class')}` (`{meta['loader']}`; `config.json` model_type `{meta.get('model_type')}`) |",
        f"| parameters | {meta.get('params', 0):,} |",
        f"| outputs | {', '.join(meta['outputs'])} (the release's order), {meta['output_scale']} scale "
        f"(the release's; `DawnRegressor.avd` reorders to arousal, valence, dominance) |",
        f"| objective | {meta.get('objective')} |",
        f"| pre-training pool | {pool['utterances']} utterances, {pool['speakers']} synthetic speakers "
        f"({pool['minutes']:.1f} min; domains {', '.join(pool['domains'])}), none of them in any mini_emo "
        f"train/dev/test set |",
        f"| training | {meta.get('training')} |",
        f"| training time | {meta['train_seconds']:.0f} s |",
        f"| pool-dev CCC A / V / D (mean) | {ccc} ({dev.get('ccc_mean')}), {dev.get('utterances')} utterances, "
        f"from the checkpoint loaded back with `load_released` |",
        *([f"| did not learn | {meta.get('collapse_reason')} |"] if meta.get("collapsed") else []),
        "",
        "Files: `config.json` (the backbone's config) and `model.safetensors` (every weight, the release's key "
        "layout: `wav2vec2.*`, `classifier.dense`, `classifier.out_proj`); `zoo.json` holds this card as data. "
        "Rebuilt by stage 0 whenever its zoo config entry, the pool, the training code or its backbone change.", ""]
    return "\n".join(lines)
