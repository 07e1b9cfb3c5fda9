"""Synthetic speech-emotion corpora (source-filter synthesis; the mini_emo recipe).

Emotion is carried by prosody and voice quality: continuous arousal, valence
and dominance (0-1 scale) drive F0 level/range/contour, loudness, rate,
spectral tilt, formants and low-frequency emphasis through the config's cue
table; speakers add their own voice and per-emotion expression style;
domains add a recording channel. A separate pre-training pool (own speakers,
every domain's channel, ``plan_pool``) serves stage 0 only. See docs/mini_emo.md.
"""
from sertk.data.synth.config import CUES, DIMS, POOL, STYLE_KEYS, VOICE_QUALITIES, validate_config
from sertk.data.synth.corpus import (PARTS, caption_of, data_dirs, generate_corpus, is_up_to_date, plan_corpus,
                                     plan_pool, sentences_of, utt_seed)
from sertk.data.synth.prosody import Targets, acoustic_targets, cue_values
from sertk.data.synth.render import render_clean, render_utterance
from sertk.data.synth.speakers import SpeakerProfile
from sertk.data.synth.spec import UttSpec

__all__ = [
    "CUES", "DIMS", "PARTS", "POOL", "STYLE_KEYS", "VOICE_QUALITIES", "SpeakerProfile", "Targets", "UttSpec",
    "acoustic_targets", "caption_of", "cue_values", "data_dirs", "generate_corpus", "is_up_to_date",
    "plan_corpus", "plan_pool", "render_clean", "render_utterance", "sentences_of", "utt_seed", "validate_config",
]
