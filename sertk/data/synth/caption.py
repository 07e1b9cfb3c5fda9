"""One-sentence captions describing how an utterance sounds.

Descriptors come from the utterance's realised acoustic targets (pitch
relative to the speaker's gender, level, rate, intonation, voice quality),
its channel, and the emotion with a strength adverb; the template is drawn
per utterance so that captions are not all alike (audio-language model
training wants varied text).
"""
from __future__ import annotations

import numpy as np

from sertk.data.synth.prosody import BASE_LEVEL_DBFS, Targets
from sertk.data.synth.spec import UttSpec

EMOTION_WORDS = {
    "neutral": ("neutral", "calm and matter-of-fact", "neutral and composed"),
    "happy": ("happy", "cheerful", "joyful"),
    "angry": ("angry", "irritated", "annoyed"),
    "sad": ("sad", "gloomy", "downcast"),
    "fearful": ("afraid", "anxious", "fearful"),
    "surprised": ("surprised", "astonished", "amazed"),
    "disgusted": ("disgusted", "repelled", "disgusted"),
    "calm": ("calm", "relaxed", "serene"),
}
TEMPLATES = (
    "A {gender} speaker with a {pitch}, {vq} voice talks {rate} and {loud}, with {inton}, {channel}; "
    "{pron} sounds {emo}.",
    "{Pron} sounds {emo}: a {pitch} {gender} voice, {vq}, speaking {loud} and {rate} with {inton}, {channel}.",
    "{Channel}, a {gender} speaker sounds {emo}, talking {rate} and {loud} in a {pitch}, {vq} voice with {inton}.",
)


def _channel_phrase(spec: UttSpec) -> str:
    ch = spec.channel
    if ch.get("band"):
        noisy = "noisy " if spec.snr_db < 15 else ""
        room = " from a reverberant room" if spec.rt60 and spec.rt60 >= 0.3 else ""
        return f"heard over a {noisy}telephone line{room}"
    if spec.rt60 and spec.rt60 >= 0.3:
        return "recorded in a reverberant room"
    return "recorded in a quiet studio" if spec.snr_db >= 30 else "recorded with some background noise"


def describe(spec: UttSpec, tg: Targets, gender_f0_hz: dict[str, float], neutral_syllable_s: float) -> str:
    """The caption of one utterance (``gender_f0_hz``: population mean F0 per gender)."""
    g = "female" if spec.speaker.gender == "f" else "male"
    rel_st = 12.0 * np.log2(tg.f0_hz / gender_f0_hz[g])
    pitch = "high-pitched" if rel_st > 2.5 else "low-pitched" if rel_st < -2.5 else "medium-pitched"
    level = tg.loudness_dbfs - BASE_LEVEL_DBFS
    loud = "loudly" if level > 4 else "softly" if level < -4 else "at a normal volume"
    ratio = tg.syllable_s / neutral_syllable_s
    rate = "quickly" if ratio < 0.87 else "slowly" if ratio > 1.15 else "at an even pace"
    inton = ("lively intonation" if tg.f0_range_st > 4.0 else "flat intonation" if tg.f0_range_st < 1.8
             else "moderately varied intonation")
    if tg.contour > 0.4:
        inton += " that rises at the end"
    elif tg.contour < -0.4:
        inton += " that falls at the end"
    vq = ("tense" if tg.tension > 0.4 else "breathy" if tg.breathiness > 0.45 else "creaky" if tg.creak > 0.4
          else "clear")
    strength = spec.intensity * spec.expression * spec.speaker.gain(spec.emotion, "voice")
    rng = np.random.default_rng([spec.seed, 7])
    words = EMOTION_WORDS.get(spec.emotion, (spec.emotion,))
    word = words[int(rng.integers(len(words)))]
    adverb = "slightly " if strength < 0.6 else "very " if strength > 1.1 else ""
    emo = word if spec.emotion == "neutral" else adverb + word
    pron = "she" if g == "female" else "he"
    channel = _channel_phrase(spec)
    template = TEMPLATES[int(rng.integers(len(TEMPLATES)))]
    return template.format(gender=g, pitch=pitch, vq=vq, rate=rate, loud=loud, inton=inton, channel=channel,
                           Channel=channel[0].upper() + channel[1:], pron=pron, Pron=pron.capitalize(), emo=emo)
