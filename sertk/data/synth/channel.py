"""Recording channels: what separates one synthetic domain from another.

In order: room reverberation (exponentially decaying noise impulse
response), additive background noise at a set SNR, telephone band-limiting,
automatic gain control (pulls every utterance toward one level, which
flattens the loudness cue), resampling to the file rate, and optional G.711
mu-law companding. A clean studio domain uses only low noise and a small
random microphone gain.
"""
from __future__ import annotations

from math import gcd

import numpy as np
from scipy import signal

from sertk.data.synth.filters import bandpass_sos, coloured_noise

AGC_TARGET_DBFS = -26.0
MU = 255.0


def active_rms(x: np.ndarray, sr: int, frame_s: float = 0.02) -> float:
    """RMS over the louder frames (speech, not the silences around it)."""
    hop = max(1, int(frame_s * sr))
    n = x.size // hop
    if n == 0:
        return float(np.sqrt(np.mean(x ** 2)) + 1e-12)
    e = np.mean(x[: n * hop].reshape(n, hop) ** 2, axis=1)
    thresh = e.max() * 10 ** (-30 / 10)
    return float(np.sqrt(e[e > thresh].mean()) + 1e-12)


def room_impulse_response(rt60: float, sr: int, rng: np.random.Generator, drr_db: float = 3.0) -> np.ndarray:
    """Direct path + exponentially decaying diffuse tail (60 dB down after ``rt60`` s)."""
    n = max(2, int(rt60 * sr))
    t = np.arange(n) / sr
    tail = rng.standard_normal(n) * np.exp(-6.9078 * t / rt60)
    tail[: int(0.002 * sr)] = 0.0  # first reflections after 2 ms
    tail *= np.sqrt(10 ** (-drr_db / 10) / (np.sum(tail ** 2) + 1e-12))
    tail[0] = 1.0
    return tail


def mulaw(x: np.ndarray) -> np.ndarray:
    """8-bit mu-law encode/decode round trip (the quantisation of a G.711 line)."""
    x = np.clip(x, -1.0, 1.0)
    y = np.sign(x) * np.log1p(MU * np.abs(x)) / np.log1p(MU)
    q = np.round(y * 127.0) / 127.0
    return np.sign(q) * ((1.0 + MU) ** np.abs(q) - 1.0) / MU


def soft_limit(x: np.ndarray, ceiling: float = 0.95) -> np.ndarray:
    """Leave the signal alone below ``ceiling``; saturate smoothly above it."""
    peak = float(np.max(np.abs(x))) if x.size else 0.0
    if peak <= ceiling:
        return x
    knee = 0.8 * ceiling
    over = np.abs(x) > knee
    y = x.copy()
    room = ceiling - knee
    y[over] = np.sign(x[over]) * (knee + room * np.tanh((np.abs(x[over]) - knee) / room))
    return y


def apply_channel(x: np.ndarray, sr: int, out_sr: int, ch: dict, snr_db: float, rt60: float | None,
                  gain_db: float, rng: np.random.Generator) -> np.ndarray:
    """Pass a clean synthesis-rate signal through a domain's channel; return it at ``out_sr``."""
    speech_level = active_rms(x, sr)
    if rt60:
        h = room_impulse_response(rt60, sr, rng)
        x = signal.fftconvolve(x, h)[: x.size]
        x *= speech_level / active_rms(x, sr)
    noise = coloured_noise(rng, x.size, ch["noise_color"])
    x = x + noise * speech_level * 10 ** (-snr_db / 20.0)
    if ch.get("band"):
        x = signal.sosfilt(bandpass_sos(float(ch["band"][0]), float(ch["band"][1]), sr), x)
    agc = float(ch.get("agc", 0.0))
    if agc > 0:
        level = active_rms(x, sr)
        x = x * (10 ** (AGC_TARGET_DBFS / 20.0) / level) ** agc
    x = x * 10 ** (gain_db / 20.0)
    if out_sr != sr:
        g = gcd(int(sr), int(out_sr))
        x = signal.resample_poly(x, out_sr // g, sr // g)
    x = soft_limit(x)
    if ch.get("codec") == "mulaw":
        x = mulaw(x)
    return x.astype(np.float32)
