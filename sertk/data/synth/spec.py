"""What one synthetic utterance is: everything the renderer needs, and nothing random.

A spec is drawn once in the main process (``corpus.plan_corpus``); the
renderer turns it into audio with randomness seeded only by ``spec.seed``,
so an utterance is the same whichever worker renders it.
"""
from __future__ import annotations

from dataclasses import dataclass

from sertk.data.synth.speakers import SpeakerProfile


@dataclass(frozen=True)
class UttSpec:
    utt: str
    speaker: SpeakerProfile
    domain: str                          # recording domain (the speaker's own; drawn per utterance in the pool)
    emotion: str
    avd: tuple[float, float, float]      # labels, 0-1 scale
    intensity: float                     # how far the emotion is pushed from neutral
    words: tuple[str, ...]
    seed: int
    # corpus settings the renderer reads (copied from the config)
    avd_reference: tuple[float, float, float]
    cues: dict                           # cue -> {dimension: coefficient}
    voice: dict                          # the emotion's voice qualities
    utterance_sd: dict                   # per-utterance wobble not tied to the labels
    expression: float                    # expression strength (the domain's, or the pool's draw)
    channel: dict                        # the domain's channel settings
    snr_db: float                        # this utterance's channel draws
    rt60: float | None
    gain_db: float
    synth_rate: int
    sample_rate: int                     # rate of the written file
    duration: tuple[float, float]
