"""From labels to prosody: A/V/D + speaker style -> acoustic targets -> control tracks.

``acoustic_targets`` is the single place where the continuous A/V/D values act
on the sound, through the linear cue table of the config, scaled by the
speaker's per-emotion style gains and the domain's expression strength.
``build_timeline`` lays syllables, words and pauses out in time, and
``f0_track`` draws the intonation over them. Tracks live on a 1 kHz control
grid; the renderer interpolates them to audio rate.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import uniform_filter1d

from sertk.data.synth.config import CUES, DIMS
from sertk.data.synth.phonemes import CONSONANTS, NOISE_BANDS, TRACTS, split_syllables
from sertk.data.synth.spec import UttSpec

CONTROL_RATE = 1000  # Hz: one control value per millisecond
BASE_LEVEL_DBFS = -30.0  # active-speech RMS of a neutral, average speaker


@dataclass(frozen=True)
class Targets:
    """Utterance-level acoustic parameters (what the caption describes, too)."""

    f0_hz: float          # F0 of the utterance's baseline (before accents)
    f0_range_st: float    # pitch-accent size
    contour: float        # -1 (falling, steep declination) .. +1 (flat, final rise)
    syllable_s: float     # mean syllable duration
    loudness_dbfs: float  # active-speech RMS level
    brightness: float     # spectral tilt control (higher = flatter)
    formant_scale: float  # multiplies every formant frequency
    low_shelf_db: float   # low-frequency emphasis
    breathiness: float
    tension: float
    creak: float
    jitter: float
    shimmer_db: float


def cue_values(spec: UttSpec) -> dict[str, float]:
    """Each cue's displacement: coefficients x (A/V/D - reference) x style x expression."""
    delta = {d: (spec.avd[i] - spec.avd_reference[i]) * spec.expression for i, d in enumerate(DIMS)}
    out = {}
    for cue in CUES:
        coefs = spec.cues.get(cue, {})
        raw = sum(float(c) * delta[d] for d, c in coefs.items())
        out[cue] = raw * spec.speaker.gain(spec.emotion, cue)
    return out


def acoustic_targets(spec: UttSpec, rng: np.random.Generator) -> Targets:
    spk = spec.speaker
    cue = cue_values(spec)
    vq = {q: float(v) * spec.intensity * spec.expression * spk.gain(spec.emotion, "voice")
          for q, v in spec.voice.items()}
    tension, breath_vq = vq.get("tension", 0.0), vq.get("breathiness", 0.0)
    creak, smile = vq.get("creak", 0.0), vq.get("smile", 0.0)
    wob = spec.utterance_sd
    f0_shift = cue["f0_level_st"] + rng.normal(0.0, wob["f0_st"])
    loud = cue["loudness_db"] + rng.normal(0.0, wob["loudness_db"])
    rate = cue["rate_log"] + rng.normal(0.0, wob["rate_log"])
    return Targets(
        f0_hz=float(np.clip(spk.f0_hz * 2.0 ** (f0_shift / 12.0), 55.0, 450.0)),
        f0_range_st=float(np.clip(spk.f0_range_st * np.exp(cue["f0_range_log"]) * (1 + 0.25 * smile), 0.2, 12.0)),
        contour=float(np.clip(cue["contour"], -1.0, 1.0)),
        syllable_s=float(np.clip(spk.syllable_s * np.exp(-rate), 0.09, 0.40)),
        loudness_dbfs=float(BASE_LEVEL_DBFS + spk.loudness_db + loud + 2.0 * tension),
        brightness=float(spk.brightness + cue["brightness"] + 0.6 * tension - 0.4 * breath_vq + 0.15 * smile),
        formant_scale=float(spk.vtl_scale * (1.0 + cue["formant_shift"]) * (1.0 + 0.04 * smile)),
        low_shelf_db=float(spk.low_shelf_db + cue["low_shelf_db"]),
        breathiness=float(np.clip(spk.breathiness + 0.6 * breath_vq, 0.0, 1.5)),
        tension=float(np.clip(tension, 0.0, 2.0)),
        creak=float(np.clip(creak, 0.0, 2.0)),
        jitter=float(spk.jitter * (1.0 + 0.8 * tension + 0.5 * breath_vq)),
        shimmer_db=float(spk.shimmer_db * (1.0 + 0.8 * tension + 0.8 * breath_vq)),
    )


