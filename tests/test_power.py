"""The MDD simulation decides as sertk compare does, holds its size at d = 0, and matches McNemar where it should."""
import json
from pathlib import Path

import numpy as np
import pytest

from sertk.eval import power as P
from sertk.eval.significance import paired_bootstrap

CLASSES = ["angry", "happy", "neutral", "sad"]


def synthetic(n_speakers: int, per_class: int, recall: float, seed: int = 0):
    """gold, speakers, correctness: every speaker says every class ``per_class`` times; a share ``recall`` right."""
    rng = np.random.default_rng(seed)
    gold = CLASSES * per_class * n_speakers
    spk = [f"s{i:03d}" for i in range(n_speakers) for _ in range(per_class * len(CLASSES))]
    return gold, spk, rng.random(len(gold)) < recall


def test_speaker_counts_and_uar_follow_the_decisions():
    c = P.speaker_counts(["a", "a", "b", "b", "b"], ["x", "y", "x", "x", "y"], [True, False, True, False, False])
    assert c.support.tolist() == [[1, 2], [1, 1]] and c.correct.tolist() == [[1, 1], [0, 0]]
    assert c.uar == pytest.approx((1 / 2 + 1 / 3) / 2)
    with pytest.raises(ValueError, match="speaker ids"):
        P.speaker_counts(["a"], [], [True])


def test_flip_rates_give_d_and_the_discordance_and_keep_the_null_per_class():
    recall = np.array([0.2, 0.5, 0.7, 0.9])
    for d in (0.0, 0.05, 0.2):
        gain, loss, q = P.flip_rates(recall, d, 0.3)
        per_class = gain * (1 - recall) - loss * recall
        assert per_class.mean() == pytest.approx(d)
        assert np.mean(gain * (1 - recall) + loss * recall) == pytest.approx(q) == pytest.approx(max(0.3, d))
        if d == 0:
            assert per_class == pytest.approx(0)  # no class gains what another loses: a true null
    with pytest.raises(ValueError, match="headroom"):
        P.flip_rates(recall, 0.5, 0.3)


def test_the_simulated_bootstrap_is_sertks_paired_bootstrap():
    """Same resamples (seed), same shifted-difference p as significance.paired_bootstrap."""
    gold, spk, right_a = synthetic(7, 3, 0.6, seed=1)
    right_b = np.random.default_rng(2).random(len(gold)) < 0.7
    wrong = {c: CLASSES[(i + 1) % 4] for i, c in enumerate(CLASSES)}
    pred_a = [g if r else wrong[g] for g, r in zip(gold, right_a)]
    pred_b = [g if r else wrong[g] for g, r in zip(gold, right_b)]
    a, b = P.speaker_counts(gold, spk, right_a), P.speaker_counts(gold, spk, right_b)
    weights = np.concatenate(list(P._group_counts(None, 7, 500, 0))).astype(float)
    p = P._p_bootstrap(a.correct[None].astype(float), b.correct[None].astype(float),
                       a.support[None].astype(float), weights)
    assert p[0] == pytest.approx(paired_bootstrap(gold, pred_a, pred_b, groups=spk, n_boot=500, seed=0)["p"])


@pytest.mark.parametrize("n_speakers", [4, 24])
def test_no_difference_is_detected_about_alpha_of_the_time(n_speakers):
    """At d = 0 the rate is the test's size: 4 speakers use utterance permutation (exact up to the +1 correction),
    24 the speaker bootstrap, slightly liberal with few clusters (resamples have (S-1)/S of the variance, about
    +1 point at 24). 2000 draws give a Monte Carlo sd of 0.005, so [0.025, 0.085] is a ~5 sd band plus that bias."""
    counts = P.speaker_counts(*synthetic(24, 6, 0.65))
    fpr = P.power(counts, 0.0, 0.3, n_speakers, n_sim=2000, seed=3)
    assert 0.025 <= fpr <= 0.085


