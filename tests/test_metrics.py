"""Metrics against scikit-learn and against cases worked out by hand."""
import json
import math

import numpy as np
import pytest
from scipy.stats import pearsonr
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, mean_absolute_error, recall_score

from sertk.eval.metrics import (aggregate_folds, bootstrap_ci, ccc, ccc_per_dim, classification_metrics,
                                regression_metrics, scores_from_confusion)

LABELS = ["neutral", "happy", "angry", "sad"]


def noisy_predictions(n, seed=0, p_correct=0.6, labels=LABELS, priors=(0.4, 0.3, 0.2, 0.1)):
    rng = np.random.default_rng(seed)
    y_true = list(rng.choice(labels, size=n, p=priors))
    y_pred = [t if rng.random() < p_correct else str(rng.choice(labels)) for t in y_true]
    return y_true, y_pred


# ---------------------------------------------------------------- classification

def test_classification_matches_sklearn():
    y_true, y_pred = noisy_predictions(500, seed=3)
    m = classification_metrics(y_true, y_pred, LABELS)
    assert m["n"] == 500
    assert m["uar"] == pytest.approx(recall_score(y_true, y_pred, average="macro"))
    assert m["wa"] == pytest.approx(accuracy_score(y_true, y_pred))
    assert m["macro_f1"] == pytest.approx(f1_score(y_true, y_pred, average="macro"))
    assert m["confusion"] == confusion_matrix(y_true, y_pred, labels=LABELS).tolist()
    per_class = recall_score(y_true, y_pred, labels=LABELS, average=None)
    assert [m["per_class_recall"][lab] for lab in LABELS] == pytest.approx(per_class.tolist())
    # the batched numpy path used by the bootstrap agrees with sklearn too
    fast = scores_from_confusion(m["confusion"])
    assert fast["uar"] == pytest.approx(m["uar"])
    assert fast["wa"] == pytest.approx(m["wa"])
    assert fast["macro_f1"] == pytest.approx(m["macro_f1"])


def test_classification_hand_computed():
    y_true = ["a", "a", "a", "b", "b", "c"]
    y_pred = ["a", "a", "b", "b", "c", "c"]
    m = classification_metrics(y_true, y_pred, ["a", "b", "c"])
    assert m["confusion"] == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    assert m["per_class_recall"] == pytest.approx({"a": 2 / 3, "b": 1 / 2, "c": 1.0})
    assert m["uar"] == pytest.approx((2 / 3 + 1 / 2 + 1) / 3)          # 13/18
    assert m["wa"] == pytest.approx(4 / 6)
    # F1: a (P=1, R=2/3) 0.8; b (P=1/2, R=1/2) 0.5; c (P=1/2, R=1) 2/3
    assert m["macro_f1"] == pytest.approx((0.8 + 0.5 + 2 / 3) / 3)
    assert m["majority_wa"] == pytest.approx(0.5)
    assert m["majority_uar"] == pytest.approx(1 / 3)
    assert m["chance_uar"] == pytest.approx(1 / 3)
    assert m["chance_wa"] == pytest.approx(14 / 36)                      # 1/4 + 1/9 + 1/36


