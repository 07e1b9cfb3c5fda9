"""Padding of length-bucketed batches against random batches.

Writes a data dir of real wav files with durations drawn uniformly from
1-4 s (the range mini_emo uses) in a temporary directory, then for each
batching scheme prints the padding ratio (zero-padded samples / all samples
in the padded batches, measured on the collated attention masks of one epoch)
and the number of batches. Lower padding means less wasted encoder compute.

  python benchmarks/bench_batching.py [--n 400] [--batch-size 16] [--max-batch-seconds 40]
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from sertk.data.audio import write_audio
from sertk.data.datadir import DataDir
from sertk.data.dataset import AudioDataset, collate_audio, make_bucket_batch_sampler, padding_ratio
from sertk.data.labels import LabelMap


def build(root: Path, n: int, sr: int, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    (root / "wav").mkdir(parents=True)
    t = {"wav.scp": {}, "utt2spk": {}, "utt2emo": {}}
    for i in range(n):
        u = f"spk{i % 10}-{i:05d}"
        p = root / "wav" / f"{u}.wav"
        write_audio(p, 0.1 * rng.standard_normal(int(rng.uniform(1.0, 4.0) * sr)).astype(np.float32), sr)
        t["wav.scp"][u], t["utt2spk"][u], t["utt2emo"][u] = str(p), f"spk{i % 10}", "neu"
    DataDir(t).write(root / "data")
    return root / "data"


def measured_padding(ds, batch_sampler) -> tuple[float, int, float]:
    """Padding ratio from the collated masks of one real epoch, batch count, seconds taken."""
    loader = torch.utils.data.DataLoader(ds, batch_sampler=batch_sampler, collate_fn=collate_audio)
    real = slots = batches = 0
    t0 = time.perf_counter()
    for b in loader:
        real += int(b["attention_mask"].sum())
        slots += b["attention_mask"].numel()
        batches += 1
    return 1.0 - real / slots, batches, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=400, help="utterances")
    ap.add_argument("--sample-rate", type=int, default=16000)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-batch-seconds", type=float, default=40.0)
    ap.add_argument("--num-buckets", type=int, default=10)
    ap.add_argument("--epochs", type=int, default=5, help="epochs averaged for the length-only figures")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        ds = AudioDataset(build(Path(tmp), args.n, args.sample_rate, args.seed), args.sample_rate,
                          LabelMap(["neu"]))
        lengths = ds.durations()
        print(f"{len(ds)} utterances, {sum(lengths) / 60:.1f} min, durations {min(lengths):.2f}-{max(lengths):.2f} s")

        def random_batches(bs: int, epoch: int):
            g = torch.Generator().manual_seed(args.seed + epoch)
            return torch.utils.data.BatchSampler(torch.utils.data.RandomSampler(ds, generator=g), bs, False)

        fixed = make_bucket_batch_sampler(ds, batch_size=args.batch_size, num_buckets=args.num_buckets,
                                          seed=args.seed)
        dynamic = make_bucket_batch_sampler(ds, max_batch_seconds=args.max_batch_seconds,
                                            num_buckets=args.num_buckets, seed=args.seed)
        mean_dyn = len(ds) / len(dynamic)
        schemes = {
            f"random, batch_size={args.batch_size}": lambda e: random_batches(args.batch_size, e),
            f"bucketed, batch_size={args.batch_size}": lambda e: (fixed.set_epoch(e), fixed)[1],
            f"random, batch_size={round(mean_dyn)} (dynamic's mean)": lambda e: random_batches(round(mean_dyn), e),
            f"bucketed, max_batch_seconds={args.max_batch_seconds:g}": lambda e: (dynamic.set_epoch(e), dynamic)[1],
        }
        print(f"{'scheme':46s} {'padding (epoch 0, masks)':>25s} {'padding (mean of ' + str(args.epochs) + ')':>20s}"
              f" {'batches':>8s} {'load s':>7s}")
        for name, make in schemes.items():
            ratios = [padding_ratio(list(make(e)), lengths) for e in range(args.epochs)]
            pad, nb, secs = measured_padding(ds, make(0))
            print(f"{name:46s} {pad:25.3f} {np.mean(ratios):20.3f} {nb:8d} {secs:7.2f}")


if __name__ == "__main__":
    main()
