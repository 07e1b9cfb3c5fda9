"""Paired tests between systems, Holm's correction, and `sertk compare` on result dirs."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from sertk.bin import compare as compare_cli
from sertk.eval import compare as compare_lib
from sertk.data.corpus_prep import UttTable
from sertk.eval.metrics import classification_metrics
from sertk.eval.results import write_result
from sertk.eval.significance import approximate_randomization, holm, paired_bootstrap

CLASSES = ["ang", "hap", "neu", "sad"]


def systems(n_spk=20, per=10, acc_a=0.9, acc_b=0.4, seed=0):
    """Gold labels, speakers and two systems' predictions with the given accuracies (errors: a random other class)."""
    rng = np.random.default_rng(seed)
    gold = [CLASSES[i % 4] for i in range(n_spk * per)]
    spk = [f"s{i // per:02d}" for i in range(n_spk * per)]

    def predict(acc):
        return [g if rng.random() < acc else CLASSES[(CLASSES.index(g) + rng.integers(1, 4)) % 4] for g in gold]
    return gold, spk, predict(acc_a), predict(acc_b)


def test_holm_matches_a_hand_computation():
    # sorted 0.01, 0.03, 0.04, 0.20 -> 4 x .01 = .04; 3 x .03 = .09; max(.09, 2 x .04) = .09; max(.09, .20) = .20
    assert holm([0.01, 0.04, 0.03, 0.2]) == pytest.approx([0.04, 0.09, 0.09, 0.2])
    assert holm([0.5, None, 0.6]) == [1.0, None, 1.0]   # None is not counted: m = 2


@pytest.mark.parametrize("groups", [True, False])
def test_paired_tests_find_a_large_difference_and_not_an_identical_system(groups):
    gold, spk, a, b = systems()
    g = spk if groups else None
    boot = paired_bootstrap(gold, a, b, "uar", groups=g, n_boot=2000)
    assert boot["diff"] == pytest.approx(classification_metrics(gold, a, CLASSES)["uar"]
                                         - classification_metrics(gold, b, CLASSES)["uar"])
    assert boot["p"] < 0.05 and boot["ci"][0] > 0.3
    perm = approximate_randomization(gold, a, b, "uar", groups=g, n_perm=2000)
    assert perm["p"] < 0.05
    same_boot = paired_bootstrap(gold, a, list(a), "uar", groups=g, n_boot=2000)
    same_perm = approximate_randomization(gold, a, list(a), "uar", groups=g, n_perm=2000)
    assert same_boot["diff"] == 0 and same_boot["ci"] == [0.0, 0.0] and same_boot["p"] > 0.5
    assert same_perm["p"] > 0.5


def test_speaker_resampling_is_more_cautious_than_utterance_resampling():
    """A system that is better only on some speakers: utterance resampling overstates the evidence."""
    gold, spk, a, _ = systems(n_spk=8, per=30, acc_a=0.6, acc_b=0.6, seed=2)
    b = [p if int(s[1:]) % 4 else g for p, g, s in zip(a, gold, spk)]   # B fixes every error of 2 speakers
    by_spk = paired_bootstrap(gold, b, a, "wa", groups=spk, n_boot=4000)
    by_utt = paired_bootstrap(gold, b, a, "wa", groups=None, n_boot=4000)
    assert by_spk["ci"][1] - by_spk["ci"][0] > 1.5 * (by_utt["ci"][1] - by_utt["ci"][0])
    assert by_spk["p"] > by_utt["p"]


def test_utterance_randomization_agrees_with_scipy():
    """WA is the mean of per-utterance correctness: scipy's paired permutation test computes the same p."""
    gold, _, a, b = systems(n_spk=6, per=10, acc_a=0.7, acc_b=0.5, seed=3)
    ours = approximate_randomization(gold, a, b, "wa", groups=None, n_perm=20000, seed=0)["p"]
    ca = np.array([x == g for x, g in zip(a, gold)], float)
    cb = np.array([x == g for x, g in zip(b, gold)], float)
    ref = stats.permutation_test((ca, cb), lambda x, y: np.mean(x) - np.mean(y), permutation_type="samples",
                                 n_resamples=20000, alternative="two-sided", random_state=0).pvalue
    assert ours == pytest.approx(ref, abs=0.02)


