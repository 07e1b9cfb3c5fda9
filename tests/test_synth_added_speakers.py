"""``added_speakers`` enlarges a domain's test (or dev) set without touching any existing speaker or utterance."""
from pathlib import Path

import pytest

from sertk.common.config import ConfigError, load_config
from sertk.data.synth import plan_corpus, validate_config
from sertk.data.synth.corpus import data_dirs

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "egs/mini_emo/conf/synth.yaml"
# the default config without its added speakers, shrunk to a few speakers of 4 utterances
TINY = ["domains.studio.added_speakers={}", "domains.phone.added_speakers={}"] + [
    f"domains.{d}.{k}" for d in ("studio", "phone")
    for k in ("speakers.train=2", "speakers.dev=1", "speakers.test=2", "utts_per_speaker=4")]


def tiny(*extra):
    return load_config(CONFIG, TINY + list(extra))


def test_added_speakers_leave_every_existing_utterance_identical():
    before = plan_corpus(tiny())
    after = plan_corpus(tiny("domains.studio.added_speakers.test=3", "domains.phone.added_speakers.test=2",
                             "domains.phone.added_speakers.dev=1"))
    assert after[:len(before)] == before  # every spec (voice, style, labels, channel, seeds) unchanged
    added = after[len(before):]
    per_set = {}
    for s in added:
        per_set.setdefault((s.domain, s.speaker.split), set()).add(s.speaker.spk)
    assert {k: len(v) for k, v in per_set.items()} == {("studio", "test"): 3, ("phone", "test"): 2,
                                                        ("phone", "dev"): 1}
    old_ids = {s.speaker.spk for s in before}
    assert not old_ids & {s.speaker.spk for s in added}  # numbered on: new people
    assert len({(s.speaker.f0_hz, s.speaker.vtl_scale) for s in added}) == 6  # each on its own stream


def test_added_test_speakers_join_the_domains_test_set():
    cfg = tiny("domains.phone.added_speakers.test=2")
    dirs = data_dirs(plan_corpus(cfg), cfg, Path("/audio"))
    assert len(set(dirs["phone_test"].utt2spk.values())) == 4
    assert len(set(dirs["studio_test"].utt2spk.values())) == 2
    assert len(set(dirs["phone_train"].utt2spk.values())) == 2


def test_default_config_adds_test_speakers_only():
    cfg = load_config(CONFIG)
    specs = plan_corpus(cfg)
    for domain, d in cfg["domains"].items():
        spk = {s.speaker.spk for s in specs if s.domain == domain and s.speaker.split == "test"}
        assert len(spk) == d["speakers"]["test"] + d["added_speakers"]["test"] > 4
        assert "train" not in d["added_speakers"] and "dev" not in d["added_speakers"]


@pytest.mark.parametrize("override, key", [
    ("domains.studio.added_speakers.train=2", "domains.studio.added_speakers"),
    ("domains.phone.added_speakers.test=-1", "domains.phone.added_speakers.test"),
    ("domains.phone.added_speakers.dev=1.5", "domains.phone.added_speakers.dev"),
    ("domains.phone.added_speakers=3", "domains.phone.added_speakers"),
])
def test_bad_added_speakers_are_named(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        validate_config(tiny(override))
