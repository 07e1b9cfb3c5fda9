"""Emotion "views" as text: what SELM learns to generate and how it is read back.

A view is a sequence of *slots*, each a header and a closed set of values:

* categorical: ``emotion: angry``
* sentiment:   ``sentiment: negative`` (derived from the canonical emotion)
* dimensional: ``arousal: high, valence: low, dominance: high`` (binned A/V/D)

Because every slot's values are known, decoding is constrained: each slot
picks the best-scoring value string, so a generated view always parses, and a
categorical decision is a single slot. Views are built from whatever labels an
utterance has; a corpus without A/V/D simply yields no dimensional example.
"""
from __future__ import annotations

from dataclasses import dataclass

# Canonical emotion -> sentiment (sertk.data.labels.CANONICAL_EMOTIONS); "other" has none.
SENTIMENT_OF = {
    "neutral": "neutral", "calm": "neutral",
    "happy": "positive", "surprised": "positive",
    "sad": "negative", "angry": "negative", "fearful": "negative", "disgusted": "negative",
    "contempt": "negative",
}
SENTIMENTS = ["negative", "neutral", "positive"]
LEVELS = ["low", "mid", "high"]
AVD = ["arousal", "valence", "dominance"]
VIEW_NAMES = ("categorical", "sentiment", "dimensional")


@dataclass(frozen=True)
class Slot:
    header: str            # text before the value, e.g. "emotion:" or ", valence:"
    values: tuple[str, ...]


@dataclass(frozen=True)
class View:
    name: str
    slots: tuple[Slot, ...]

    def text(self, values: list[str]) -> str:
        return "".join(f"{s.header} {v}" for s, v in zip(self.slots, values))


def make_views(names: list[str], classes: list[str]) -> dict[str, View]:
    """The views a model is trained on; ``classes`` are the categorical values."""
    out = {}
    for n in names:
        if n == "categorical":
            out[n] = View(n, (Slot("emotion:", tuple(classes)),))
        elif n == "sentiment":
            out[n] = View(n, (Slot("sentiment:", tuple(SENTIMENTS)),))
        elif n == "dimensional":
            out[n] = View(n, tuple(Slot(f"{d}:" if i == 0 else f", {d}:", tuple(LEVELS))
                                   for i, d in enumerate(AVD)))
        else:
            raise ValueError(f"unknown SELM view {n!r}; choose from {', '.join(VIEW_NAMES)}")
    return out


def level(value: float, thresholds: tuple[float, float]) -> str:
    """Bin a dimensional rating: below the first threshold low, above the second high."""
    lo, hi = thresholds
    return "low" if value < lo else ("high" if value > hi else "mid")


def view_values(view: View, emotion: str | None, avd: tuple[float, float, float] | None,
                thresholds: tuple[float, float]) -> list[str] | None:
    """The slot values of ``view`` for one utterance, or None when its labels cannot give them."""
    if view.name == "categorical":
        return [emotion] if emotion in view.slots[0].values else None
    if view.name == "sentiment":
        s = SENTIMENT_OF.get(emotion or "")
        return [s] if s else None
    if view.name == "dimensional":
        return None if avd is None else [level(v, thresholds) for v in avd]
    raise ValueError(f"unknown view {view.name!r}")


def map_gold(gold: str, mapping: dict[str, str], classes: list[str]) -> str | None:
    """A test corpus's (canonical) gold class -> the model's class, or None if it has none.

    ``mapping`` documents the merges a test corpus needs when the model never
    saw one of its classes (RAVDESS ``calm -> neutral`` for a model trained
    without calm); shared names map to themselves.
    """
    out = mapping.get(gold, gold)
    return out if out in classes else None