def test_label_absent_from_reference_kept_in_confusion_but_not_averaged():
    y_true = ["a", "a", "b", "b"]
    y_pred = ["a", "d", "b", "b"]
    m = classification_metrics(y_true, y_pred, ["a", "b", "c", "d"])
    assert m["uar"] == pytest.approx((0.5 + 1.0) / 2)
    assert m["uar"] == pytest.approx(recall_score(y_true, y_pred, labels=["a", "b"], average="macro"))
    assert m["confusion"] == [[1, 0, 0, 1], [0, 2, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]
    assert m["per_class_recall"]["c"] is None and m["per_class_recall"]["d"] is None
    assert m["n_classes_present"] == 2 and m["chance_uar"] == pytest.approx(0.5)
    assert scores_from_confusion(m["confusion"])["uar"] == pytest.approx(m["uar"])
    assert scores_from_confusion(m["confusion"])["macro_f1"] == pytest.approx(m["macro_f1"])


def test_majority_predictor_scores_exactly_the_majority_figures():
    y_true, _ = noisy_predictions(300, seed=5)
    major = max(set(y_true), key=y_true.count)
    m = classification_metrics(y_true, [major] * len(y_true), LABELS)
    assert m["uar"] == pytest.approx(m["majority_uar"])
    assert m["wa"] == pytest.approx(m["majority_wa"])
    assert m["macro_f1"] == pytest.approx(m["majority_macro_f1"])


def test_chance_wa_is_expected_accuracy_of_prior_guessing():
    y_true, _ = noisy_predictions(400, seed=6)
    m = classification_metrics(y_true, y_true, LABELS)
    priors = np.array([m["support"][lab] for lab in LABELS]) / m["n"]
    rng = np.random.default_rng(0)
    guesses = rng.choice(len(LABELS), size=(200, len(y_true)), p=priors)
    truth = np.array([LABELS.index(t) for t in y_true])
    assert (guesses == truth).mean() == pytest.approx(m["chance_wa"], abs=0.01)


def test_bad_classification_input_is_named():
    with pytest.raises(ValueError, match=r"prediction 1: label 'joy'"):
        classification_metrics(["a", "b"], ["a", "joy"], ["a", "b"])
    with pytest.raises(ValueError, match=r"reference 0: label 'x'"):
        classification_metrics(["x"], ["a"], ["a", "b"])
    with pytest.raises(ValueError, match="2 references but 1 predictions"):
        classification_metrics(["a", "b"], ["a"], ["a", "b"])
    with pytest.raises(ValueError, match="duplicated"):
        classification_metrics(["a"], ["a"], ["a", "a"])


# ---------------------------------------------------------------- CCC

def test_ccc_hand_computed():
    x = np.array([1.0, 2.0, 3.0])
    assert ccc(x, x) == pytest.approx(1.0)
    # shift by 1: var 2/3 each, cov 2/3, mean gap 1 -> (4/3) / (7/3)
    assert ccc(x, x + 1) == pytest.approx(4 / 7)
    # scale by 2: Pearson r is 1, CCC is 2*(4/3) / (2/3 + 8/3 + 4) = 4/11
    assert ccc(x, 2 * x) == pytest.approx(4 / 11)
    assert ccc([-1.0, 0.0, 1.0], [1.0, 0.0, -1.0]) == pytest.approx(-1.0)
    assert ccc(x, [5.0, 5.0, 5.0]) == pytest.approx(0.0)   # constant prediction


def test_ccc_matches_population_formula_and_penalises_bias():
    rng = np.random.default_rng(0)
    gold = rng.normal(size=400)
    pred = 0.8 * gold + rng.normal(scale=0.4, size=400) + 0.3
    expected = 2 * np.cov(pred, gold, ddof=0)[0, 1] / (pred.var() + gold.var() + (pred.mean() - gold.mean()) ** 2)
    assert ccc(pred, gold) == pytest.approx(expected)
    assert ccc(pred, gold) < pearsonr(pred, gold)[0]
    assert ccc(pred, gold) == pytest.approx(ccc(gold, pred))


def test_ccc_rejects_bad_input():
    with pytest.raises(ValueError, match="non-finite"):
        ccc([1.0, float("nan")], [1.0, 2.0])
    with pytest.raises(ValueError, match="equal length"):
        ccc([1.0, 2.0], [1.0, 2.0, 3.0])


def test_regression_metrics_per_dimension():
    rng = np.random.default_rng(1)
    gold = rng.normal(size=(200, 3))
    pred = gold + rng.normal(scale=[0.1, 0.5, 1.0], size=(200, 3))
    names = ["arousal", "valence", "dominance"]
    r = regression_metrics(pred, gold, names)
    assert r["dims"] == names and r["n"] == 200
    assert r["ccc"] == ccc_per_dim(pred, gold, names)
    assert r["ccc"]["arousal"] > r["ccc"]["valence"] > r["ccc"]["dominance"]  # noise grows
    assert r["ccc_mean"] == pytest.approx(np.mean(list(r["ccc"].values())))
    for j, name in enumerate(names):
        assert r["ccc"][name] == pytest.approx(ccc(pred[:, j], gold[:, j]))
        assert r["pearson"][name] == pytest.approx(pearsonr(pred[:, j], gold[:, j])[0])
        assert r["mae"][name] == pytest.approx(mean_absolute_error(gold[:, j], pred[:, j]))
    with pytest.raises(ValueError, match="3 dimensions but 2 names"):
        regression_metrics(pred, gold, names[:2])


def _constant_dominance(n=120, seed=3):
    """A/V/D where the test set annotates dominance with one value and the model learned it."""
    rng = np.random.default_rng(seed)
    gold = rng.normal(size=(n, 3))
    pred = gold + rng.normal(scale=0.5, size=(n, 3))
    gold[:, 2] = 3.0
    pred[:, 2] = 3.0
    return pred, gold


def test_ccc_of_one_and_the_same_constant_is_undefined_not_an_error():
    assert ccc([2.0, 2.0], [2.0, 2.0]) is None
    assert ccc([0.1, 0.1, 0.1], [0.1, 0.1, 0.1 + 1e-17]) is None   # rounding noise is no variation
    assert ccc([1.0], [1.0]) is None                                 # one utterance: nothing to agree on
    assert ccc([1.0, 2.0, 3.0], [2.0, 2.0, 2.0]) == pytest.approx(0.0)  # a constant prediction scores 0


def test_regression_metrics_report_an_undefined_dimension_and_average_the_rest():
    pred, gold = _constant_dominance()
    r = regression_metrics(pred, gold, ["arousal", "valence", "dominance"])
    assert r["ccc"]["dominance"] is None and r["ccc_undefined"] == ["dominance"]
    assert r["ccc_mean"] == pytest.approx(np.mean([r["ccc"]["arousal"], r["ccc"]["valence"]]))
    assert r["pearson"]["dominance"] is None and r["mae"]["dominance"] == 0.0
    assert "ccc_undefined" not in regression_metrics(pred[:, :2], gold[:, :2], ["a", "v"])
    none = regression_metrics(pred[:, 2:], gold[:, 2:], ["dominance"])
    assert none["ccc"] == {"dominance": None} and none["ccc_mean"] is None
    assert json.loads(json.dumps(r))["ccc"]["dominance"] is None  # null in results.json


def test_bootstrap_skips_undefined_resamples_and_never_raises():
    pred, gold = _constant_dominance()
    lo, hi = bootstrap_ci(gold, pred, "ccc_mean", n_boot=40)
    point = regression_metrics(pred, gold, ["a", "v", "d"])["ccc_mean"]
    assert lo < point < hi
    mean_ccc = lambda g, p: regression_metrics(p, g, ["a", "v", "d"])["ccc_mean"]  # noqa: E731
    assert (lo, hi) == pytest.approx(bootstrap_ci(gold, pred, mean_ccc, n_boot=40))
    assert bootstrap_ci(gold[:, 2], pred[:, 2], "ccc", n_boot=40) == (None, None)
    assert bootstrap_ci(gold[:, 2], pred[:, 2], ccc, n_boot=40) == (None, None)
    assert bootstrap_ci(gold[:, 2:], pred[:, 2:], "ccc_mean", n_boot=40) == (None, None)


def test_folds_average_a_ccc_where_it_is_defined():
    pred, gold = _constant_dominance()
    names = ["arousal", "valence", "dominance"]
    f1 = regression_metrics(pred, gold, names)
    f2 = regression_metrics(pred + 0.1, gold + np.array([0.0, 0.0, 1.0]) * np.arange(len(gold))[:, None] / 100, names)
    agg = aggregate_folds([f1, f2])
    assert agg["mean"]["ccc"]["dominance"] == pytest.approx(f2["ccc"]["dominance"])
    assert agg["mean"]["ccc"]["arousal"] == pytest.approx((f1["ccc"]["arousal"] + f2["ccc"]["arousal"]) / 2)


# ---------------------------------------------------------------- bootstrap

def test_bootstrap_is_deterministic_and_contains_the_estimate():
    y_true, y_pred = noisy_predictions(1000, seed=7)
    point = classification_metrics(y_true, y_pred, LABELS)
    for name in ("uar", "wa", "macro_f1"):
        lo, hi = bootstrap_ci(y_true, y_pred, name, n_boot=1000, seed=0)
        assert lo < point[name] < hi
        assert hi - lo < 0.1
        assert (lo, hi) == bootstrap_ci(y_true, y_pred, name, n_boot=1000, seed=0)
    assert bootstrap_ci(y_true, y_pred, "uar", seed=1) != bootstrap_ci(y_true, y_pred, "uar", seed=0)


def test_bootstrap_fast_path_equals_callable_path():
    """The numpy resampling gives the same numbers as calling sklearn-based metrics per resample."""
    y_true, y_pred = noisy_predictions(120, seed=8)
    for name in ("uar", "wa", "macro_f1"):
        slow = bootstrap_ci(y_true, y_pred, lambda t, p: classification_metrics(t, p, LABELS)[name], n_boot=40)
        assert bootstrap_ci(y_true, y_pred, name, n_boot=40) == pytest.approx(slow)
    rng = np.random.default_rng(2)
    gold = rng.normal(size=(150, 3))
    pred = gold + rng.normal(size=(150, 3))
    assert bootstrap_ci(gold[:, 0], pred[:, 0], "ccc", n_boot=40) == pytest.approx(
        bootstrap_ci(gold[:, 0], pred[:, 0], ccc, n_boot=40))
    mean_ccc = lambda g, p: regression_metrics(p, g, ["a", "v", "d"])["ccc_mean"]  # noqa: E731
    lo, hi = bootstrap_ci(gold, pred, "ccc_mean", n_boot=40)
    assert (lo, hi) == pytest.approx(bootstrap_ci(gold, pred, mean_ccc, n_boot=40))
    assert lo < regression_metrics(pred, gold, ["a", "v", "d"])["ccc_mean"] < hi


def test_bootstrap_interval_narrows_with_more_data():
    small = bootstrap_ci(*noisy_predictions(100, seed=9), "uar")
    large = bootstrap_ci(*noisy_predictions(3000, seed=9), "uar")
    assert large[1] - large[0] < (small[1] - small[0]) / 2


def test_bootstrap_rejects_bad_arguments():
    with pytest.raises(ValueError, match="unknown bootstrap metric"):
        bootstrap_ci(["a"], ["a"], "accuracy")
    with pytest.raises(ValueError, match="alpha"):
        bootstrap_ci(["a"], ["a"], "uar", alpha=1.5)
    with pytest.raises(ValueError, match="1 references but 2 predictions"):
        bootstrap_ci(["a"], ["a", "b"], "uar")



# ---------------------------------------------------------------- speaker (cluster) bootstrap

def test_speaker_bootstrap_resamples_whole_speakers_hand_computed():
    """Speaker A: 3 right; speaker B: 1 wrong. A resample is AA, AB or BB (1/4, 1/2, 1/4): WA 1, 3/4 or 0."""
    gold, pred, spk = ["x"] * 4, ["x", "x", "x", "y"], ["A", "A", "A", "B"]
    seen = []

    def wa(t, p):
        seen.append("".join(sorted("A" if (ti, pi) == ("x", "x") else "B" for ti, pi in zip(t, p))))
        return float(np.mean(t == p))

    assert bootstrap_ci(gold, pred, wa, n_boot=2000, groups=spk) == (0.0, 1.0)  # BB and AA are 1/4 each
    freq = {c: seen.count(c) / len(seen) for c in set(seen)}
    assert set(freq) == {"AAAAAA", "AAAB", "BB"}  # whole speakers only: never a part of A
    assert freq["AAAAAA"] == pytest.approx(0.25, abs=0.03) and freq["AAAB"] == pytest.approx(0.5, abs=0.03)
    assert bootstrap_ci(gold, pred, "wa", n_boot=2000, groups=spk) == (0.0, 1.0)  # the numpy path agrees
    # resampling utterances instead: 4 draws of p = 3/4, P(WA <= 1/4) = 13/256 > 2.5% > P(WA = 0)
    assert bootstrap_ci(gold, pred, "wa", n_boot=2000) == (0.25, 1.0)


def _correlated(n_spk=20, per_spk=30, draws=1, seed=0):
    """Each speaker's decisions share one accuracy (0.2..1.0): strong within-speaker correlation."""
    rng = np.random.default_rng(seed)
    gold, pred, spk = [], [], []
    for s in range(n_spk):
        acc = rng.uniform(0.2, 1.0)
        t = list(rng.choice(LABELS, size=per_spk))
        p = [g if rng.random() < acc else LABELS[(LABELS.index(g) + 1) % 4] for g in t]
        for _ in range(draws):  # a query scored once per enrolment draw is one observation several times over
            gold += t
            pred += p
            spk += [f"s{s:02d}"] * per_spk
    return gold, pred, spk


def test_speaker_bootstrap_is_wider_under_within_speaker_correlation():
    gold, pred, spk = _correlated(draws=5)
    per_utt = bootstrap_ci(gold, pred, "uar")
    per_spk = bootstrap_ci(gold, pred, "uar", groups=spk)
    point = classification_metrics(gold, pred, LABELS)["uar"]
    assert per_spk[0] < point < per_spk[1]
    assert per_spk[1] - per_spk[0] > 2.5 * (per_utt[1] - per_utt[0])
    assert per_spk == bootstrap_ci(gold, pred, "uar", groups=spk)  # seeded
    # the numpy path draws the resamples the callable path draws
    slow = bootstrap_ci(gold, pred, lambda t, p: classification_metrics(t, p, LABELS)["uar"], n_boot=40, groups=spk)
    assert bootstrap_ci(gold, pred, "uar", n_boot=40, groups=spk) == pytest.approx(slow)


def test_speaker_bootstrap_of_ccc_matches_the_callable_path():
    rng = np.random.default_rng(4)
    spk = np.repeat(np.arange(12), 15)
    gold = rng.normal(size=(len(spk), 3)) + rng.normal(size=(12, 3))[spk]
    pred = gold + rng.normal(size=gold.shape) + rng.normal(size=(12, 3))[spk]
    mean_ccc = lambda g, p: regression_metrics(p, g, ["a", "v", "d"])["ccc_mean"]  # noqa: E731
    assert bootstrap_ci(gold, pred, "ccc_mean", n_boot=40, groups=spk) == pytest.approx(
        bootstrap_ci(gold, pred, mean_ccc, n_boot=40, groups=spk))
    assert bootstrap_ci(gold[:, 0], pred[:, 0], "ccc", n_boot=40, groups=spk) == pytest.approx(
        bootstrap_ci(gold[:, 0], pred[:, 0], ccc, n_boot=40, groups=spk))


def test_speaker_bootstrap_needs_two_speakers_and_one_id_per_item():
    assert bootstrap_ci(["a", "b"], ["a", "a"], "uar", groups=["s", "s"]) == (None, None)
    with pytest.raises(ValueError, match="2 references but 1 group ids"):
        bootstrap_ci(["a", "b"], ["a", "a"], "uar", groups=["s"])
    with pytest.raises(ValueError, match="unknown bootstrap metric"):
        bootstrap_ci(["a"], ["a"], "accuracy", groups=["s"])

# ---------------------------------------------------------------- folds

def test_aggregate_folds_mean_sample_std_and_pooled_confusion():
    folds = [noisy_predictions(150 + 10 * k, seed=20 + k) for k in range(4)]
    per_fold = [classification_metrics(t, p, LABELS) for t, p in folds]
    agg = aggregate_folds(per_fold)
    uars = [m["uar"] for m in per_fold]
    assert agg["n_folds"] == 4 and agg["n"] == sum(m["n"] for m in per_fold)
    assert agg["mean"]["uar"] == pytest.approx(np.mean(uars))
    assert agg["std"]["uar"] == pytest.approx(np.std(uars, ddof=1))
    assert agg["mean"]["per_class_recall"]["sad"] == pytest.approx(
        np.mean([m["per_class_recall"]["sad"] for m in per_fold]))
    assert agg["confusion"] == np.sum([m["confusion"] for m in per_fold], axis=0).tolist()
    pooled = classification_metrics(sum((t for t, _ in folds), []), sum((p for _, p in folds), []), LABELS)
    assert agg["pooled"]["uar"] == pytest.approx(pooled["uar"])
    assert agg["pooled"]["wa"] == pytest.approx(pooled["wa"])


def test_aggregate_folds_undefined_values_and_single_fold():
    a = {"uar": 0.5, "per_class_recall": {"x": 0.4, "y": None}, "uar_ci": [0.4, 0.6]}
    b = {"uar": 0.7, "per_class_recall": {"x": 0.6, "y": 0.8}, "uar_ci": [0.6, 0.8]}
    agg = aggregate_folds([a, b])
    assert agg["mean"]["per_class_recall"]["y"] == pytest.approx(0.8)   # only where defined
    assert agg["std"]["per_class_recall"]["y"] is None
    assert agg["std"]["uar"] == pytest.approx(math.sqrt(0.02))
    assert "uar_ci" not in agg["mean"]
    assert aggregate_folds([a])["std"]["uar"] is None
    with pytest.raises(ValueError, match="no folds"):
        aggregate_folds([])


def test_an_undefined_dev_metric_is_not_selected_and_does_not_stop_training(tmp_path):
    """A dev CCC that is undefined (None) in one epoch is logged as NaN and never picked as the best."""
    import torch

    from sertk.train.trainer import Trainer

    data = [{"x": torch.tensor([float(i)]), "y": torch.tensor([2.0 * i])} for i in range(8)]
    model = torch.nn.Linear(1, 1)
    calls = []

    def evaluate(m, loader):
        calls.append(1)
        return {"ccc_mean": None if len(calls) == 1 else 0.5}

    def loss(m, b):
        return ((m(b["x"]) - b["y"]) ** 2).mean()

    def collate(items):
        return {k: torch.stack([it[k] for it in items]) for k in items[0]}

    summary = Trainer(model, data, data, collate, loss, evaluate,
                      {"epochs": 2, "batch_size": 4, "select_metric": "ccc_mean", "select_mode": "max",
                       "progress": False}, tmp_path).fit()
    assert summary["best_epoch"] == 2
