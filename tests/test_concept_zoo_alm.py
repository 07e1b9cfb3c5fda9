"""The zoo ALM learns the concept-token vocabulary from acoustic descriptions only (issue 22, item 12): no
training example that carries tokens names an emotion, the emotion question never carries tokens, and the
descriptions say each level in words."""
import itertools
import re
from pathlib import Path

import pytest

from sertk.data.synth.caption import EMOTION_WORDS
from sertk.features import concept_tokens as ct
from sertk.models.generative_alm import emotion_prompt
from sertk.zoo.generative_alm import (DEFAULT_PROMPTS, describe, describe_prompt, instruction_examples, level_words,
                                      parse_description)
from sertk.zoo.pool import Pool
from zoo_fixtures import small_pool

ROOT = Path(__file__).resolve().parent.parent
LEVELS = ("low", "mid", "high")


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    root = tmp_path_factory.mktemp("pool")
    small_pool(root, 2, 8)
    return Pool.load(root / "data/pretrain")


def _names_an_emotion(text: str, labels) -> bool:
    words = {w for syn in EMOTION_WORDS.values() for w in syn} | set(labels)
    return any(re.search(rf"(?<![a-z]){re.escape(w)}(?![a-z])", text.lower()) for w in words)


def test_tokens_are_never_paired_with_an_emotion_label(pool):
    utts = pool.utts
    tokens = {u: {c: LEVELS[(i + j) % 3] for j, c in enumerate(ct.CONCEPTS)} for i, u in enumerate(utts[::2])}
    ex = instruction_examples(pool, tokens, DEFAULT_PROMPTS, share=1.0, caption_share=1.0, seed=0)
    labels = pool.emotions
    plain = emotion_prompt(DEFAULT_PROMPTS["emotion"], labels)
    block = DEFAULT_PROMPTS["token_block"].split("{")[0]  # "Acoustic cues: "
    with_tokens = [(u, t, a) for u, t, a in ex if block in t]
    assert len(with_tokens) == len(tokens)  # share 1.0: every described utterance once with its token block
    assert not any(_names_an_emotion(a, labels) for _, _, a in with_tokens)
    # the emotion question: every utterance, never with tokens, answered by its label
    emotion = [(u, t, a) for u, t, a in ex if a in labels]
    assert sorted(u for u, _, _ in emotion) == sorted(utts) and {t for _, t, _ in emotion} == {plain}
    assert all(a == pool.datadir.utt2emo[u] for u, _, a in emotion)
    # the descriptions: the levels in words, from the audio alone and with the token block
    for u, toks in tokens.items():
        said = {t: a for v, t, a in ex if v == u and t.startswith(DEFAULT_PROMPTS["describe"])}
        assert said == {describe_prompt(DEFAULT_PROMPTS): describe(toks),
                        describe_prompt(DEFAULT_PROMPTS, toks): describe(toks)}
    assert not any(t.startswith(DEFAULT_PROMPTS["describe"]) for u, t, _ in ex if u not in tokens)


def test_a_description_says_every_level_in_words_and_reads_back():
    for levels in itertools.product(LEVELS, repeat=len(ct.CONCEPTS)):
        toks = dict(zip(ct.CONCEPTS, levels))
        text = describe(toks)
        assert ":" not in text and "mid" not in text and "high " not in text  # words, not the token vocabulary
        assert parse_description(text, ct.CONCEPTS, LEVELS) == toks
    assert describe({"energy": "high", "pitch": "low"}) == "loud, low-pitched"
    assert level_words("pitch", "very high") == "very high-pitched"
    assert parse_description("Loud, medium-pitched, purple.", ct.CONCEPTS, LEVELS) == {
        "energy": "high", "pitch": "mid"}


def test_recipe_zoo_alm_entry_is_valid_and_asks_for_descriptions():
    import yaml

    from sertk.zoo.generative_alm import check

    entry = yaml.safe_load((ROOT / "egs/mini_emo/conf/zoo.yaml").read_text())["models"]["alm"]
    check(entry, "zoo.yaml: alm")
    assert entry["prompts"]["describe"] and "{" not in entry["prompts"]["describe"]
