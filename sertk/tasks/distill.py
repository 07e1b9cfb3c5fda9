"""Stage 7/8 students distilled from the teacher (task: distill): Wav2Small or a MobileNet.

Stage 7 (``train``) labels the student's training audio with the teacher named
by ``teacher:`` (an experiment dir; the split's subdir is appended), clean plus
``distill.copies`` augmented copies per utterance, cached under
``<dump>/teacher_labels/`` by audio content (shared by every set and fold; students
running at the same time split the labelling, see :func:`shared_labels`); the student
learns these unclipped outputs only (no human labels), selecting its checkpoint by CCC
against the teacher on the dev set. ``data.train_crop`` trains on a random window of
each item per epoch (its target stays the whole item's label); ``train.amp: bf16``
trains in mixed precision, in float32 on a CPU without bf16 arithmetic.
``distill.train_sets`` lists the data dirs to label (default: the protocol's
train set; any unlabelled dirs with a wav.scp may be added). A teacher whose
training did not learn (``collapsed`` in its teacher.yaml) is refused unless
``distill.allow_collapsed_teacher: true``.

Stage 8 (``evaluate``) exports the student to ONNX float32 and int8, checks
parity, profiles it (parameters, MACs per second, int8 size, RTF and peak RAM on
one onnxruntime thread) and writes, per test set, CCC against human labels
(the int8 model, as deployed) with the float figures (the float ONNX file) and the
teacher's in ``extra``; float and int8 models see identical unpadded inputs, and the
teacher's outputs on each test set come from the same label cache (computed once for
all students).
"""
from __future__ import annotations

import contextlib
import fcntl
import logging
from pathlib import Path

import numpy as np
import torch
import yaml

from sertk.common.fileio import write_json_atomic, write_text_atomic
from sertk.common.protocol import Split
from sertk.data.dataset import AudioDataset, collate_audio
from sertk.eval.metrics import interval, regression_metrics
from sertk.eval.results import write_result
from sertk.export.onnx_export import export_onnx, parity, quantize_int8, run_onnx, session, size_kb
from sertk.export.profile import count_params, macs_per_second, onnx_runtime_profile
from sertk.models.dawn import AVD_OUTPUTS
from sertk.models.mobilenet_student import ARCHS, MobileNetStudent
from sertk.models.wav2small import Wav2Small
from sertk.tasks import EVAL_CI_KEYS, TaskContext, check_ci_unit, reject_unknown
from sertk.tasks.teacher import collapsed_members, gold_range, load_teacher, scaled_gold, teacher_digest, teacher_info
from sertk.train.distill import LOSSES, AugmentConfig, DistillDataset, cache_dir, distill_loss, label_with_teacher
from sertk.train.inference import place, resolve_device, run_model
from sertk.train.trainer import (Trainer, TrainConfig, bucketed_batches, chance_level, constant_outputs, default_batches,
                                 load_weights, verdict)

log = logging.getLogger(__name__)
NAMES = list(AVD_OUTPUTS)
PARITY_TOL = 1e-4
# the teacher labels in its own precision, whatever the student's train.amp: labels are cached per
# teacher and augmentation, not per student, so every student must get the same ones
TEACHER_AMP = "auto"


def build_student(spec: dict) -> torch.nn.Module:
    """``{type: wav2small, channels: 13|29|"paper"|"released"}`` or ``{type: mobilenet, arch: ...}``."""
    spec = dict(spec)
    kind = spec.pop("type", None)
    if kind == "wav2small":
        return Wav2Small(**spec)
    if kind == "mobilenet":
        return MobileNetStudent(**spec)
    raise ValueError(f"student.type must be 'wav2small' or 'mobilenet' ({', '.join(ARCHS)}), got {kind!r}")


