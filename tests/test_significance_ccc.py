"""Paired CCC tests, tests paired across training seeds, and `sertk compare` on A/V/D results."""
from __future__ import annotations

import itertools
import json
from types import SimpleNamespace

import numpy as np
import pytest
from scipy import stats

from sertk.data.corpus_prep import UttTable
from sertk.eval import compare as compare_lib
from sertk.eval.metrics import bootstrap_stats, ccc, regression_metrics
from sertk.eval.results import load_result, run_seed, write_result
from sertk.eval.significance import approximate_randomization, paired_bootstrap, paired_test

DIMS = ["arousal", "valence", "dominance"]


def avd_systems(n_spk=12, per=10, noise_a=0.1, noise_b=0.6, seed=0):
    """Gold A/V/D [N, 3], speakers, and two systems' predictions: gold plus noise of the given sd."""
    rng = np.random.default_rng(seed)
    gold = rng.uniform(0, 1, size=(n_spk * per, 3))
    spk = [f"s{i // per:02d}" for i in range(n_spk * per)]
    return gold, spk, gold + rng.normal(0, noise_a, gold.shape), gold + rng.normal(0, noise_b, gold.shape)


def mean_ccc(gold, pred):
    return regression_metrics(pred, gold, DIMS)["ccc_mean"]


# ------------------------------------------------------------ CCC paired tests
@pytest.mark.parametrize("groups", [True, False])
def test_ccc_tests_find_a_large_difference_and_not_an_identical_system(groups):
    gold, spk, a, b = avd_systems()
    g = spk if groups else None
    boot = paired_bootstrap(gold, a, b, "ccc", groups=g, n_boot=2000)
    assert boot["diff"] == pytest.approx(mean_ccc(gold, a) - mean_ccc(gold, b), abs=1e-9)
    assert boot["p"] < 0.05 and boot["ci"][0] > 0.2
    assert approximate_randomization(gold, a, b, "ccc", groups=g, n_perm=2000)["p"] < 0.05
    same = paired_bootstrap(gold, a, a.copy(), "ccc", groups=g, n_boot=2000)
    assert same["diff"] == 0 and same["ci"] == [0.0, 0.0] and same["p"] > 0.5
    assert approximate_randomization(gold, a, a.copy(), "ccc", groups=g, n_perm=2000)["p"] > 0.5
    # one dimension as a 1-D array
    one = paired_bootstrap(gold[:, 1], a[:, 1], b[:, 1], "ccc", groups=g, n_boot=500)
    assert one["diff"] == pytest.approx(ccc(a[:, 1], gold[:, 1]) - ccc(b[:, 1], gold[:, 1]), abs=1e-9)


def test_ccc_bootstrap_resamples_what_the_interval_resamples():
    """The paired bootstrap's differences are those of bootstrap_stats on the same speaker resamples."""
    gold, spk, a, b = avd_systems(noise_a=0.3, noise_b=0.35, seed=1)
    d = bootstrap_stats(gold, a, "ccc_mean", n_boot=3000, seed=4, groups=spk) - \
        bootstrap_stats(gold, b, "ccc_mean", n_boot=3000, seed=4, groups=spk)
    res = paired_bootstrap(gold, a, b, "ccc", groups=spk, n_boot=3000, seed=4)
    assert res["ci"] == pytest.approx(list(np.percentile(d, [2.5, 97.5])), abs=1e-9)


def test_ccc_utterance_randomization_agrees_with_scipy():
    gold, _, a, b = avd_systems(n_spk=4, per=10, noise_a=0.3, noise_b=0.4, seed=3)
    g, x, y = gold[:, 0], a[:, 0], b[:, 0]
    ours = approximate_randomization(g, x, y, "ccc", groups=None, n_perm=20000, seed=0)["p"]
    ref = stats.permutation_test((x, y), lambda p, q: ccc(p, g) - ccc(q, g), permutation_type="samples",
                                 n_resamples=5000, alternative="two-sided", random_state=0).pvalue
    assert ours == pytest.approx(ref, abs=0.03)


def test_too_few_speakers_fall_back_to_utterances_for_ccc():
    gold, spk, a, b = avd_systems(n_spk=3)
    res = paired_test(gold, a, b, "ccc", spk, n=500)
    assert res["resample"] == "utterance" and "3 speakers" in res["note"] and res["p"] < 0.05


# ------------------------------------------------------------ seeds
@pytest.mark.parametrize("metric", ["wa", "ccc"])
def test_one_pair_of_seeds_is_the_single_run_test(metric):
    gold, spk, a, b = avd_systems(n_spk=8)
    if metric == "wa":
        gold, a, b = (list((m[:, 0] > 0.5).astype(int).astype(str)) for m in (gold, a, b))
    for fn, kw in ((paired_bootstrap, {"n_boot": 500}), (approximate_randomization, {"n_perm": 500})):
        assert fn(gold, [a], [b], metric, groups=spk, **kw) == fn(gold, a, b, metric, groups=spk, **kw)


