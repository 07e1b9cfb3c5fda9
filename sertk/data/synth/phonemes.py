"""The synthetic phoneme inventory: what each letter of the lexicon sounds like.

Vowels are formant targets of an adult male vocal tract (Peterson-Barney-like
values; a speaker's vocal-tract length scales them). Consonants are described
by how the renderer realises them: a noise burst or frication in three bands,
a voiced nasal/liquid murmur, and an optional silent closure.
"""
from __future__ import annotations

from dataclasses import dataclass

# Formant frequencies (Hz) and bandwidths (Hz) for a reference male tract.
VOWELS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "a": ((730.0, 1090.0, 2440.0, 3400.0), (90.0, 110.0, 160.0, 250.0)),
    "e": ((530.0, 1840.0, 2480.0, 3500.0), (70.0, 100.0, 160.0, 250.0)),
    "i": ((270.0, 2290.0, 3010.0, 3700.0), (60.0, 100.0, 170.0, 250.0)),
    "o": ((570.0, 840.0, 2410.0, 3400.0), (80.0, 100.0, 160.0, 250.0)),
    "u": ((300.0, 870.0, 2240.0, 3400.0), (60.0, 100.0, 160.0, 250.0)),
}
# Voiced consonant "tracts": nasal murmur and the two liquids.
MURMURS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "nasal": ((250.0, 1100.0, 2500.0), (100.0, 300.0, 300.0)),
    "l": ((360.0, 1300.0, 2700.0), (80.0, 150.0, 200.0)),
    "r": ((420.0, 1300.0, 1650.0), (80.0, 150.0, 200.0)),
}
TRACTS = tuple(VOWELS) + tuple(MURMURS)

# Noise bands (Hz, reference tract) in which bursts and frication are shaped.
NOISE_BANDS = ((400.0, 1500.0), (1500.0, 3500.0), (3500.0, 7500.0))


@dataclass(frozen=True)
class Consonant:
    """How one consonant letter is rendered.

    ``closure``: silent (or voice-bar) stop gap before the release (s);
    ``noise``: duration of burst/frication (s); ``bands``: noise level in the
    low/mid/high band relative to the vowel; ``murmur``: voiced tract used for
    nasals, liquids and voiced stops' voice bar (None = unvoiced).
    """

    closure: float
    noise: float
    bands: tuple[float, float, float]
    murmur: str | None = None
    murmur_dur: float = 0.0
    murmur_level: float = 0.0


CONSONANTS: dict[str, Consonant] = {
    "p": Consonant(0.050, 0.030, (0.30, 0.15, 0.05)),
    "t": Consonant(0.045, 0.030, (0.05, 0.15, 0.35)),
    "k": Consonant(0.050, 0.035, (0.10, 0.35, 0.08)),
    "b": Consonant(0.040, 0.012, (0.20, 0.08, 0.03), "nasal", 0.040, 0.12),
    "d": Consonant(0.035, 0.012, (0.04, 0.10, 0.20), "nasal", 0.035, 0.12),
    "g": Consonant(0.040, 0.015, (0.06, 0.22, 0.05), "nasal", 0.040, 0.12),
    "s": Consonant(0.0, 0.090, (0.0, 0.06, 0.40)),
    "sh": Consonant(0.0, 0.090, (0.02, 0.35, 0.10)),
    "f": Consonant(0.0, 0.080, (0.06, 0.07, 0.09)),
    "h": Consonant(0.0, 0.060, (0.08, 0.10, 0.04)),
    "m": Consonant(0.0, 0.0, (0.0, 0.0, 0.0), "nasal", 0.065, 0.35),
    "n": Consonant(0.0, 0.0, (0.0, 0.0, 0.0), "nasal", 0.060, 0.35),
    "l": Consonant(0.0, 0.0, (0.0, 0.0, 0.0), "l", 0.050, 0.55),
    "r": Consonant(0.0, 0.0, (0.0, 0.0, 0.0), "r", 0.045, 0.50),
}


def split_syllables(word: str) -> list[tuple[str, str]]:
    """Split a lexicon word into (onset consonant or '', vowel) syllables.

    Words are strings of optional-consonant + vowel units ("shalo" ->
    [("sh","a"), ("l","o")]); anything else is a lexicon error.
    """
    out: list[tuple[str, str]] = []
    i = 0
    while i < len(word):
        onset = ""
        for c in sorted(CONSONANTS, key=len, reverse=True):
            if word.startswith(c, i):
                onset = c
                i += len(c)
                break
        if i >= len(word) or word[i] not in VOWELS:
            raise ValueError(f"word {word!r}: expected a vowel at position {i} (syllables are [consonant]vowel)")
        out.append((onset, word[i]))
        i += 1
    return out