def check_config(cfg: dict, where: str) -> None:
    reject_unknown(cfg, {"task", "teacher", "student", "distill", "data", "train", "eval", "export", "licence"}, where)
    if not cfg.get("teacher"):
        raise ValueError(f"{where}: 'teacher' must name the teacher experiment dir (e.g. exp/teacher)")
    try:
        build_student(cfg.get("student") or {})
    except TypeError as e:
        raise ValueError(f"{where}: student: {e}") from e
    d = cfg.get("distill") or {}
    reject_unknown(d, {"loss", "mse_weight", "copies", "train_sets", "augment", "allow_collapsed_teacher"},
                   f"{where}: distill")
    if not isinstance(d.get("allow_collapsed_teacher", False), bool):
        raise ValueError(f"{where}: distill.allow_collapsed_teacher must be true or false")
    if d.get("loss", "ccc") not in LOSSES:
        raise ValueError(f"{where}: distill.loss must be one of {LOSSES}")
    AugmentConfig.from_dict(d.get("augment"))
    reject_unknown(cfg.get("data") or {}, {"max_duration", "buckets", "train_crop"}, f"{where}: data")
    crop = (cfg.get("data") or {}).get("train_crop")
    if crop is not None and (isinstance(crop, bool) or not isinstance(crop, (int, float)) or crop <= 0):
        raise ValueError(f"{where}: data.train_crop must be a positive number of seconds or null, got {crop!r}")
    reject_unknown(cfg.get("eval") or {}, {"batch_size", "profile_seconds", "gold_range"} | EVAL_CI_KEYS,
                   f"{where}: eval")
    check_ci_unit(cfg.get("eval") or {}, where)
    gold_range(cfg, where)
    reject_unknown(cfg.get("export") or {}, {"opset"}, f"{where}: export")
    TrainConfig.from_dict(dict(cfg.get("train") or {}))


def _teacher_dir(cfg: dict, split: Split) -> Path:
    return Path(cfg["teacher"]) / split.tag


def check_teacher(cfg: dict, teacher_dir: Path) -> None:
    """Refuse a teacher whose training did not learn: its students would learn nothing either."""
    bad = collapsed_members(teacher_info(teacher_dir))
    if not bad:
        return
    if (cfg.get("distill") or {}).get("allow_collapsed_teacher"):
        log.warning("%s: distilling from a teacher that did not learn (%s), as distill.allow_collapsed_teacher "
                    "asks", teacher_dir, "; ".join(bad))
        return
    raise RuntimeError(f"{teacher_dir}: the teacher did not learn: {'; '.join(bad)}; students distilled from it "
                       f"would learn nothing. Retrain it (another seed, lr or more epochs) or set "
                       f"distill.allow_collapsed_teacher: true")


def _batches(cfg: dict, train_cfg: TrainConfig):
    """``data.buckets`` length-bucketed batches, else shuffled ones; never a batch of one."""
    buckets = (cfg.get("data") or {}).get("buckets")
    if buckets:
        return bucketed_batches(train_cfg.batch_size, train_cfg.seed, int(buckets), min_items=2)
    return lambda ds, e, r, ws: _no_singletons(ds, e, r, ws, cfg=train_cfg)


def _no_singletons(dataset, epoch, rank, world_size, *, cfg: TrainConfig):
    """Shuffled batches without a trailing batch of one (the CCC loss needs >= 2 items)."""
    b = default_batches(len(dataset), cfg.batch_size, cfg.seed, epoch, rank, world_size)
    if len(b) > 1 and len(b[-1]) < 2:
        b[-2].extend(b.pop())
    return b


def native_bf16_cpu() -> bool:
    """Whether this CPU computes in bf16 (AVX512-BF16 or AMX); elsewhere torch emulates it, slower than float32."""
    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except AttributeError:  # a torch without these probes: assume emulation
        return False


def native_precision(train_cfg: TrainConfig) -> TrainConfig:
    """``train.amp: bf16`` on a CPU without bf16 arithmetic trains in float32 instead (and says so):
    emulated bf16 is slower than float32 and no more accurate."""
    if train_cfg.amp == "bf16" and resolve_device(train_cfg.device).type == "cpu" and not native_bf16_cpu():
        log.warning("train.amp=bf16: this CPU has no bf16 arithmetic (AVX512-BF16/AMX); training in float32")
        train_cfg.amp = False
    return train_cfg