def test_seeds_are_swapped_jointly_exactly():
    """AR over 4 speakers and 2 seed pairs: every one of the 16 swap patterns applies to both pairs at once,
    so p is the exact fraction of patterns whose mean difference is at least the observed one."""
    gold, spk, a1, b1 = avd_systems(n_spk=4, per=5, noise_a=0.2, noise_b=0.5, seed=5)
    _, _, a2, b2 = avd_systems(n_spk=4, per=5, noise_a=0.25, noise_b=0.45, seed=6)
    res = approximate_randomization(gold, [a1, a2], [b1, b2], "ccc", groups=spk, n_perm=40000, seed=1)
    per_pair = [mean_ccc(gold, a) - mean_ccc(gold, b) for a, b in ((a1, b1), (a2, b2))]
    assert res["diff"] == pytest.approx(np.mean(per_pair)) and res["pairs"] == 2
    assert res["diff_sd"] == pytest.approx(np.std(per_pair, ddof=1))
    s = np.array(spk)
    hits = 0
    for pattern in itertools.product([0, 1], repeat=4):
        swap = np.isin(s, [f"s{i:02d}" for i, on in enumerate(pattern) if on])[:, None]
        d = np.mean([mean_ccc(gold, np.where(swap, b, a)) - mean_ccc(gold, np.where(swap, a, b))
                     for a, b in ((a1, b1), (a2, b2))])
        hits += abs(d) >= abs(res["diff"]) - 1e-12
    assert res["p"] == pytest.approx(hits / 16, abs=0.01)


# ------------------------------------------------------------ sertk compare on A/V/D results
def _avd_recipe(tmp_path, gold, spk):
    t = UttTable("c")
    for i, (row, s) in enumerate(zip(gold, spk)):
        sp = t.speaker(s)
        t.add(t.utt_id(sp, f"u{i:03d}"), wav=f"/x/{i}.wav", spk=sp, source=str(i), avd=tuple(row))
    dd = t.to_datadir()
    dd.write(tmp_path / "data" / "test")
    (tmp_path / "conf").mkdir(exist_ok=True)
    return dd.utts


PROTO = {"corpus": "c", "protocol": "p", "fold": None, "scheme": "si", "train": "train", "test": "test",
         "label_map": "none", "hash": "h"}


def _write_avd(tmp_path, name, utts, gold, pred, seed=None, sub="", gold_range=None):
    out = tmp_path / "exp" / name / (f"seed{seed}" if seed is not None else "") / "eval" / "test" / sub
    lo_hi = (0.0, 1.0) if gold_range is None else gold_range
    scaled = (np.asarray(gold) - lo_hi[0]) / (lo_hi[1] - lo_hi[0])
    with run_seed(seed):
        write_result(out / "results.json", stage=8, name=name, task="regression", protocol=PROTO,
                     metrics=regression_metrics(pred, scaled, DIMS))
    (out / "predictions.txt").write_text("".join(f"{u} {' '.join(f'{v:.5f}' for v in r)}\n"
                                                 for u, r in zip(utts, pred)))
    if gold_range is not None:
        (out.parent.parent.parent / "run_digest.json").write_text(json.dumps(
            {"parts": {"config": {"eval": {"gold_range": list(gold_range)}}}}))
    return out


def test_compare_tests_avd_results_in_ccc_and_checks_the_gold(tmp_path, monkeypatch):
    gold, spk, a, b = avd_systems(n_spk=8)
    utts = _avd_recipe(tmp_path, gold, spk)
    _write_avd(tmp_path, "good", utts, gold, a)
    bad = _write_avd(tmp_path, "weak", utts, gold, b)
    monkeypatch.chdir(tmp_path)
    (row,) = compare_lib.compare(["exp/good", "exp/weak"], n=1000)
    assert row["metric"] == "ccc" and row["task"] == "regression" and row["resample"] == "speaker"
    assert row["value_a"] == pytest.approx(mean_ccc(gold, a), abs=1e-3) and row["p"] < 0.05
    (dim,) = compare_lib.compare(["exp/good", "exp/weak"], metric="ccc_valence", n=200)
    assert dim["value_a"] == pytest.approx(ccc(a[:, 1], gold[:, 1]), abs=1e-3)
    with pytest.raises(compare_lib.CompareError, match="no classification result"):
        compare_lib.compare(["exp/good", "exp/weak"], metric="uar")
    # a result whose gold scale is not the data dir's: refused, naming the file
    (bad / "predictions.txt").write_text("".join(f"{u} {' '.join(f'{2 * v:.5f}' for v in r)}\n"
                                                 for u, r in zip(utts, b)))
    with pytest.raises(compare_lib.CompareError, match=r"exp/weak/eval/test/results.json: gold .* wrong --data"):
        compare_lib.compare(["exp/good", "exp/weak"], n=100)


