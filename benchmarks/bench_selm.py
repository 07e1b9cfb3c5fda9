"""SELM speed: training epoch with cached encoder features vs running the frozen
encoder on the fly, and batched class scoring vs per-utterance ``generate()``.

Builds a synthetic data dir (tones + noise, 4 classes) in a temporary folder and
the mini_emo-sized encoder and GPT-2, so it runs offline on a laptop CPU::

    python benchmarks/bench_selm.py --utts 64 --duration 2.0
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from sertk.common.protocol import Split
from sertk.data.audio import write_audio
from sertk.data.datadir import DataDir
from sertk.tasks import TaskContext
from sertk.tasks import selm as task
from sertk.train.trainer import Trainer

CLASSES = ["neutral", "happy", "angry", "sad"]


def make_data(root: Path, n: int, duration: float, sr: int = 16000) -> None:
    rng = np.random.default_rng(0)
    tables = {"wav.scp": {}, "utt2spk": {}, "utt2emo": {}}
    for i in range(n):
        cls = CLASSES[i % 4]
        utt = f"spk{i % 4}_{i:04d}"
        t = np.arange(int(duration * sr)) / sr
        wav = (0.3 * np.sin(2 * np.pi * (100 + 150 * (i % 4)) * t) + 0.05 * rng.standard_normal(t.size))
        path = root / "audio" / f"{utt}.wav"
        path.parent.mkdir(parents=True, exist_ok=True)
        write_audio(path, wav.astype(np.float32), sr)
        tables["wav.scp"][utt], tables["utt2spk"][utt], tables["utt2emo"][utt] = str(path), f"spk{i % 4}", cls
    DataDir(tables=tables).write(root / "data" / "train")
    (root / "labels.yaml").write_text(yaml.safe_dump({"name": "bench", "labels": CLASSES}))


# wav2vec2-base's architecture (95M parameters), randomly initialised: the real recipes' cost
BASE = {"type": "wav2vec2", "layer": 4, "config": {"hidden_size": 768, "num_hidden_layers": 12,
                                                    "num_attention_heads": 12, "intermediate_size": 3072}}


def config(recipe_conf: Path, encoder: str) -> dict:
    """mini_emo's SELM config with its encoder built locally (mini_emo classifier's or wav2vec2-base's shape)."""
    cfg = yaml.safe_load(recipe_conf.read_text())
    if encoder == "base":
        cfg["model"]["encoder"] = BASE
    else:
        enc = yaml.safe_load((recipe_conf.parent / "classifier.yaml").read_text())["model"]["encoder"]
        cfg["model"]["encoder"] = {"type": enc["type"], "config": enc["config"], "layer": 2}
    cfg["train"].update(progress=False, epochs=1, warmup_steps=0)
    cfg.pop("fewshot", None)
    return cfg


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--utts", type=int, default=64)
    p.add_argument("--duration", type=float, default=2.0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--encoder", choices=["mini", "base"], default="mini",
                   help="mini_emo's 2-layer encoder, or wav2vec2-base's architecture (layer 4)")
    p.add_argument("--conf", default=str(Path(__file__).resolve().parents[1] / "egs/mini_emo/conf/selm.yaml"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_data(root, args.utts, args.duration)
        split = Split(corpus="bench", protocol="p", scheme="bench", train="train", dev=None, tests=["train"],
                      label_map=str(root / "labels.yaml"))
        times = {}
        for cache in (True, False):
            cfg = config(Path(args.conf), args.encoder)
            cfg["data"]["cache"] = cache
            env = task._Env(cfg, split, TaskContext(root / "data", root / "dump", root / f"exp{cache}", "selm", 3))
            tok = task._make_tokenizer(cfg, CLASSES)
            views = task._views(cfg, CLASSES)
            t0 = time.perf_counter()
            ds = env.dataset("train", tok, views)
            t_cache = time.perf_counter() - t0
            torch.manual_seed(0)
            model = env.model(tok)
            tr = Trainer(model, ds, None, ds.collate, lambda m, b: m(**task.model_inputs(b)), None,
                         dict(cfg["train"]), root / f"exp{cache}")
            t0 = time.perf_counter()
            tr.fit(resume=False)
            times[cache] = time.perf_counter() - t0
            if cache:
                print(f"feature cache build ({args.utts} utts x {args.duration:.1f} s): {t_cache:.2f} s (once)")
                cached_model, cached_ds = model.eval(), ds
        print(f"encoder: {args.encoder}; epoch time ({len(ds)} examples = utts x views): cached {times[True]:.2f} s, "
              f"on the fly {times[False]:.2f} s, ratio {times[False] / times[True]:.1f}x")

        prompt = task.prompt_ids(cfg, tok)
        cat = views["categorical"]
        utts = cached_ds.utts
        feats = [cached_ds.source[u] for u in utts]
        with torch.no_grad():
            t0 = time.perf_counter()
            for s in range(0, len(utts), 32):
                chunk = feats[s:s + 32]
                n = torch.tensor([f.shape[0] for f in chunk])
                x = torch.zeros(len(chunk), int(n.max()), chunk[0].shape[1])
                for i, f in enumerate(chunk):
                    x[i, :n[i]] = f
                prefix = cached_model.audio_prefix(x, n)
                cached_model.decode_view(prefix, [prompt] * len(chunk), cat, tok)
            t_score = time.perf_counter() - t0
            m = min(len(utts), 32)
            t0 = time.perf_counter()
            head = prompt + tok.encode(cat.slots[0].header)
            for f in feats[:m]:
                prefix = cached_model.audio_prefix(f[None], torch.tensor([f.shape[0]]))
                cached_model.generate_text(prefix, head, tok, max_new_tokens=8)
            t_gen = time.perf_counter() - t0
        print(f"class scoring (batched, {len(cat.slots[0].values)} classes): {len(utts) / t_score:.1f} utts/s; "
              f"generate() per utterance: {m / t_gen:.1f} utts/s; ratio {(len(utts) / t_score) / (m / t_gen):.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
