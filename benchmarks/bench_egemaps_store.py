"""Stage-2 eGeMAPS on a 6-fold layout: extracted per set (before) against once per utterance (after).

Writes a corpus (N utterances of 1-2 s, 6 speakers, 48 kHz like RAVDESS) and
the data dirs of a speaker 6-fold layout over it, as RAVDESS's protocols do:
fold k tests on speaker k, selects on speaker k+1 and trains on the other
four, so every utterance is in 6 of the 18 set dirs. Then it runs
the stage-2 command of egs/TEMPLATE/ser.sh (``python -m sertk.bin.extract_egemaps
--data <18 dirs> --out <18 dirs> --nj N``) twice on fresh outputs:

  before: every output dir in a directory of its own, so each set has a store
          of its own and every set extracts all its utterances (what stage 2 did
          before the shared store: one pool, one extraction per set and utterance);
  after:  the recipe layout dump/egemaps/<set>, one store shared by all sets;

and once more on the "after" outputs (everything up to date). Extractions are
counted from the stores (one stored vector per openSMILE run); times are the
wall time and CPU time of the command and its workers, interpreter start-up
and imports included (CPU time is the steadier figure on a shared machine). The
views of both runs are checked to hold identical vectors. A run has a fixed
cost (start-up, torch/openSMILE imports in each worker, about 3 s) that the
extraction count does not change, so the speed-up grows with the corpus
towards 6x (RAVDESS: 1,440 files of about 3.7 s); the default measures a
small corpus and a larger one.

  python benchmarks/bench_egemaps_store.py [--n 60 720] [--dur 1 2] [--nj 2] [--sr 48000]
"""
from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from sertk.data.audio import write_audio
from sertk.data.datadir import DataDir

SPEAKERS = 6


def write_corpus(root: Path, n: int, sr: int, dur: tuple[float, float], seed: int) -> dict[str, tuple[str, str]]:
    """``n`` utterances of ``dur`` seconds (min, max), speakers spk1..spk6: utt -> (speaker, wav path)."""
    rng = np.random.default_rng(seed)
    (root / "wav").mkdir(parents=True)
    utts = {}
    for i in range(n):
        spk = f"spk{i % SPEAKERS + 1}"
        utt = f"{spk}-{i:04d}"
        t = np.arange(int(rng.uniform(*dur) * sr)) / sr
        f0 = rng.uniform(100, 250) * (1 + 0.05 * np.sin(2 * np.pi * 3 * t))
        phase = 2 * np.pi * np.cumsum(f0) / sr
        x = sum(np.sin(k * phase) / k for k in range(1, 10)) + 0.05 * rng.standard_normal(t.size)
        write_audio(root / "wav" / f"{utt}.wav", (0.3 * x / np.abs(x).max()).astype(np.float32), sr)
        utts[utt] = (spk, str(root / "wav" / f"{utt}.wav"))
    return utts


def write_folds(root: Path, utts: dict[str, tuple[str, str]]) -> dict[str, Path]:
    """Set name -> data dir for the 6 folds' train/dev/test sets (18 dirs over the same utterances)."""
    sets = {}
    for k in range(1, SPEAKERS + 1):
        test, dev = f"spk{k}", f"spk{k % SPEAKERS + 1}"
        members = {"train": lambda s: s not in (test, dev), "dev": lambda s: s == dev, "test": lambda s: s == test}
        for part, keep in members.items():
            chosen = {u: v for u, v in utts.items() if keep(v[0])}
            tables = {"wav.scp": {u: p for u, (_, p) in chosen.items()},
                      "utt2spk": {u: s for u, (s, _) in chosen.items()}}
            sets[f"fold{k}_{part}"] = root / "data" / f"fold{k}_{part}"
            DataDir(tables).write(sets[f"fold{k}_{part}"])
    return sets


def stage2_command(sets: dict[str, Path], outs: dict[str, Path], nj: int) -> list[str]:
    return [sys.executable, "-m", "sertk.bin.extract_egemaps", "--data", *map(str, sets.values()),
            "--out", *[str(outs[s]) for s in sets], "--nj", str(nj), "--sample-rate", "16000"]


def run_command(cmd: list[str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the command and its pool workers): CPU time barely moves when
    other jobs share the cores, wall time does."""
    cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)


def extractions(root: Path) -> int:
    """Vectors in every store under ``root``: one per openSMILE run."""
    from sertk.features.store import count_entries

    return sum(count_entries(store) for store in root.glob("**/_store/*"))


def same_vectors(a: dict[str, Path], b: dict[str, Path]) -> bool:
    from sertk.features.store import load_feats

    for s in a:
        fa, fb = load_feats(a[s]), load_feats(b[s])
        if set(fa) != set(fb) or any(not np.array_equal(fa[u], fb[u]) for u in fa):
            return False
    return True


def measure(root: Path, n: int, nj: int, sr: int, dur: tuple[float, float], seed: int) -> dict:
    """One corpus of ``n`` utterances: extractions and wall times before, after and on a re-run."""
    sets = write_folds(root, write_corpus(root, n, sr, dur, seed))
    before = {s: root / "before" / s / "egemaps" for s in sets}  # a directory, so a store, per set
    after = {s: root / "after" / "dump" / "egemaps" / s for s in sets}  # the recipe layout: one store
    (t_before, cpu_before), (t_after, cpu_after), (t_rerun, _) = [
        run_command(stage2_command(sets, outs, nj)) for outs in (before, after, after)]
    if not same_vectors(before, after):
        raise SystemExit(f"n={n}: the views of the two layouts differ")
    return {"n": n, "sets": len(sets), "entries": sum(len(DataDir.read(d)) for d in sets.values()),
            "before": extractions(root / "before"), "after": extractions(root / "after"),
            "t_before": t_before, "t_after": t_after, "t_rerun": t_rerun, "cpu_before": cpu_before,
            "cpu_after": cpu_after}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, nargs="+", default=[60, 720], help="corpus sizes (utterances) to measure")
    p.add_argument("--nj", type=int, default=2, help="stage-2 --nj")
    p.add_argument("--sr", type=int, default=48000, help="sample rate of the written files (RAVDESS: 48000)")
    p.add_argument("--dur", type=float, nargs=2, default=[1.0, 2.0], help="utterance length range (s)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    rows = []
    for n in args.n:
        with tempfile.TemporaryDirectory() as tmp:
            rows.append(measure(Path(tmp), n, args.nj, args.sr, tuple(args.dur), args.seed))
    print(f"speaker 6-fold layout (18 set dirs, every utterance in 6), {args.sr} Hz files of "
          f"{args.dur[0]:g}-{args.dur[1]:g} s, --nj {args.nj}; times of the stage-2 command; "
          f"views of both runs hold identical vectors\n")
    print("| unique utts | set entries | extractions before | extractions after | wall before (s) "
          "| wall after (s) | wall speed-up | CPU before (s) | CPU after (s) | CPU ratio | re-run, all reused (s) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['n']} | {r['entries']} | {r['before']} | {r['after']} | {r['t_before']:.1f} "
              f"| {r['t_after']:.1f} | {r['t_before'] / r['t_after']:.1f}x | {r['cpu_before']:.1f} "
              f"| {r['cpu_after']:.1f} | {r['cpu_before'] / r['cpu_after']:.1f}x | {r['t_rerun']:.1f} |")


if __name__ == "__main__":
    main()