def test_compare_rescales_gold_as_the_run_did(tmp_path, monkeypatch):
    """A run with eval.gold_range scored 1-5 labels on 0-1: compare reads that from its run_digest.json."""
    gold, spk, a, b = avd_systems(n_spk=6)
    raw = 1 + 4 * gold
    utts = _avd_recipe(tmp_path, raw, spk)
    _write_avd(tmp_path, "t", utts, raw, a, gold_range=(1.0, 5.0))
    _write_avd(tmp_path, "s", utts, raw, b, gold_range=(1.0, 5.0))
    monkeypatch.chdir(tmp_path)
    (row,) = compare_lib.compare(["exp/t", "exp/s"], n=200)
    assert row["value_a"] == pytest.approx(mean_ccc(gold, a), abs=1e-3)


def test_compare_pairs_seeds(tmp_path, monkeypatch, capsys):
    gold, spk, *_ = avd_systems(n_spk=8)
    utts = _avd_recipe(tmp_path, gold, spk)
    rng = np.random.default_rng(9)
    runs = {(sys, s): gold + rng.normal(0, noise, gold.shape)
            for sys, noise in (("a", 0.2), ("b", 0.5)) for s in (0, 1, 2)}
    for (sys, s), pred in runs.items():
        _write_avd(tmp_path, sys, utts, gold, pred, seed=s)
    monkeypatch.chdir(tmp_path)
    (row,) = compare_lib.compare(["exp/a", "exp/b"], n=500)
    per = [mean_ccc(gold, runs[("a", s)]) - mean_ccc(gold, runs[("b", s)]) for s in (0, 1, 2)]
    assert row["pairs"] == 3 and row["diff"] == pytest.approx(np.mean(per), abs=1e-3)
    assert row["diff_sd"] == pytest.approx(np.std(per, ddof=1), abs=1e-3) and "seed_pairing" not in row
    assert "3 seed pairs" in compare_lib.format_rows(compare_lib.compare(["exp/a", "exp/b"], n=100))
    # one run against three seeds: paired with each
    _write_avd(tmp_path, "one", utts, gold, runs[("b", 0)])
    (row,) = compare_lib.compare(["exp/one", "exp/a"], n=100)
    assert row["pairs"] == 3 and "one run of A" in row["seed_pairing"]
    # disjoint seeds: sorted order, said
    for s in (5, 7):
        _write_avd(tmp_path, "other", utts, gold, runs[("b", s - 5)], seed=s)
    (row,) = compare_lib.compare(["exp/a", "exp/other"], n=100)
    assert row["pairs"] == 2 and "no seed in common: paired in sorted order 0-5, 1-7" in row["seed_pairing"]
    # two results of one protocol and seed: refused, naming both
    _write_avd(tmp_path, "a", utts, gold, runs[("a", 0)], seed=0, sub="again")
    with pytest.raises(compare_lib.CompareError, match="two results of one test set and seed 0"):
        compare_lib.compare(["exp/a", "exp/b"], n=100)


def test_student_float_result_pairs_with_its_int8_result(tmp_path, monkeypatch):
    """Stage 8 writes the float ONNX model's predictions beside the int8 result; compare.yaml pairs them."""
    from sertk.eval.compare import comparison_section, load_compare_config
    from sertk.tasks import distill
    gold, spk, int8, fp32 = avd_systems(n_spk=6, noise_a=0.2, noise_b=0.05)
    utts = _avd_recipe(tmp_path, gold, spk)
    _write_avd(tmp_path, "w2s/studio", utts, gold, int8)
    ctx = SimpleNamespace(expdir=tmp_path / "exp" / "w2s" / "studio", stage=8, name="w2s", data=tmp_path / "data")
    split = SimpleNamespace(record=lambda test, data: dict(PROTO))
    path = distill._write_float_result(ctx, split, "test", utts, fp32, gold, {"role": "student", "profile": {}})
    rec = load_result(path)
    assert rec["extra"]["scored_model"] == "onnx fp32" and rec["metrics"]["ccc_mean"] == mean_ccc(gold, fp32)
    cfg = tmp_path / "conf" / "compare.yaml"
    cfg.write_text("metric: uar\nn: 500\ncomparisons:\n  - {name: int8 vs float, metric: ccc, "
                   "a: 'w2s/**/eval/*/fp32/float.json', b: 'w2s/**/eval/*/results.json'}\n")
    monkeypatch.chdir(tmp_path)
    text = comparison_section(load_compare_config(cfg), "exp", "data", "conf")
    row = next(line for line in text.splitlines() if line.startswith("| int8 vs float"))
    assert "| ccc |" in row and "**significant**" in row
    assert f"{mean_ccc(gold, int8) - mean_ccc(gold, fp32):+.3f}" in row