@dataclass
class Timeline:
    """Control tracks on the 1 kHz grid, plus the accent plan for the F0 track."""

    n: int                    # length in control steps (ms)
    voice_amp: np.ndarray     # excitation amplitude (0 where unvoiced)
    tract: np.ndarray         # (len(TRACTS), n) crossfading weights of the vocal-tract filters
    bands: np.ndarray         # (3, n) consonant noise level per band, relative to the vowels
    accents: list             # (centre ms, peak-alignment weight, size factor, width ms)
    speech: tuple[int, int]   # first and last ms of speech
    last_vowel: tuple[int, int]


def _syllable_plan(words: tuple[str, ...]):
    """(word index, onset, vowel, stressed, sentence-final) for every syllable."""
    plan = []
    for wi, w in enumerate(words):
        sylls = split_syllables(w)
        for si, (c, v) in enumerate(sylls):
            plan.append((wi, c, v, si == 0, wi == len(words) - 1 and si == len(sylls) - 1))
    return plan


def build_timeline(spec: UttSpec, tg: Targets, rng: np.random.Generator) -> Timeline:
    """Durations of every consonant, vowel and pause; then the gates that realise them."""
    plan = _syllable_plan(spec.words)
    n_words = len(spec.words)
    # random draws of a fixed count, so that changing a value never shifts the stream
    syl_noise = rng.normal(0.0, 0.10, len(plan))
    pause_u = rng.random(max(n_words - 1, 1))
    pause_len = rng.uniform(0.08, 0.22, max(n_words - 1, 1))
    lead, trail = rng.uniform(0.10, 0.25), rng.uniform(0.15, 0.30)
    stress_gain = rng.uniform(0.9, 1.1, len(plan))

    cons_scale = float(np.sqrt(tg.syllable_s / 0.19))  # consonants stretch less than vowels
    slow = float(np.clip((tg.syllable_s - 0.19) / 0.1, 0.0, 1.0))
    events = []  # (kind, dur_s, payload)
    for k, (wi, c, v, stressed, final) in enumerate(plan):
        if k > 0 and plan[k - 1][0] != wi:  # word boundary
            b = plan[k - 1][0]
            p_pause = 0.12 + 0.25 * slow + (0.35 if b == n_words // 2 - 1 and n_words >= 4 else 0.0)
            if pause_u[b] < p_pause:
                events.append(("pause", pause_len[b] * (tg.syllable_s / 0.19), None))
        dur = tg.syllable_s * (1.25 if stressed else 0.85) * np.exp(syl_noise[k]) * (1.35 if final else 1.0)
        cons = CONSONANTS.get(c) if c else None
        used = 0.0
        if cons is not None:
            if cons.closure:
                events.append(("closure", cons.closure * cons_scale, cons))
                used += cons.closure * cons_scale
            if cons.murmur and cons.murmur_dur:
                events.append(("murmur", cons.murmur_dur * cons_scale, cons))
                used += cons.murmur_dur * cons_scale
            if cons.noise:
                events.append(("noise", cons.noise * cons_scale, cons))
                used += cons.noise * cons_scale
        events.append(("vowel", max(0.05, dur - used), (v, stressed, final, stress_gain[k])))

    speech_s = sum(e[1] for e in events)
    dmin, dmax = spec.duration
    room = dmax - 0.02 - lead - trail
    squeeze = min(1.0, room / speech_s) if speech_s > 0 else 1.0
    total = lead + speech_s * squeeze + trail
    if total < dmin:
        trail += dmin - total + 0.01
        total = lead + speech_s * squeeze + trail
    n = int(np.ceil(total * CONTROL_RATE))

    voice_amp = np.zeros(n)
    tract = np.zeros((len(TRACTS), n))
    bands = np.zeros((len(NOISE_BANDS), n))
    accents = []
    t = lead
    first = int(round(t * CONTROL_RATE))
    last_vowel = (first, first + 1)
    for kind, dur, payload in events:
        a, b = int(round(t * CONTROL_RATE)), int(round((t + dur * squeeze) * CONTROL_RATE))
        b = max(b, a + 1)
        t += dur * squeeze
        if kind == "vowel":
            v, stressed, final, sg = payload
            shape = np.linspace(1.0, 0.7, b - a) * (1.0 if stressed else 0.8) * sg
            voice_amp[a:b] = shape
            tract[TRACTS.index(v), a:b] = 1.0
            if stressed:
                accents.append((a, b))
            last_vowel = (a, b)
        elif kind == "murmur":
            cons = payload
            voice_amp[a:b] = cons.murmur_level
            tract[TRACTS.index(cons.murmur), a:b] = 1.0
        elif kind == "noise":
            cons = payload
            # a stop's burst decays fast; frication holds and fades
            env = np.exp(-np.arange(b - a) / 8.0) if cons.closure else np.hanning(b - a + 2)[1:-1] ** 0.5
            bands[:, a:b] = np.asarray(cons.bands)[:, None] * env[None, :]
    last = int(round(t * CONTROL_RATE))

    # declining effort over the phrase, then smooth every gate (coarticulation)
    ramp = np.ones(n)
    ramp[first:last] = 10 ** (np.linspace(0.0, -3.0, last - first) / 20.0)
    voice_amp = uniform_filter1d(uniform_filter1d(voice_amp * ramp, 9), 9)
    tract = uniform_filter1d(uniform_filter1d(tract, 15, axis=1), 15, axis=1)
    norm = tract.sum(0)
    tract = np.where(norm > 1e-6, tract / np.maximum(norm, 1e-6), 0.0)
    bands = uniform_filter1d(bands, 3, axis=1)
    return Timeline(n, voice_amp, tract, bands, accents, (first, last), last_vowel)


def f0_track(tl: Timeline, tg: Targets, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """F0 (Hz) and a jitter multiplier on the control grid.

    Valence shapes the contour (``tg.contour``): positive -> flat declination,
    late-peaking (rising) accents and a final rise; negative -> steep
    declination, early-peaking (falling) accents and a final fall.
    Arousal acts through ``f0_hz`` (level) and ``f0_range_st`` (accent size).
    """
    n = tl.n
    t = np.arange(n, dtype=np.float64)
    first, last = tl.speech
    acc_size = rng.uniform(0.7, 1.2, max(len(tl.accents), 1))
    drift_knots = rng.normal(0.0, 1.0, n // 50 + 2)
    c = tg.contour
    st = np.zeros(n)
    # declination: 3 st over the phrase for a neutral contour
    span = max(last - first, 1)
    decl_total = 3.0 * (1.0 - 0.7 * c)
    st += decl_total * (0.5 - np.clip((t - first) / span, 0.0, 1.0))
    # pitch accents on each word's stressed vowel
    align = 0.35 + 0.3 * c
    for i, (a, b) in enumerate(tl.accents):
        centre = a + align * (b - a)
        width = 0.35 * (b - a) + 30.0
        size = tg.f0_range_st * acc_size[i] * (1.15 if i == 0 else 1.0)
        st += size * np.exp(-0.5 * ((t - centre) / width) ** 2)
    # boundary tone over the last vowel
    a, b = tl.last_vowel
    st += 4.0 * c * np.clip((t - a) / max(b - a, 1), 0.0, 1.0)
    # slow wandering
    drift = np.interp(t, np.arange(drift_knots.size) * 50.0, np.cumsum(drift_knots))
    drift = drift - drift.mean()
    st += 0.4 * drift / (drift.std() + 1e-9)
    jitter = np.ones(n)
    if tg.creak > 0:
        # creaky phrase end: pitch drops and periods become irregular
        tail = np.clip((t - (last - 0.3 * span)) / (0.3 * span), 0.0, 1.0)
        st -= 3.0 * tg.creak * tail
        jitter += 4.0 * tg.creak * tail
    f0 = tg.f0_hz * 2.0 ** (st / 12.0)
    return np.clip(f0, 50.0, 600.0), jitter
