"""Digital filters of the synthesiser: formant resonators, noise bands, shelves.

Formants are Klatt-style two-pole resonators (unity gain at DC) cascaded as
second-order sections and run with ``scipy.signal.sosfilt``.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
from scipy import fft as sp_fft
from scipy import signal

from sertk.data.synth.phonemes import MURMURS, NOISE_BANDS, VOWELS


def resonator_sos(freqs, bws, sr: int) -> np.ndarray:
    """Cascade of two-pole resonators (one SOS row each), DC gain 1 per section."""
    rows = []
    for f, bw in zip(freqs, bws):
        if f >= 0.48 * sr:  # a formant above Nyquist is dropped, as in a real band-limited tract
            continue
        r = np.exp(-np.pi * bw / sr)
        c = 2.0 * r * np.cos(2.0 * np.pi * f / sr)
        a1, a2 = -c, r * r
        rows.append([1.0 + a1 + a2, 0.0, 0.0, 1.0, a1, a2])
    return np.asarray(rows, dtype=np.float64)


def tract_filters(formant_scale: float, sr: int, bw_scale: float = 1.0) -> list[np.ndarray]:
    """One resonator cascade per entry of ``phonemes.TRACTS`` (vowels, then murmurs)."""
    out = []
    for table in (VOWELS, MURMURS):
        for freqs, bws in table.values():
            out.append(resonator_sos([f * formant_scale for f in freqs], [b * bw_scale for b in bws], sr))
    return out


@lru_cache(maxsize=16)
def noise_band_sos(sr: int, scale: float) -> tuple[np.ndarray, ...]:
    """Band-pass filters (order 2 Butterworth) for the consonant noise bands."""
    scale = round(scale, 2)
    out = []
    for lo, hi in NOISE_BANDS:
        lo, hi = lo * scale, min(hi * scale, 0.45 * sr)
        out.append(signal.butter(2, [lo, hi], btype="bandpass", fs=sr, output="sos"))
    return tuple(out)


@lru_cache(maxsize=8)
def highpass_sos(cutoff: float, sr: int, order: int = 2) -> np.ndarray:
    return signal.butter(order, cutoff, btype="highpass", fs=sr, output="sos")


@lru_cache(maxsize=8)
def bandpass_sos(lo: float, hi: float, sr: int, order: int = 4) -> np.ndarray:
    return signal.butter(order, [lo, hi], btype="bandpass", fs=sr, output="sos")


def low_shelf(x: np.ndarray, gain_db: float, sr: int, f0: float = 300.0) -> np.ndarray:
    """RBJ-cookbook low shelf (slope 1): boosts/cuts everything below ``f0``."""
    if abs(gain_db) < 1e-3:
        return x
    a_ = 10 ** (gain_db / 40.0)
    w0 = 2 * np.pi * f0 / sr
    cw, sw = np.cos(w0), np.sin(w0)
    alpha = sw / 2 * np.sqrt(2.0)
    sa = 2 * np.sqrt(a_) * alpha
    b = [a_ * ((a_ + 1) - (a_ - 1) * cw + sa), 2 * a_ * ((a_ - 1) - (a_ + 1) * cw),
         a_ * ((a_ + 1) - (a_ - 1) * cw - sa)]
    a = [(a_ + 1) + (a_ - 1) * cw + sa, -2 * ((a_ - 1) + (a_ + 1) * cw), (a_ + 1) + (a_ - 1) * cw - sa]
    return signal.lfilter(np.asarray(b) / a[0], np.asarray(a) / a[0], x)


def one_pole_lowpass(x: np.ndarray, pole: float) -> np.ndarray:
    """y[n] = (1-p) x[n] + p y[n-1]: -6 dB/octave above (1-p) sr / 2 pi; the spectral tilt knob."""
    return signal.lfilter([1.0 - pole], [1.0, -pole], x)


def coloured_noise(rng: np.random.Generator, n: int, color: str) -> np.ndarray:
    """Unit-RMS white, pink (1/f) or brown (1/f^2) noise, shaped in the frequency domain."""
    white = rng.standard_normal(n)
    if color == "white" or n < 4:
        return white
    m = sp_fft.next_fast_len(n, real=True)  # an FFT-friendly length; the tail is dropped
    spec = sp_fft.rfft(white, m)
    f = np.arange(spec.size, dtype=np.float64)
    f[0] = 1.0
    spec /= np.sqrt(f) if color == "pink" else f
    out = sp_fft.irfft(spec, m)[:n]
    return out / (out.std() + 1e-12)
