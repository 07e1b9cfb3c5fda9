"""Render one utterance: source -> vocal tract -> consonant noise -> level -> channel.

Randomness comes only from ``spec.seed``, split into one independent stream
per purpose (targets, timing, intonation, source, noise, channel), so that
changing one value of a spec (say arousal, in a test) leaves every other
random draw as it was.
"""
from __future__ import annotations

import numpy as np
from scipy import signal

from sertk.data.synth.channel import active_rms, apply_channel, soft_limit
from sertk.data.synth.filters import low_shelf, noise_band_sos, tract_filters
from sertk.data.synth.prosody import CONTROL_RATE, Targets, acoustic_targets, build_timeline, f0_track
from sertk.data.synth.source import glottal_source
from sertk.data.synth.spec import UttSpec


def _upsample(track: np.ndarray, n: int, sr: int, start: int = 0, stop: int | None = None) -> np.ndarray:
    """Control-grid track -> one value per audio sample in [start, stop) (linear interpolation)."""
    t = np.arange(start, n if stop is None else stop) * (CONTROL_RATE / sr)
    return np.interp(t, np.arange(track.size), track)


def random_streams(seed: int) -> dict[str, np.random.Generator]:
    names = ("targets", "timing", "f0", "source", "noise", "channel")
    children = np.random.SeedSequence(seed).spawn(len(names))
    return {k: np.random.default_rng(c) for k, c in zip(names, children)}


def render_clean(spec: UttSpec) -> tuple[np.ndarray, Targets, dict]:
    """The clean (pre-channel) signal at the synthesis rate, its targets and control tracks."""
    rng = random_streams(spec.seed)
    sr = int(spec.synth_rate)
    tg = acoustic_targets(spec, rng["targets"])
    tl = build_timeline(spec, tg, rng["timing"])
    f0_ctrl, jit_ctrl = f0_track(tl, tg, rng["f0"])
    n = int(tl.n * sr / CONTROL_RATE)
    voice_amp = _upsample(tl.voice_amp, n, sr)
    src = glottal_source(_upsample(f0_ctrl, n, sr), voice_amp, _upsample(jit_ctrl, n, sr), tg, rng["source"], sr)

    # vocal tract: each tract filter runs over the source, outputs crossfade by gate
    bw_scale = 1.0 + 0.5 * tg.breathiness
    voiced = np.zeros(n)
    for i, sos in enumerate(tract_filters(tg.formant_scale, sr, bw_scale)):
        gate = tl.tract[i]
        if gate.max() <= 0:
            continue
        nz = np.flatnonzero(gate > 0)
        # filter only where the gate is open (+50 ms of ring-in), to save time
        a = max(0, int(nz[0] * sr / CONTROL_RATE) - int(0.05 * sr))
        b = min(n, int((nz[-1] + 1) * sr / CONTROL_RATE) + 1)
        voiced[a:b] += _upsample(gate, n, sr, a, b) * signal.sosfilt(sos, src[a:b])

    # consonant noise, level relative to the vowels
    noise = rng["noise"].standard_normal(n)
    vowel_rms = active_rms(voiced, sr)
    cons = np.zeros(n)
    for i, sos in enumerate(noise_band_sos(sr, float(np.sqrt(tg.formant_scale)))):
        gate = tl.bands[i]
        if gate.max() <= 0:
            continue
        band = signal.sosfilt(sos, noise)
        cons += _upsample(gate, n, sr) * band * (vowel_rms / (band.std() + 1e-12))
    x = voiced + cons
    x *= 10 ** (tg.loudness_dbfs / 20.0) / active_rms(x, sr)
    # after the level is set, so that low-frequency emphasis adds energy (dominance)
    x = low_shelf(x, tg.low_shelf_db, sr)
    x = soft_limit(x)
    return x, tg, {"f0": f0_ctrl, "voice_amp": tl.voice_amp, "speech": tl.speech}


def render_utterance(spec: UttSpec) -> np.ndarray:
    """The utterance as written to disk: float32 at ``spec.sample_rate``."""
    x, _, _ = render_clean(spec)
    rng = random_streams(spec.seed)["channel"]
    return apply_channel(x, int(spec.synth_rate), int(spec.sample_rate), spec.channel, spec.snr_db,
                         spec.rt60, spec.gain_db, rng)
