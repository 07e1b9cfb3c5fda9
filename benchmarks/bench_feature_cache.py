"""Peak RAM of the frozen-encoder feature cache against the size of the set.

Builds a random-init local wav2vec2 encoder with wav2vec2-base's output width
(768 dims at 50 frames/s: about 0.55 GB of float32 features per hour of audio,
as the real encoders give) and synthetic data dirs of N and 10N utterances of
2-4 s. Each measurement runs in its own process on ``--threads`` CPU threads
and reports that process's peak RSS (``ru_maxrss``):

* caching: ``encoder_features`` computing the set into shards: on the CPU one
  utterance per encoder call, as the cache always computes there; on a GPU
  ``--batch-size`` utterances per call (a config's ``cache_batch_size``);
* reading: one pass over every utterance's features in shuffled order, padded
  into batches of 8 as a SELM training epoch reads them (the lazy mapping);
* all in RAM: the same pass after materialising every utterance in a dict,
  which the former single-file cache did; it shows what growth looks like.

The first two must not grow with the set size (within noise); caching buffers
at most one shard (``--shard-mb``, the library default is 128).

On the CPU, torch's oneDNN keeps a compiled kernel per input shape (up to
1024 shapes, ``ONEDNN_PRIMITIVE_CACHE_CAPACITY``): a larger set has more
distinct utterance lengths, so that runtime cache, not the feature cache, adds
some tens of MB. The children run with a capacity of ``--onednn-cache``
(16) to measure the feature cache alone; ``--onednn-cache 1024`` shows
torch's default. (The GPU, where real recipes cache, has no such cache.)

  python benchmarks/bench_feature_cache.py [--sizes 100 1000] [--shard-mb 16] [--onednn-cache 16] [--threads 1]
                                          [--device cpu | --device cuda --batch-size 8]
"""
from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from sertk.common.threads import thread_count

ENCODER = {"type": "wav2vec2", "layer": "last", "config": {
    "hidden_size": 768, "num_hidden_layers": 1, "num_attention_heads": 12, "intermediate_size": 1024,
    "conv_dim": [16] * 7, "num_conv_pos_embeddings": 16, "num_conv_pos_embedding_groups": 4,
    "feat_extract_norm": "layer", "do_stable_layer_norm": True, "mask_time_prob": 0.0}}


def make_data(root: Path, n: int, sr: int = 16000, seed: int = 0) -> tuple[Path, float]:
    """A data dir of ``n`` noise utterances of 2-4 s; (its path, minutes of audio)."""
    import soundfile as sf
    from sertk.data.datadir import DataDir

    rng = np.random.default_rng(seed)
    (root / "wav").mkdir(parents=True)
    t = {"wav.scp": {}, "utt2spk": {}}
    samples = 0
    for i in range(n):
        u = f"spk{i % 10}-{i:05d}"
        wav = (0.1 * rng.standard_normal(int(rng.uniform(2.0, 4.0) * sr))).astype(np.float32)
        sf.write(root / "wav" / f"{u}.wav", wav, sr)
        t["wav.scp"][u], t["utt2spk"][u] = str(root / "wav" / f"{u}.wav"), f"spk{i % 10}"
        samples += wav.size
    DataDir(tables=t).write(root / "data")
    return root / "data", samples / sr / 60


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def child(mode: str, data: str, root: str, args) -> dict:
    """One measurement in this process: peak RSS before and after the work, seconds taken."""
    import torch
    from sertk.common.threads import set_threads
    from sertk.data.dataset import AudioDataset
    from sertk.features.embedding_cache import encoder_features, frozen_encoder

    set_threads(args.threads)
    ds = AudioDataset(data, label_map=None, targets=())
    encoder, digest = frozen_encoder(ENCODER, seed=0)
    base = peak_mb()
    t0 = time.perf_counter()
    feats = encoder_features(root, encoder, ENCODER, digest, ds, "set", batch_size=args.batch_size,
                             device=args.device, shard_bytes=int(args.shard_mb * 2 ** 20))
    if mode in ("read", "in_ram"):
        if mode == "in_ram":
            feats = {u: feats[u] for u in feats}
        utts = list(feats)
        random.Random(0).shuffle(utts)
        total = 0.0
        for s in range(0, len(utts), 8):
            chunk = [feats[u] for u in utts[s:s + 8]]
            x = torch.zeros(len(chunk), max(len(f) for f in chunk), chunk[0].shape[1])
            for i, f in enumerate(chunk):
                x[i, :len(f)] = f
            total += float(x.sum())
    return {"base_mb": base, "peak_mb": peak_mb(), "seconds": time.perf_counter() - t0}


def run_child(mode: str, data: Path, root: Path, args) -> dict:
    cmd = [sys.executable, __file__, "--child", mode, "--data", str(data), "--root", str(root),
           "--shard-mb", str(args.shard_mb), "--device", args.device, "--batch-size", str(args.batch_size),
           "--threads", str(args.threads)]
    env = {**os.environ, "ONEDNN_PRIMITIVE_CACHE_CAPACITY": str(args.onednn_cache)}
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if res.returncode:
        raise SystemExit(f"{mode} over {data} failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[100, 1000])
    p.add_argument("--shard-mb", type=float, default=16.0)
    p.add_argument("--onednn-cache", type=int, default=16, help="oneDNN kernel shapes cached per process")
    p.add_argument("--device", default="cpu", help="where the encoder runs: cpu, cuda (RSS is host memory)")
    p.add_argument("--batch-size", type=int, default=1,
                   help="utterances per encoder call on a GPU (a config's cache_batch_size); the CPU computes one")
    p.add_argument("--threads", type=thread_count, default=1,
                   help="CPU threads of each measurement (a job's --threads)")
    p.add_argument("--child", choices=["cache", "read", "in_ram"], help=argparse.SUPPRESS)
    p.add_argument("--data", help=argparse.SUPPRESS)
    p.add_argument("--root", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.data, args.root, args)))
        return 0
    import torch
    from sertk.features.embedding_cache import encoder_batch

    batch = encoder_batch(args.batch_size, torch.device(args.device))
    print(f"encoder: random-init wav2vec2, 768 dims, 50 frames/s, on {args.device}, "
          f"{'one utterance' if batch == 1 else f'{batch} utterances'} per call; {args.threads} thread(s); "
          f"shards of {args.shard_mb:g} MB; oneDNN kernel cache {args.onednn_cache} shapes; peak RSS per process")
    print(f"{'utts':>6} {'audio min':>9} {'cache MB':>9} {'shards':>6} {'base MB':>8} {'caching MB':>10} "
          f"{'reading MB':>10} {'all in RAM MB':>13} {'cache s':>7} {'read s':>6}")
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.sizes:
            root = Path(tmp) / f"n{n}"
            data, minutes = make_data(root, n)
            cache, read, in_ram = (run_child(mode, data, root / "feats", args)
                                   for mode in ("cache", "read", "in_ram"))
            shards = list((root / "feats").glob("*/shards/shard-*.safetensors"))
            size = sum(f.stat().st_size for f in shards) / 2 ** 20
            print(f"{n:>6} {minutes:>9.1f} {size:>9.1f} {len(shards):>6} {cache['base_mb']:>8.0f} "
                  f"{cache['peak_mb']:>10.0f} {read['peak_mb']:>10.0f} {in_ram['peak_mb']:>13.0f} "
                  f"{cache['seconds']:>7.1f} {read['seconds']:>6.1f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
