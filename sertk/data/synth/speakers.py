"""Synthetic speakers: a voice (F0, tract length, rate, effort, voice quality)
and a personal expression style.

The style is a gain on every acoustic cue of every emotion
(``style[emotion][cue]``), log-normal around 1: one speaker shows anger
mostly in loudness, another mostly in pitch, a third barely at all. That is
what makes a speaker's other utterances informative (per-speaker
normalisation, enrolment-based personalisation).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from sertk.data.synth.config import ADDED_SPEAKERS, POOL_PREFIX, SPLITS, STYLE_KEYS


@dataclass(frozen=True)
class SpeakerProfile:
    spk: str                 # speaker id, e.g. "studio-f03"
    gender: str              # "f" or "m"
    domain: str              # home domain: where the audio lives ("pretrain" for the pool's speakers)
    split: str               # train, dev, test or pretrain
    f0_hz: float             # F0 of neutral speech
    vtl_scale: float         # formant scale (shorter tract -> higher formants)
    syllable_s: float        # neutral syllable duration
    f0_range_st: float       # size of neutral pitch accents, semitones
    loudness_db: float       # habitual vocal effort relative to the corpus level
    breathiness: float       # habitual aspiration noise (0 = none)
    jitter: float            # habitual period-to-period F0 perturbation (relative)
    shimmer_db: float        # habitual period-to-period amplitude perturbation
    brightness: float        # habitual spectral tilt offset
    low_shelf_db: float      # habitual low-frequency emphasis
    style: dict = field(default_factory=dict)  # emotion -> cue -> gain

    def gain(self, emotion: str, cue: str) -> float:
        return float(self.style[emotion][cue])


def _gauss(rng: np.random.Generator, mean_sd) -> float:
    return float(rng.normal(mean_sd[0], mean_sd[1]))


def _uniform(rng: np.random.Generator, lo_hi) -> float:
    return float(rng.uniform(lo_hi[0], lo_hi[1]))


def draw_speaker(cfg: dict, spk: str, gender: str, domain: str, split: str,
                 rng: np.random.Generator) -> SpeakerProfile:
    """Draw one speaker's voice and style from the config's population."""
    s = cfg["speakers"]
    var = cfg["variation"]
    g = "female" if gender == "f" else "male"
    f0 = float(np.clip(_gauss(rng, s["f0_hz"][g]), 60.0, 400.0))
    vtl = float(np.clip(_gauss(rng, s["vtl_scale"][g]), 0.8, 1.4))
    syl = float(np.clip(_gauss(rng, s["syllable_s"]), 0.10, 0.35))
    rng_st = float(np.clip(_gauss(rng, s["f0_range_st"]), 0.5, 8.0))
    loud = _gauss(rng, s["loudness_db"])
    breath = _uniform(rng, s["breathiness"])
    jit = _uniform(rng, s["jitter"])
    shim = _uniform(rng, s["shimmer_db"])
    bright = _gauss(rng, s["brightness"])
    shelf = _gauss(rng, s["low_shelf_db"])
    emotions = list(cfg["emotions"])
    z_emo = rng.normal(0.0, var["style_emotion_sd"], len(emotions))
    z_cue = rng.normal(0.0, var["style_cue_sd"], len(STYLE_KEYS))
    z_cell = rng.normal(0.0, var["style_cell_sd"], (len(emotions), len(STYLE_KEYS)))
    style = {e: {k: round(float(np.exp(z_emo[i] + z_cue[j] + z_cell[i, j])), 4)
                 for j, k in enumerate(STYLE_KEYS)} for i, e in enumerate(emotions)}
    return SpeakerProfile(spk, gender, domain, split, f0, vtl, syl, rng_st, loud, breath, jit, shim,
                          bright, shelf, style)


def _numbered(prefix: str, count: int, number: dict[str, int]) -> list[tuple[str, str]]:
    """(speaker id, gender) for ``count`` speakers, genders alternating, continuing ``number``."""
    out = []
    for i in range(count):
        gender = "f" if i % 2 == 0 else "m"
        number[gender] += 1
        out.append((f"{prefix}-{gender}{number[gender]:02d}", gender))
    return out


def speaker_roster(cfg: dict) -> list[tuple[str, str, str, str]]:
    """(speaker id, gender, domain, split) for every speaker, genders alternating.

    Speaker numbers run across domains, so no person is in two domains or two
    splits: ids are ``<domain>-<f|m><NN>``. A domain's ``added_speakers`` come
    after every domain's ``speakers``, numbered on: the roster's first part,
    and with it each existing speaker's random streams, stays as it was.
    """
    number = {"f": 0, "m": 0}
    return [(spk, gender, domain, split) for key in ("speakers", ADDED_SPEAKERS)
            for domain, d in cfg["domains"].items() for split in SPLITS
            for spk, gender in _numbered(domain, int((d.get(key) or {}).get(split, 0)), number)]


def pool_roster(speakers: int) -> list[tuple[str, str]]:
    """(speaker id, gender) of the pre-training pool: ``pool-<f|m><NN>``, a prefix no domain may take."""
    return _numbered(POOL_PREFIX, speakers, {"f": 0, "m": 0})