# ------------------------------------------------------------ sertk compare
def _recipe(tmp_path, n_folds=2):
    """A recipe dir: data/<test> sets with raw labels, conf/labels.yaml mapping them to words."""
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "labels.yaml").write_text("name: labels\nlabels: [ang, hap, neu, sad]\n"
                                                   "aliases: {W: ang, F: hap, N: neu, T: sad}\n")
    raw = {"ang": "W", "hap": "F", "neu": "N", "sad": "T"}
    gold, spk, a, b = systems(n_spk=12, per=8)
    per_fold = len(gold) // n_folds
    folds = []
    for k in range(n_folds):
        t = UttTable("c")
        rows = range(k * per_fold, (k + 1) * per_fold)
        for i in rows:
            sp = t.speaker(spk[i])
            t.add(t.utt_id(sp, f"u{i:03d}"), wav=f"/x/{i}.wav", spk=sp, source=str(i), emo=raw[gold[i]])
        dd = t.to_datadir()
        dd.write(tmp_path / "data" / f"fold{k + 1}_test")
        folds.append((dd.utts, [gold[i] for i in rows], {"a": [a[i] for i in rows], "b": [b[i] for i in rows]}))
    return folds


def _write_system(tmp_path, name, folds, which, shuffle_test=False):
    for k, (utts, gold, preds) in enumerate(folds, 1):
        pred = preds[which]
        proto = {"corpus": "c", "protocol": "p", "fold": k, "scheme": "2 folds", "train": f"fold{k}_train",
                 "test": f"fold{k}_test", "label_map": "labels", "hash": f"h{k}"}
        out = tmp_path / "exp" / name / f"fold{k}" / "eval" / f"fold{k}_test"
        m = classification_metrics(gold, pred, CLASSES)
        write_result(out / "results.json", stage=3, name=name, task="classification", protocol=proto, metrics=m,
                     labels=CLASSES, extra={"fold": k})
        us = utts[:-1] if shuffle_test and k == 2 else utts
        (out / "predictions.txt").write_text("".join(f"{u} {p}\n" for u, p in zip(us, pred)))


def test_compare_pairs_folds_pools_them_and_corrects(tmp_path, monkeypatch, capsys):
    folds = _recipe(tmp_path)
    _write_system(tmp_path, "good", folds, "a")
    _write_system(tmp_path, "weak", folds, "b")
    monkeypatch.chdir(tmp_path)
    rows = compare_lib.compare(["exp/good", "exp/weak"], n=2000)
    assert [r["test_set"] for r in rows] == ["p fold 1 -> fold1_test", "p fold 2 -> fold2_test", "p: 2 folds pooled"]
    pooled = rows[-1]
    assert pooled["n"] == 96 and pooled["speakers"] == 12 and pooled["resample"] == "speaker"
    assert pooled["p_holm"] < 0.05 and pooled["diff"] > 0.3
    assert all(r["p_holm"] >= r["p"] for r in rows)
    # folds of 6 speakers are too few at min_speakers=7: utterances are permuted there, and the rows say so;
    # the pool of 12 speakers still gets the speaker bootstrap
    few = compare_lib.compare(["exp/good", "exp/weak"], n=500, min_speakers=7)
    assert [r["resample"] for r in few] == ["utterance", "utterance", "speaker"]
    assert "holds for these utterances only" in few[0]["note"] and "note" not in few[-1]
    assert few[0]["diff"] == rows[0]["diff"] and few[0]["p"] < 0.05
    assert "(u)" in compare_lib.format_rows(few)
    assert compare_cli.main(["exp/good", "exp/weak", "--n", "500", "--test", "permutation"]) == 0
    assert "p: 2 folds pooled" in capsys.readouterr().out


