"""Concept tokens: thresholds are training quantiles, levels follow the audio, scopes, text, perturbations."""
from __future__ import annotations

import json

import numpy as np
import pytest

from sertk.bin import concept_tokens as cli
from sertk.features import concept_tokens as ct
from sertk.features.concept_tokens import (CONCEPTS, TOKEN_FEATURES, ConceptTokenizer, TokenError, conflict_tokens,
                                           corrupt_tokens, derangement, read_utt2tokens, render, shuffle_tokens)
from sertk.features.egemaps import EgemapsExtractor, feature_names
from sertk.features.store import write_ark_scp

NAMES = feature_names()
PITCH = "F0semitoneFrom27.5Hz_sma3nz_amean"


def random_feats(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, len(NAMES))) + 5.0


def test_every_token_functional_is_an_egemaps_name():
    assert tuple(TOKEN_FEATURES) == CONCEPTS
    for concept, spec in TOKEN_FEATURES.items():
        for name, sign in spec:
            assert name in NAMES, (concept, name)
            assert sign in (-1, 1)


def test_thresholds_are_tertiles_of_the_training_data():
    x = random_feats(9)
    x[:, NAMES.index(PITCH)] = np.arange(1, 10)  # pitch is one functional: its cut points are plain tertiles
    tok = ConceptTokenizer().fit(x, feature_names=NAMES)
    mu, sd = tok.stats[PITCH]
    raw_cuts = mu + sd * np.array(tok.global_thresholds["pitch"])
    np.testing.assert_allclose(raw_cuts, [11 / 3, 19 / 3])  # np.quantile([1..9], [1/3, 2/3])
    levels = [t["pitch"] for t in tok.transform(x, feature_names=NAMES)]
    assert levels == ["low"] * 3 + ["mid"] * 3 + ["high"] * 3
    # Every concept is split into thirds of the training utterances.
    for c in CONCEPTS:
        counts = [sum(t[c] == lvl for t in tok.transform(x, feature_names=NAMES)) for lvl in ("low", "mid", "high")]
        assert counts == [3, 3, 3], (c, counts)


def test_thresholds_come_from_training_data_only():
    train = random_feats(30, seed=1)
    test = random_feats(30, seed=2) + 100.0  # a much larger test set must not move the cut points
    tok = ConceptTokenizer().fit(train, feature_names=NAMES)
    before = json.dumps(tok.to_dict(), sort_keys=True)
    tokens = tok.transform(test, feature_names=NAMES)
    assert json.dumps(tok.to_dict(), sort_keys=True) == before
    assert all(t["energy"] == "high" for t in tokens)


def test_four_levels_use_quartiles():
    x = random_feats(8)
    x[:, NAMES.index(PITCH)] = np.arange(8)
    tok = ConceptTokenizer(levels=ct.level_names(4)).fit(x, feature_names=NAMES)
    assert [t["pitch"] for t in tok.transform(x, feature_names=NAMES)] == \
        ["very low"] * 2 + ["low"] * 2 + ["high"] * 2 + ["very high"] * 2


def harmonic(f0: float, amp: float, tilt: float = 1.0, seconds: float = 0.6, sr: int = 16000) -> np.ndarray:
    t = np.arange(int(sr * seconds)) / sr
    x = sum(k ** -tilt * np.sin(2 * np.pi * f0 * k * t) for k in range(1, 25) if f0 * k < sr / 2)
    return (amp * x / np.abs(x).max()).astype(np.float32)


@pytest.fixture(scope="module")
def extractor():
    return EgemapsExtractor()


def test_louder_higher_brighter_signals_get_high_levels(extractor):
    rng = np.random.default_rng(0)
    train = []
    for _ in range(12):  # a spread of loudness, pitch and spectral tilt
        train.append(extractor.extract(harmonic(rng.uniform(120, 220), rng.uniform(0.05, 0.4),
                                                rng.uniform(0.8, 1.6)), 16000))
    tok = ConceptTokenizer().fit(np.stack(train), feature_names=NAMES)
    probe = np.stack([
        extractor.extract(harmonic(170, 0.9, 1.2), 16000),   # very loud
        extractor.extract(harmonic(170, 0.01, 1.2), 16000),  # very quiet
        extractor.extract(harmonic(330, 0.2, 1.2), 16000),   # very high pitch
        extractor.extract(harmonic(90, 0.2, 1.2), 16000),    # very low pitch
        extractor.extract(harmonic(170, 0.2, 0.3), 16000),   # flat spectrum: bright
        extractor.extract(harmonic(170, 0.2, 2.5), 16000),   # steep tilt: dark
    ])
    t = tok.transform(probe, feature_names=NAMES)
    assert (t[0]["energy"], t[1]["energy"]) == ("high", "low")
    assert (t[2]["pitch"], t[3]["pitch"]) == ("high", "low")
    assert (t[4]["brightness"], t[5]["brightness"]) == ("high", "low")