def test_power_rises_with_the_difference_and_the_speakers():
    counts = P.speaker_counts(*synthetic(8, 6, 0.65))
    by_d = [P.power(counts, d, 0.3, 16, n_sim=400) for d in (0.02, 0.06, 0.12)]
    by_s = [P.power(counts, 0.06, 0.3, s, n_sim=400) for s in (6, 16, 40)]
    assert by_d[0] < by_d[1] < by_d[2] and by_d[2] > 0.9
    assert by_s[0] < by_s[1] < by_s[2]


def test_mdd_of_a_large_test_set_is_mcnemars():
    """400 speakers of 4 utterances with independent errors: the normal approximation of McNemar's test holds."""
    counts = P.speaker_counts(*synthetic(400, 1, 0.6, seed=5))
    got = P.mdd(counts, 0.3, step=0.005, n_sim=600)
    assert got == pytest.approx(P.analytic_mdd(1600, 0.3), abs=0.0075)  # 0.038


def test_seeded_and_deterministic():
    counts = P.speaker_counts(*synthetic(6, 6, 0.6))
    assert P.power(counts, 0.08, 0.3, 10, n_sim=300, seed=7) == P.power(counts, 0.08, 0.3, 10, n_sim=300, seed=7)
    assert P.mdd(counts, 0.3, n_sim=300, seed=7) == P.mdd(counts, 0.3, n_sim=300, seed=7)


def _recipe(root: Path, systems: dict[str, list[bool]]) -> None:
    """A recipe tree: one test set of 6 speakers and one result per system (its correctness per utterance)."""
    gold, spk, _ = synthetic(6, 2, 0.5)
    utts = [f"u{i:03d}" for i in range(len(gold))]
    (root / "data/t_test").mkdir(parents=True)
    (root / "conf").mkdir()
    (root / "conf/labels.yaml").write_text(json.dumps({"labels": CLASSES}))
    for name, table in (("utt2spk", spk), ("utt2emo", gold), ("wav.scp", [f"/x/{u}.wav" for u in utts])):
        (root / "data/t_test" / name).write_text("".join(f"{u} {v}\n" for u, v in zip(utts, table)))
    proto = {"corpus": "c", "protocol": "p", "scheme": "speaker-independent", "train": "t_train", "dev": None,
             "test": "t_test", "fold": None, "label_map": "labels", "hash": "0"}
    for name, right in systems.items():
        d = root / "exp" / name
        d.mkdir(parents=True)
        pred = [g if r else CLASSES[(CLASSES.index(g) + 1) % 4] for g, r in zip(gold, right)]
        (d / "predictions.txt").write_text("".join(f"{u} {p}\n" for u, p in zip(utts, pred)))
        recall = np.mean([np.mean([r for g, r in zip(gold, right) if g == c]) for c in CLASSES])
        (d / "results.json").write_text(json.dumps({
            "stage": 4, "name": name, "task": "classification", "protocol": proto, "protocol_id": "p0",
            "metrics": {"uar": recall},
            "labels": CLASSES, "sertk_version": "0", "created": "now"}))


def test_mdd_table_measures_discordance_and_names_the_reference(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    base = rng.random(48) < 0.6
    systems = {"a": base, "b": base ^ (rng.random(48) < 0.2), "c": base ^ (rng.random(48) < 0.4),
               "broken": np.zeros(48, bool)}  # below chance: not a system to compare
    _recipe(tmp_path, {k: list(v) for k, v in systems.items()})
    rows = P.mdd_table(tmp_path / "exp", tmp_path / "data", tmp_path / "conf", speakers_grid=[5, 10, 20],
                       n_sim=200)
    assert len(rows) == 1
    r = rows[0]
    want = np.median([np.mean(systems[x] != systems[y]) for x, y in (("a", "b"), ("a", "c"), ("b", "c"))])
    assert (r["test_set"], r["speakers"], r["utterances"], r["systems"]) == ("t_test", 6, 48, 3)
    assert r["discordance"] == pytest.approx(want)
    assert r["reference"] in {"a", "b", "c"} and 0 < r["mdd"] <= 0.5
    text = P.mdd_section(tmp_path / "exp", tmp_path / "data", tmp_path / "conf", speakers_grid=[5, 10, 20],
                         n_sim=200)
    assert "## Minimum detectable difference" in text and "| t_test | 6 (48) | 3 |" in text