def test_compare_refuses_mismatched_test_lists_and_unreproducible_gold(tmp_path, monkeypatch, capsys):
    folds = _recipe(tmp_path)
    _write_system(tmp_path, "good", folds, "a")
    _write_system(tmp_path, "short", folds, "b", shuffle_test=True)
    monkeypatch.chdir(tmp_path)
    assert compare_cli.main(["exp/good", "exp/short", "--n", "100"]) == 1
    err = capsys.readouterr().err
    assert "score different utterances" in err and "exp/short/fold2" in err
    # a system tested on one fold only: its protocol ids do not match
    # a system's A/V/D results beside its categorical ones are kept under their own task (paired in CCC with
    # another system's A/V/D results); a system without any is compared on classification alone
    reg = tmp_path / "exp" / "good" / "fold1" / "eval" / "fold1_test" / "avd" / "results.json"
    write_result(reg, stage=3, name="good_ridge", task="regression", metrics={"ccc_mean": 0.5},
                 protocol={"corpus": "c", "protocol": "p", "fold": 1, "scheme": "2 folds", "train": "fold1_train",
                           "test": "fold1_test", "label_map": "labels", "hash": "h1"}, extra={"fold": 1})
    assert sorted(k[0] for k in compare_lib.system_results("exp/good")) == ["classification"] * 2 + ["regression"]
    _write_system(tmp_path, "one", folds[:1], "b")
    assert compare_cli.main(["exp/good", "exp/one", "--n", "100"]) == 1
    assert "not tested on the same test lists" in capsys.readouterr().err
    # the data dir's labels must reproduce the recorded figure
    (tmp_path / "conf" / "labels.yaml").write_text("name: labels\nlabels: [ang, hap, neu, sad]\n"
                                                   "aliases: {W: hap, F: ang, N: neu, T: sad}\n")
    assert compare_cli.main(["exp/good", "exp/good", "--n", "100"]) == 1
    assert "wrong --data/--conf" in capsys.readouterr().err


def test_report_tests_the_configured_comparisons(tmp_path, monkeypatch):
    from sertk.eval.compare import CompareError, load_compare_config
    from sertk.eval.report import write_report
    folds = _recipe(tmp_path)
    _write_system(tmp_path, "good", folds, "a")
    _write_system(tmp_path, "weak", folds, "b")
    cfg = tmp_path / "conf" / "compare.yaml"
    cfg.write_text("n: 1000\ncomparisons:\n  - {name: weak vs good, a: good, b: weak}\n"
                   "  - {name: absent, a: good, b: 'nothing/*/eval'}\n")
    monkeypatch.chdir(tmp_path)
    text = write_report("exp", "RESULTS.md", "t", compare=cfg)
    section = text.split("## Paired comparisons", 1)[1]
    row = next(line for line in section.splitlines() if line.startswith("| weak vs good"))
    assert "| p: 2 folds pooled | 96 (12) |" in row and "**significant**" in row
    assert "fold 1" not in section                             # folds are pooled, not listed one by one
    assert "- absent: not compared (" in section               # a missing system is said, not skipped silently
    (tmp_path / "bad.yaml").write_text("comparisons:\n  - {a: good}\n")
    with pytest.raises(CompareError, match="must be {name, a, b}"):
        load_compare_config(tmp_path / "bad.yaml")


def test_report_pools_folds_with_speaker_intervals(tmp_path, monkeypatch):
    from sertk.eval.metrics import bootstrap_ci
    from sertk.eval.report import write_report
    folds = _recipe(tmp_path)
    _write_system(tmp_path, "good", folds, "a")
    monkeypatch.chdir(tmp_path)
    text = write_report("exp", "RESULTS.md", "t", data="data", conf="conf")
    row = next(line for line in text.splitlines() if line.startswith("| good"))
    gold = sum((f[1] for f in folds), [])
    pred = sum((f[2]["a"] for f in folds), [])
    spk = [u.rsplit("-", 1)[0] for f in folds for u in f[0]]
    lo, hi = bootstrap_ci(gold, pred, "uar", n_boot=1000, groups=spk)
    assert f"[{lo:.3f}, {hi:.3f}]" in row and "†" not in row.split("pooled", 1)[1].split("|")[0]
    # without the data dirs the decisions are resampled instead, and the cell says so
    text = write_report("exp", "RESULTS2.md", "t", data="nowhere", conf="conf")
    row = next(line for line in text.splitlines() if line.startswith("| good"))
    assert "†" in row.split("pooled", 1)[1].split("|")[0]