def two_speaker_data(n_per: int = 12):
    """Speaker 'lo' has pitch 1..n, speaker 'hi' pitch 101..100+n."""
    x = random_feats(2 * n_per, seed=3)
    pitch = np.concatenate([np.arange(1, n_per + 1), 100 + np.arange(1, n_per + 1)]).astype(float)
    x[:, NAMES.index(PITCH)] = pitch
    speakers = ["lo"] * n_per + ["hi"] * n_per
    return x, speakers


def test_speaker_scope_bins_each_speaker_with_its_own_thresholds():
    x, spk = two_speaker_data()
    glob = ConceptTokenizer(scope="global").fit(x, spk, NAMES)
    g = [t["pitch"] for t in glob.transform(x, spk, NAMES)]
    assert set(g[:12]) == {"low", "mid"} and set(g[12:]) == {"mid", "high"}  # global: speaker identity dominates
    per = ConceptTokenizer(scope="speaker", min_speaker_utts=6).fit(x, spk, NAMES)
    assert set(per.speaker_thresholds) == {"lo", "hi"}
    assert per.speaker_thresholds["lo"]["pitch"] != per.speaker_thresholds["hi"]["pitch"]
    p = [t["pitch"] for t in per.transform(x, spk, NAMES)]
    assert p[:12] == ["low"] * 4 + ["mid"] * 4 + ["high"] * 4
    assert p[12:] == ["low"] * 4 + ["mid"] * 4 + ["high"] * 4


def test_unseen_speaker_uses_own_utterances_or_global_thresholds():
    x, spk = two_speaker_data()
    new = random_feats(6, seed=9)
    new[:, NAMES.index(PITCH)] = 500 + np.arange(6)  # far above every training speaker
    selfish = ConceptTokenizer(scope="speaker", unseen="self", min_speaker_utts=6).fit(x, spk, NAMES)
    assert [t["pitch"] for t in selfish.transform(new, ["new"] * 6, NAMES)] == ["low"] * 2 + ["mid"] * 2 + ["high"] * 2
    fallback = ConceptTokenizer(scope="speaker", unseen="global", min_speaker_utts=6).fit(x, spk, NAMES)
    assert [t["pitch"] for t in fallback.transform(new, ["new"] * 6, NAMES)] == ["high"] * 6
    # Too few utterances for its own quantiles: the global thresholds are used.
    assert [t["pitch"] for t in selfish.transform(new[:2], ["new"] * 2, NAMES)] == ["high"] * 2
    with pytest.raises(TokenError, match="speaker"):
        selfish.transform(new, None, NAMES)


def test_render_and_parse():
    tokens = {"energy": "high", "pitch": "mid", "dynamics": "low", "brightness": "mid", "formants": "high",
              "voice quality": "low"}
    text = render(tokens)
    assert text == "energy: high, pitch: mid, dynamics: low, brightness: mid, formants: high, voice quality: low"
    assert ct.parse(text) == tokens
    with pytest.raises(TokenError):
        ct.parse("energy high")


def test_save_load_round_trip(tmp_path):
    x, spk = two_speaker_data()
    tok = ConceptTokenizer(scope="speaker", min_speaker_utts=6).fit(x, spk, NAMES)
    tok.save(tmp_path / "thresholds.json")
    back = ConceptTokenizer.load(tmp_path / "thresholds.json")
    assert back.to_dict() == tok.to_dict()
    assert back.concepts == list(CONCEPTS)
    assert [render(t) for t in back.transform(x, spk, NAMES)] == [render(t) for t in tok.transform(x, spk, NAMES)]
    d = json.loads((tmp_path / "thresholds.json").read_text())
    d["thresholds"]["global"]["pitch"] = [0.0]
    (tmp_path / "bad.json").write_text(json.dumps(d))
    with pytest.raises(TokenError, match="bad.json"):
        ConceptTokenizer.load(tmp_path / "bad.json")


def test_non_finite_features_name_the_utterance():
    x = random_feats(5)
    x[3, NAMES.index("HNRdBACF_sma3nz_amean")] = np.nan
    with pytest.raises(TokenError, match="u3"):
        ConceptTokenizer().fit(x, feature_names=NAMES, utts=[f"u{i}" for i in range(5)])


TOKENS = [{"energy": "low", "pitch": "mid", "voice quality": "high"},
          {"energy": "high", "pitch": "low", "voice quality": "mid"},
          {"energy": "mid", "pitch": "high", "voice quality": "low"},
          {"energy": "high", "pitch": "high", "voice quality": "high"}]


def test_conflicting_tokens_contradict_the_audio_in_every_slot():
    """low <-> high, and mid (no mirror) moves to low or high, seeded per slot: no slot keeps its level."""
    flipped = conflict_tokens(TOKENS * 20, seed=1)
    for t, f in zip(TOKENS * 20, flipped):
        for c in t:
            assert f[c] == {"low": "high", "high": "low"}[t[c]] if t[c] != "mid" else f[c] in ("low", "high")
    assert {f["pitch"] for t, f in zip(TOKENS * 20, flipped) if t["pitch"] == "mid"} == {"low", "high"}
    assert ct.changed_figures(flipped, TOKENS * 20) == {"utterances_changed": 1.0, "slots_changed": 1.0}
    assert conflict_tokens(TOKENS, seed=1) == conflict_tokens(TOKENS, seed=1)
    five = ct.level_names(5)
    assert [conflict_tokens([{"e": lvl}], five, seed=0)[0]["e"] != lvl for lvl in five] == [True] * 5
    assert conflict_tokens([{"e": "very low"}], five)[0] == {"e": "very high"}


