"""Glottal source: Rosenberg pulses with jitter and shimmer, plus aspiration noise.

The pulse shape is a function of the phase within each period, so the whole
pulse train is computed at once (no per-period loop). Voice quality acts
through the open quotient (tense voice: short open phase, sharp closure ->
more high-frequency energy; breathy voice: long open phase + turbulence),
period-to-period perturbation (jitter, shimmer) and aspiration noise.
"""
from __future__ import annotations

import numpy as np
from scipy import signal

from sertk.data.synth.filters import highpass_sos, one_pole_lowpass
from sertk.data.synth.prosody import Targets


def _per_period(values: np.ndarray, index: np.ndarray) -> np.ndarray:
    return values[np.minimum(index, values.size - 1)]


def glottal_source(f0: np.ndarray, voice_amp: np.ndarray, jitter_mult: np.ndarray, tg: Targets,
                   rng: np.random.Generator, sr: int) -> np.ndarray:
    """Excitation at audio rate: flow-derivative pulses x amplitude + aspiration.

    ``f0``, ``voice_amp`` and ``jitter_mult`` are per-sample tracks.
    """
    n = f0.size
    max_periods = int(np.ceil(n * 600.0 / sr)) + 2
    jit = rng.standard_normal(max_periods)
    shim = rng.standard_normal(max_periods)
    breath_noise = rng.standard_normal(n)

    # jitter: every period gets its own small F0 perturbation
    phase0 = np.cumsum(f0) / sr
    k0 = phase0.astype(np.int64)
    f0j = f0 * (1.0 + np.clip(tg.jitter * jitter_mult * _per_period(jit, k0), -0.4, 0.4))
    phase = np.cumsum(f0j) / sr
    k = phase.astype(np.int64)
    frac = phase - k

    oq = float(np.clip(0.60 - 0.18 * tg.tension + 0.15 * tg.breathiness, 0.30, 0.85))
    tp = 0.62 * oq
    tn = oq - tp
    flow = np.where(frac < tp, 0.5 * (1.0 - np.cos(np.pi * frac / tp)),
                    np.where(frac < oq, np.cos(0.5 * np.pi * (frac - tp) / tn), 0.0))
    pulses = np.diff(flow, prepend=flow[0])
    # shimmer: per-period amplitude in dB
    pulses *= 10.0 ** (tg.shimmer_db * _per_period(shim, k) / 20.0)
    pole = float(np.clip(0.55 - 0.30 * tg.brightness, 0.0, 0.93))
    voiced = one_pole_lowpass(pulses, pole) * voice_amp

    active = voice_amp > 0.3
    ref = float(np.sqrt(np.mean(voiced[active] ** 2))) if active.any() else 1e-3
    aspiration = signal.sosfilt(highpass_sos(1000.0, sr), breath_noise)
    aspiration *= (0.35 + 0.65 * (frac < oq)) * voice_amp
    aspiration *= tg.breathiness * 0.8 * ref / (float(aspiration[active].std()) + 1e-12 if active.any() else 1.0)
    return voiced + aspiration
