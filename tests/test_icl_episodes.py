"""Emotion-diverse meta-training episodes: enrolment covering as many emotions as k and the speaker allow."""
from __future__ import annotations

import pytest

from sertk.data.episodes import EpisodeSampler, diverse_possible, group_by_speaker
from sertk.tasks import check_config

CLASSES = ["neutral", "happy", "angry", "sad"]
# skewed like real corpora: mostly neutral, one or two of the rest; s3 never sounds angry
MIX = {"s0": "NNNNNNNNHHAS", "s1": "NNNNNNNHHHAS", "s2": "NNNNNNNNNHAS", "s3": "NNNNNNNNNHHS"}
CODE = dict(zip("NHAS", CLASSES))


def _roster():
    labels = {f"{s}_{i:02d}": CODE[c] for s, mix in MIX.items() for i, c in enumerate(mix)}
    return group_by_speaker(list(labels), {u: u.split("_")[0] for u in labels}), labels


def _available(spk_utts, labels, query):
    return len({labels[u] for u in spk_utts if u != query})


def test_diverse_enrolment_covers_min_k_and_the_speakers_classes():
    speakers, labels = _roster()
    sampler = EpisodeSampler(speakers, [0, 1, 2, 3, 4, 8, 11], seed=3, diverse=True, labels=labels)
    episodes = sampler.episodes(600, epoch=1)
    assert episodes == sampler.episodes(600, epoch=1)  # still a function of (seed, epoch): resumable, DDP-exact
    for e in episodes:
        assert {u.split("_")[0] for u in (*e.enrol, e.query)} == {e.speaker}
        assert e.query not in e.enrol and len(set(e.enrol)) == len(e.enrol)
        want = min(len(e.enrol), _available(speakers[e.speaker], labels, e.query))
        assert len({labels[u] for u in e.enrol}) == want, e
    assert {len(e.enrol) for e in episodes} == {0, 1, 2, 3, 4, 8, 11}
    # every class still shows up as a query, at its natural rate (the query is drawn uniformly)
    assert {labels[e.query] for e in episodes} == set(CLASSES)


def test_arbitrary_enrolment_often_repeats_a_class_while_another_is_missing():
    speakers, labels = _roster()
    episodes = EpisodeSampler(speakers, [2, 3, 4], seed=3).episodes(600, epoch=1)
    short = [e for e in episodes
             if len({labels[u] for u in e.enrol}) < min(len(e.enrol), _available(speakers[e.speaker], labels, e.query))]
    assert len(short) > 200  # with mostly-neutral speakers most arbitrary draws are neutral-heavy


def test_the_auto_rule_needs_a_speaker_with_room_for_a_query_and_two_emotions():
    speakers, labels = _roster()
    assert diverse_possible(speakers, labels)
    one_class = {u: "neutral" for u in labels}
    assert not diverse_possible(speakers, one_class)
    pairs = {"a": ["a1", "a2"], "b": ["b1", "b2"]}  # two utterances: a query and a single enrolment
    assert not diverse_possible(pairs, {"a1": "x", "a2": "y", "b1": "x", "b2": "y"})
    with pytest.raises(ValueError, match="needs the utterances' labels"):
        EpisodeSampler(speakers, [2], diverse=True)


def test_diverse_is_a_validated_config_option():
    base = {"task": "icl", "model": {"encoder": {"name_or_path": "enc"}, "lm": {"name_or_path": "lm"}}}
    for value in (True, False, "auto"):
        check_config({**base, "episodes": {"k": [0, 2], "diverse": value}}, "icl.yaml")
    with pytest.raises(ValueError, match="episodes.diverse must be true, false or auto"):
        check_config({**base, "episodes": {"k": [0, 2], "diverse": "yes"}}, "icl.yaml")
