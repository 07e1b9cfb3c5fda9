"""A small made-up lexicon of syllable words and the sentences built from them.

Text is independent of emotion (as in acted corpora, every sentence can be
spoken in every emotion), so the words carry no label information; they only
vary the phonetic content that the prosody is laid over.
"""
from __future__ import annotations

import numpy as np

from sertk.data.synth.phonemes import CONSONANTS, VOWELS, split_syllables


def make_lexicon(n_words: int, syllables: tuple[int, int], seed: int) -> list[str]:
    """``n_words`` distinct words of ``syllables[0]..syllables[1]`` CV syllables."""
    rng = np.random.default_rng([seed, 101])
    onsets = sorted(CONSONANTS)
    vowels = sorted(VOWELS)
    words: list[str] = []
    seen: set[str] = set()
    attempts = 0
    while len(words) < n_words:
        attempts += 1
        if attempts > 1000 * n_words:
            raise ValueError(f"cannot make {n_words} distinct words of {syllables} syllables")
        n = int(rng.integers(syllables[0], syllables[1] + 1))
        word = ""
        for i in range(n):
            # most syllables have an onset; vowel-initial words are allowed
            if i > 0 or rng.random() < 0.85:
                word += onsets[int(rng.integers(len(onsets)))]
            word += vowels[int(rng.integers(len(vowels)))]
        if word not in seen:
            seen.add(word)
            words.append(word)
    return words


def make_sentences(words: list[str], n_sentences: int, n_syllables: tuple[int, int], seed: int) -> list[list[str]]:
    """Sentences as word lists whose syllable count lies in ``n_syllables``."""
    rng = np.random.default_rng([seed, 202])
    sylls = {w: len(split_syllables(w)) for w in words}
    if min(sylls.values()) > n_syllables[1]:
        raise ValueError(f"no word is short enough for sentences of at most {n_syllables[1]} syllables")
    sentences: list[list[str]] = []
    seen: set[tuple[str, ...]] = set()
    attempts = 0
    while len(sentences) < n_sentences:
        attempts += 1
        if attempts > 1000 * n_sentences:
            raise ValueError(f"cannot make {n_sentences} distinct sentences of {n_syllables} syllables")
        target = int(rng.integers(n_syllables[0], n_syllables[1] + 1))
        sent: list[str] = []
        total = 0
        while total < target:
            fitting = [w for w in words if sylls[w] <= target - total]
            if not fitting:
                break
            w = fitting[int(rng.integers(len(fitting)))]
            sent.append(w)
            total += sylls[w]
        if total >= n_syllables[0] and len(sent) >= 2 and tuple(sent) not in seen:
            seen.add(tuple(sent))
            sentences.append(sent)
    return sentences