def train(cfg: dict, split: Split, ctx: TaskContext) -> None:
    model = build_student(cfg["student"])  # first: its initial weights depend on the seed alone, not on the teacher
    check_teacher(cfg, _teacher_dir(cfg, split))
    tcfg = dict(cfg.get("train") or {})
    tcfg.setdefault("select_metric", "ccc_teacher_mean")
    tcfg.setdefault("select_mode", "max")
    train_cfg = native_precision(TrainConfig.from_dict(tcfg))
    d = cfg.get("distill") or {}
    aug = AugmentConfig.from_dict(d.get("augment"))
    max_dur = (cfg.get("data") or {}).get("max_duration")
    seeds = list(range(int(d.get("copies", 1)) + 1))
    teacher = _TeacherOnDemand(_teacher_dir(cfg, split), train_cfg.device)
    cache = cache_dir(ctx.dump / "teacher_labels", teacher.info["digest"], aug, ctx.sample_rate, max_dur)
    sets = d.get("train_sets") or [split.train]
    dev = split.dev or split.train
    got = shared_labels(_labeller(teacher, cache, aug, ctx.sample_rate, max_dur), cache,
                        [(ctx.datadir(s), k) for s in sets for k in seeds] + [(ctx.datadir(dev), 0)])
    labels = {key: v for s in sets for k in seeds for key, v in got[(ctx.datadir(s), k)].items()}
    dev_labels = got[(ctx.datadir(dev), 0)]
    train_set = DistillDataset([ctx.datadir(s) for s in sets], labels, seeds, aug, ctx.sample_rate, max_dur,
                               crop=(cfg.get("data") or {}).get("train_crop"), seed=train_cfg.seed)
    dev_set = DistillDataset([ctx.datadir(dev)], dev_labels, [0], aug, ctx.sample_rate, max_dur)
    teacher.release()
    kind, w = d.get("loss", "ccc"), float(d.get("mse_weight", 1.0))

    def compute_loss(net, batch):
        return distill_loss(net(batch["wav"], batch["lengths"]), batch["avd"], kind, w)

    def evaluate(net, loader):
        utts, out = run_model(net, loader, amp=train_cfg.amp)
        target = np.stack([dev_labels[(u.rsplit("#s", 1)[0], 0)] for u in utts])
        r = regression_metrics(out, target, NAMES)
        return {"ccc_teacher_mean": r["ccc_mean"], **{f"ccc_teacher_{k}": v for k, v in r["ccc"].items()},
                "constant_outputs": constant_outputs(out)}

    summary = Trainer(model, train_set, dev_set, collate_audio, compute_loss, evaluate, train_cfg, ctx.expdir,
                      batch_sampler_fn=_batches(cfg, train_cfg),
                      **chance_level(train_cfg.select_metric)).fit(resume=True)
    info = {"task": "distill", "student": cfg["student"], "outputs": NAMES, "sample_rate": ctx.sample_rate,
            "teacher": str(_teacher_dir(cfg, split)), "teacher_digest": teacher.info["digest"], "loss": kind,
            "train_sets": sets, "copies": len(seeds) - 1, "best_epoch": summary.get("best_epoch"),
            "best_dev": summary.get("best_metrics"), **verdict(summary)}
    write_text_atomic(ctx.expdir / "model.yaml", yaml.safe_dump(info, sort_keys=False))


def _labeller(teacher, cache: Path, aug: AugmentConfig, sample_rate: int, max_duration: float | None):
    """(data dir, seed) -> that set's teacher labels, from ``cache`` or computed (see label_with_teacher)."""
    return lambda datadir, seed: label_with_teacher(teacher, datadir, cache, [seed], aug, sample_rate, max_duration,
                                                    amp=TEACHER_AMP)


def shared_labels(label, cache: Path, jobs: list[tuple[Path, int]]) -> dict[tuple[Path, int], dict]:
    """``label(datadir, seed)`` for every job, shared with the students that run at the same time.

    Stages 7 and 8 run two students at once on the same audio. Each first labels the tables (one per
    seed) that no other student is writing, then waits for the others and reads them from the cache:
    the two split the teacher's work instead of both doing all of it, and no table has two writers.
    """
    out, busy = {}, []
    for job in dict.fromkeys(jobs):
        with _table_lock(cache, job[1], block=False) as held:
            if held:
                out[job] = label(*job)
            else:
                busy.append(job)
    for job in busy:
        with _table_lock(cache, job[1], block=True):
            out[job] = label(*job)
    return out


