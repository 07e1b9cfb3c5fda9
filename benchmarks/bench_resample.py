"""Reading audio at an odd rate: the soxr resampler against torchaudio's sinc, and eGeMAPS against openSMILE alone.

TESS's held-out files are 24,414 Hz. torchaudio's windowed-sinc kernel grows
with the reduced rate ratio (24,414 -> 16,000 reduces to 12,207 : 8,000), so
resampling took 30 of the 36 s that ``sertk extract-egemaps`` spent on 100
such files, against 7.6 s for openSMILE alone. Writes ``--n`` voiced clips at
``--sr`` and prints, per file set:

  resample    seconds for every file: soxr (what every read uses) and torchaudio's
              Resample (what reads used before), its kernel built once per rate pair;
  egemaps     sertk's extraction path (read_audio at 16 kHz + openSMILE on it)
              against openSMILE's own process_file on the original files, and
              the ratio (target: <= 1.5x).

  python benchmarks/bench_resample.py [--n 100] [--sr 24414] [--dur 2.5]
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from sertk.data.audio import read_audio, resample, write_audio
from sertk.features.egemaps import EgemapsExtractor


def write_clips(root: Path, n: int, sr: int, dur: float) -> list[str]:
    """``n`` harmonic clips with a wobbling pitch and a little noise, ``dur`` seconds at ``sr``."""
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        t = np.arange(int(dur * sr)) / sr
        f0 = rng.uniform(100, 250) * (1 + 0.05 * np.sin(2 * np.pi * 3 * t))
        phase = 2 * np.pi * np.cumsum(f0) / sr
        x = sum(np.sin(k * phase) / k for k in range(1, 10)) + 0.05 * rng.standard_normal(t.size)
        p = root / f"clip{i:04d}.wav"
        write_audio(p, (0.3 * x / np.abs(x).max()).astype(np.float32), sr)
        paths.append(str(p))
    return paths


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--sr", type=int, default=24414)
    ap.add_argument("--dur", type=float, default=2.5)
    args = ap.parse_args()
    import torch
    import torchaudio

    with tempfile.TemporaryDirectory() as tmp:
        paths = write_clips(Path(tmp), args.n, args.sr, args.dur)
        native = [read_audio(p)[0] for p in paths]
        resample(native[0], args.sr, 16000)  # import audresample outside the timing
        sinc = torchaudio.transforms.Resample(args.sr, 16000)  # the kernel reads used to cache per rate pair
        t_kernel = timed(lambda: sinc(torch.from_numpy(native[0])))
        t_soxr = timed(lambda: [resample(x, args.sr, 16000) for x in native])
        t_sinc = timed(lambda: [sinc(torch.from_numpy(x)) for x in native])
        print(f"resample {args.n} x {args.dur:g} s, {args.sr} -> 16000 Hz: soxr {t_soxr:.3f} s, "
              f"torchaudio sinc {t_sinc:.3f} s ({t_sinc / max(t_soxr, 1e-9):.0f}x) + {t_kernel:.2f} s for its first call")

        ex = EgemapsExtractor(16000)
        ex.smile.process_file(paths[0])  # openSMILE's first call loads its config
        t_ours = timed(lambda: [ex.extract(read_audio(p, 16000)[0], 16000, p) for p in paths])
        t_smile = timed(lambda: [ex.smile.process_file(p) for p in paths])
        ratio = t_ours / max(t_smile, 1e-9)
        print(f"egemaps {args.n} files: sertk (read at 16 kHz + openSMILE) {t_ours:.2f} s, openSMILE alone "
              f"{t_smile:.2f} s, ratio {ratio:.2f} (target <= 1.5: {'met' if ratio <= 1.5 else 'NOT met'})")


if __name__ == "__main__":
    main()