def test_changed_figures_count_utterances_with_any_change_and_slots_apart():
    aligned = [{"a": "low", "b": "mid", "c": "high"}] * 4
    perturbed = [{"a": "high", "b": "mid", "c": "high"}, dict(aligned[0]), dict(aligned[0]),
                 {"a": "mid", "b": "low", "c": "low"}]
    assert ct.changed_figures(perturbed, aligned) == {"utterances_changed": 0.5, "slots_changed": 4 / 12}


def test_shuffle_gives_every_utterance_another_ones_tokens():
    for seed in range(5):
        perm = derangement(7, seed)
        assert sorted(perm) == list(range(7)) and all(perm[i] != i for i in range(7))
    shuffled = shuffle_tokens(TOKENS, seed=3)
    perm = derangement(len(TOKENS), 3)
    assert shuffled == [TOKENS[j] for j in perm]
    assert shuffle_tokens(TOKENS, seed=3) == shuffled
    assert any(not np.array_equal(derangement(10, 0), derangement(10, s)) for s in range(1, 4))
    with pytest.raises(ValueError):
        shuffle_tokens(TOKENS[:1])


def test_corrupt_draws_uniform_random_levels_per_seed():
    many = TOKENS * 300
    a = corrupt_tokens(many, seed=0)
    assert a == corrupt_tokens(many, seed=0) and a != corrupt_tokens(many, seed=1)
    for c in TOKENS[0]:
        share = np.mean([t[c] == "high" for t in a])
        assert abs(share - 1 / 3) < 0.05
    assert np.mean([t["energy"] == o["energy"] for t, o in zip(a, many)]) < 0.45  # no longer tied to the audio


def write_store(root, utts, x):
    write_ark_scp(dict(zip(utts, x)), root / "feats.ark", root / "feats.scp")
    (root / "feature_names.txt").write_text("\n".join(NAMES) + "\n")
    return root


def write_dir(d, utts, spk):
    d.mkdir(parents=True)
    (d / "wav.scp").write_text("".join(f"{u} /nonexistent/{u}.wav\n" for u in utts))
    (d / "utt2spk").write_text("".join(f"{u} {s}\n" for u, s in zip(utts, spk)))
    return d


def test_cli_fits_on_train_and_writes_tokens_and_thresholds(tmp_path):
    x, spk = two_speaker_data()
    utts = [f"u{i:02d}_{s}" for i, s in enumerate(spk)]
    train = write_dir(tmp_path / "data" / "train", utts, spk)
    store = write_store(tmp_path / "dump" / "train", utts, x)
    test_x = random_feats(6, seed=5)
    test_x[:, NAMES.index(PITCH)] = [0, 50, 200, 0, 50, 200]
    test_utts = [f"t{i}" for i in range(6)]
    test = write_dir(tmp_path / "data" / "test", test_utts, ["t"] * 6)
    test_store = write_store(tmp_path / "dump" / "test", test_utts, test_x)
    out = tmp_path / "tokens"
    rc = cli.main(["--fit-data", str(train), "--fit-feats", str(store), "--data", str(test),
                   "--feats", str(test_store / "feats.scp"), "--out", str(out)])
    assert rc == 0
    tokens = read_utt2tokens(out / "utt2tokens")
    assert list(tokens) == test_utts
    assert [tokens[u]["pitch"] for u in test_utts] == ["low", "mid", "high"] * 2
    assert list(tokens["t0"]) == list(CONCEPTS)
    line = (out / "utt2tokens").read_text().splitlines()[0]
    assert line.startswith("t0 energy: ") and ", voice quality: " in line
    saved = ConceptTokenizer.load(out / "thresholds.json")
    assert saved.scope == "global" and saved.num_train_utts == 24
    # Re-using the saved thresholds gives the same tokens without the training data.
    out2 = tmp_path / "tokens2"
    assert cli.main(["--thresholds", str(out / "thresholds.json"), "--data", str(test),
                     "--feats", str(test_store), "--out", str(out2)]) == 0
    assert (out2 / "utt2tokens").read_text() == (out / "utt2tokens").read_text()
    # Features missing for a test utterance: a clear failure, no output.
    (test / "utt2spk").write_text((test / "utt2spk").read_text() + "t9 t\n")
    (test / "wav.scp").write_text((test / "wav.scp").read_text() + "t9 /nonexistent/t9.wav\n")
    assert cli.main(["--thresholds", str(out / "thresholds.json"), "--data", str(test),
                     "--feats", str(test_store), "--out", str(tmp_path / "tokens3")]) == 1
    assert not (tmp_path / "tokens3" / "utt2tokens").exists()