@contextlib.contextmanager
def _table_lock(cache: Path, seed: int, block: bool):
    """Yields whether this process holds the lock on ``cache``'s seed-``seed`` labels (waiting for it if ``block``)."""
    Path(cache).mkdir(parents=True, exist_ok=True)
    with open(Path(cache) / f".seed{int(seed)}.lock", "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | (0 if block else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


class _TeacherOnDemand:
    """The teacher, loaded onto ``device`` the first time labels are missing (never when all are cached)."""

    def __init__(self, expdir: Path, device: str):
        self.expdir, self.device = Path(expdir), device
        self.info = {**teacher_info(self.expdir), "digest": teacher_digest(self.expdir)}
        self.model: torch.nn.Module | None = None

    def __call__(self) -> torch.nn.Module:
        if self.model is None:
            self.model = place(load_teacher(self.expdir)[0], self.device)
        return self.model

    def release(self) -> None:
        self.model = None


def load_student(expdir: Path) -> tuple[torch.nn.Module, dict]:
    info = yaml.safe_load((Path(expdir) / "model.yaml").read_text())
    model = build_student(info["student"])
    load_weights(model, Path(expdir) / "best.safetensors")
    return model.eval(), info


def _fmt_ccc(v: float | None) -> str:
    return "undefined" if v is None else f"{v:.3f}"


def _run_onnx_models(ds: AudioDataset, sessions: list) -> tuple[list[str], list[np.ndarray]]:
    """Each ONNX model's outputs on every utterance of ``ds``, one whole utterance at a time, as deployed."""
    utts, outs = [], [[] for _ in sessions]
    for i in range(len(ds)):
        item = ds[i]
        utts.append(item["utt"])
        wav = item["wav"].numpy()
        for out, sess in zip(outs, sessions):
            out.append(run_onnx(sess, wav))
    return utts, [np.stack(o) for o in outs]


def export_student(cfg: dict, model: torch.nn.Module, info: dict, outdir: Path, sample_rate: int) -> dict:
    """fp32 + int8 ONNX with metadata, parity on a few lengths, and the profile figures."""
    meta = {"output_names": ",".join(NAMES), "label_order": ",".join(NAMES), "sample_rate": sample_rate,
            "input": "wav: float32 [1, samples], mono, any amplitude (normalised inside)",
            "outputs": "avd: float32 [1, 3], unclipped teacher scale", "model": str(info["student"]),
            "teacher": info.get("teacher", ""), "licence": cfg.get("licence", "CC-BY-NC-SA-4.0"),
            "producer": "sertk"}
    opset = (cfg.get("export") or {}).get("opset", 17)
    fp32 = export_onnx(model, outdir / "model.onnx", meta, sample_rate, opset)
    int8 = quantize_int8(fp32, outdir / "model.int8.onnx")
    rng = np.random.default_rng(0)
    probes = [rng.standard_normal(n).astype(np.float32) * 0.1 for n in (sample_rate // 2, 3 * sample_rate + 123)]
    diff = parity(model, fp32, probes)
    if diff > PARITY_TOL:
        raise RuntimeError(f"{fp32}: ONNX float32 differs from torch by {diff:.2e} (> {PARITY_TOL})")
    prof = onnx_runtime_profile(int8, seconds=(cfg.get("eval") or {}).get("profile_seconds", 4.0),
                                sample_rate=sample_rate)
    return {"params": count_params(model), "macs_per_s": macs_per_second(model, sample_rate),
            "onnx_fp32_kb": size_kb(fp32), "onnx_int8_kb": size_kb(int8), "parity_fp32_max_abs": diff,
            "rtf_1thread": prof["rtf"], "latency_ms_4s": prof["latency_ms"], "peak_ram_mb": prof["peak_ram_mb"],
            "model_ram_mb": prof["model_ram_mb"], "onnx": str(fp32), "onnx_int8": str(int8)}


def evaluate(cfg: dict, split: Split, ctx: TaskContext) -> list[Path]:
    model, info = load_student(ctx.expdir)
    profile = export_student(cfg, model, info, ctx.expdir / "onnx", ctx.sample_rate)
    write_json_atomic(ctx.expdir / "onnx" / "profile.json", profile)
    # the float figures come from the float ONNX file (parity-checked against torch above): it runs
    # one utterance at a time several times faster than eager torch, and is what ships
    sessions = [session(profile["onnx"]), session(profile["onnx_int8"])]
    data = {test: AudioDataset(ctx.datadir(test), ctx.sample_rate, targets=("avd",)) for test in split.tests}
    runs = {test: _run_onnx_models(ds, sessions) for test, ds in data.items()}  # identical, unpadded inputs
    # then the teacher's outputs on the full test audio, once per test set for every student and protocol
    # (a student evaluated alongside may be computing them)
    teacher = _TeacherOnDemand(Path(info["teacher"]), TrainConfig.from_dict(dict(cfg.get("train") or {})).device)
    tcache = cache_dir(ctx.dump / "teacher_labels", teacher.info["digest"], AugmentConfig(), ctx.sample_rate, None)
    touts = shared_labels(_labeller(teacher, tcache, AugmentConfig(), ctx.sample_rate, None), tcache,
                          [(ctx.datadir(test), 0) for test in split.tests])
    written = []
    for test, ds in data.items():
        utts, (fp32, int8) = runs[test]
        tout = np.stack([touts[(ctx.datadir(test), 0)][(u, 0)] for u in utts])
        gold = scaled_gold(cfg, np.array([ds.datadir.utt2avd[u] for u in utts]))
        metrics, extra = _test_figures(cfg, int8, fp32, tout, gold, profile, [ds.datadir.utt2spk[u] for u in utts])
        extra = {"fold": split.fold, "role": "student", "model_dir": str(ctx.expdir), "student": info["student"],
                 "teacher": info["teacher"], "scored_model": "onnx int8", "profile": profile, **extra,
                 "collapsed": bool(info.get("collapsed"))}
        written.append(_write_test_result(ctx, split, test, utts, int8, metrics, extra))
        _write_float_result(ctx, split, test, utts, fp32, gold, extra)
    return written


FLOAT_RESULT = Path("fp32") / "float.json"  # under eval/<test>/: outside the report's results.json tree


def _avd_lines(utts: list[str], out: np.ndarray) -> str:
    return "".join(f"{u} {' '.join(f'{v:.5f}' for v in row)}\n" for u, row in zip(utts, out))


def _write_float_result(ctx: TaskContext, split: Split, test: str, utts: list[str], fp32: np.ndarray,
                        gold: np.ndarray, extra: dict) -> Path:
    """The float ONNX model's predictions and CCC beside the int8 result, so that ``sertk compare`` can test
    int8 against float on the same utterances (the report's tables show the int8 model, as deployed)."""
    path = ctx.expdir / "eval" / test / FLOAT_RESULT
    write_text_atomic(path.parent / "predictions.txt", _avd_lines(utts, fp32))
    write_result(path, stage=ctx.stage, name=f"{ctx.name}_fp32", task="regression",
                 protocol=split.record(test, ctx.data), metrics=regression_metrics(fp32, gold, NAMES),
                 extra={k: v for k, v in extra.items() if k not in ("profile", "fp32_ccc", "fp32_ccc_teacher")}
                 | {"scored_model": "onnx fp32"})
    return path


def _write_test_result(ctx: TaskContext, split: Split, test: str, utts: list[str], int8: np.ndarray, metrics: dict,
                       extra: dict) -> Path:
    outdir = ctx.expdir / "eval" / test
    write_text_atomic(outdir / "predictions.txt", _avd_lines(utts, int8))
    path = outdir / "results.json"
    write_result(path, stage=ctx.stage, name=ctx.name, task="regression", protocol=split.record(test, ctx.data),
                 metrics=metrics, extra=extra)
    log.info("%s %s -> %s: ccc(human) %s ccc(teacher) %s int8 %.0f KB", ctx.name, split.tag, test,
             _fmt_ccc(metrics["ccc_mean"]), _fmt_ccc(metrics["ccc_teacher_mean"]), metrics["onnx_int8_kb"])
    return path


def _test_figures(cfg: dict, int8: np.ndarray, fp32: np.ndarray, tout: np.ndarray, gold: np.ndarray,
                  profile: dict, speakers: list[str]) -> tuple[dict, dict]:
    """Metrics (the int8 model, as deployed, vs human labels and vs the teacher) and the float/teacher extras."""
    metrics = regression_metrics(int8, gold, NAMES)
    n_boot = (cfg.get("eval") or {}).get("bootstrap", 1000)
    if n_boot:
        metrics["ccc_mean_ci"], metrics["ci_method"] = interval(
            gold, int8, "ccc_mean", speakers, (cfg.get("eval") or {}).get("ci_unit", "speaker"), n_boot)
    vs_teacher = regression_metrics(int8, tout, NAMES)
    fp32_vs_teacher = regression_metrics(fp32, tout, NAMES)
    metrics["ccc_teacher"] = vs_teacher["ccc"]
    metrics["ccc_teacher_mean"] = vs_teacher["ccc_mean"]
    a, b = fp32_vs_teacher["ccc_mean"], vs_teacher["ccc_mean"]
    metrics["int8_ccc_loss"] = None if a is None or b is None else a - b  # undefined CCC: no loss figure
    for k in ("params", "macs_per_s", "onnx_int8_kb", "rtf_1thread", "peak_ram_mb"):
        metrics[k] = profile[k]
    extra = {"fp32_ccc": regression_metrics(fp32, gold, NAMES)["ccc"], "fp32_ccc_teacher": fp32_vs_teacher["ccc"],
             "teacher_ccc": regression_metrics(tout, gold, NAMES)["ccc"]}
    return metrics, extra
