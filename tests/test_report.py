"""Result records and the stage-11 report, end to end on a fake experiment tree."""
import json
import re

import matplotlib.image
import numpy as np
import pytest

from sertk.bin import report as report_cli
from sertk.eval.metrics import aggregate_folds, classification_metrics, regression_metrics
from sertk.eval.report import write_report
from sertk.eval.results import ResultsError, protocol_id, read_results, write_result

LABELS = ["neutral", "happy", "angry", "sad"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def protocol(train="studio_train", test="phone_test", **kw):
    p = {"corpus": "mini_emo", "protocol": "studio", "fold": None, "scheme": "speaker-independent",
         "train": train, "dev": "studio_dev", "test": test, "label_map": "mini_emo4", "hash": "0123456789ab"}
    p.update(kw)
    return p


def predictions(n, seed, p_correct=0.6):
    rng = np.random.default_rng(seed)
    y_true = list(rng.choice(LABELS, size=n))
    return y_true, [t if rng.random() < p_correct else str(rng.choice(LABELS)) for t in y_true]


def write_classification(path, name, proto, seed, stage=4, extra=None, ci=None):
    m = classification_metrics(*predictions(120, seed), LABELS)
    if ci:
        m["uar_ci"] = ci
    write_result(path, stage=stage, name=name, task="classification", protocol=proto, metrics=m,
                 labels=LABELS, confusion=m["confusion"], extra=extra or {"fold": proto.get("fold")})
    return m


@pytest.fixture
def exp(tmp_path):
    """A run with a plain classifier, a 3-fold protocol, a regressor and a baseline."""
    root = tmp_path / "exp"
    single = write_classification(root / "clf/studio/eval/phone_test/results.json", "clf", protocol(), seed=1,
                                  ci=(0.41, 0.52))
    folds = [write_classification(root / f"clf/loso/fold{k}/eval/fold{k}_test/results.json", "clf",
                                  protocol(train=f"fold{k}_train", test=f"fold{k}_test", protocol="loso",
                                           fold=k, scheme="leave-one-session-out", hash=f"{k}" * 12), seed=10 + k)
             for k in (1, 2, 3)]
    rng = np.random.default_rng(0)
    gold = rng.normal(size=(80, 3))
    reg = regression_metrics(gold + rng.normal(scale=0.5, size=(80, 3)), gold, ["arousal", "valence", "dominance"])
    write_result(root / "w2s/studio/eval/phone_test/results.json", stage=8, name="wav2small", task="regression",
                 protocol=protocol(), metrics=reg, extra={"fold": None})
    write_classification(root / "egemaps/studio/eval/phone_test/results.json", "egemaps_lr", protocol(), seed=2,
                         extra={"fold": None, "baseline": True})
    (root / "plots").mkdir(parents=True)
    (root / "plots" / "keep.txt").write_text("not the report's\n")
    return {"root": root, "single": single, "folds": folds, "reg": reg}


# ---------------------------------------------------------------- records

def test_write_result_records_protocol_id_and_plain_json(tmp_path):
    path = tmp_path / "r" / "results.json"
    metrics = {"uar": np.float32(0.5), "wa": np.float64(0.25), "uar_ci": (0.4, 0.6), "pearson": float("nan")}
    rec = write_result(path, stage=np.int64(4), name="m", task="classification", protocol=protocol(),
                       metrics=metrics, labels=["a", "b"], confusion=np.array([[1, 0], [2, 3]]))
    on_disk = json.loads(path.read_text())
    assert on_disk == rec
    assert on_disk["metrics"]["uar"] == 0.5 and on_disk["metrics"]["uar_ci"] == [0.4, 0.6]
    assert on_disk["metrics"]["pearson"] is None           # NaN is not JSON
    assert on_disk["confusion"] == [[1, 0], [2, 3]]
    assert on_disk["stage"] == 4 and on_disk["sertk_version"] and on_disk["created"]
    pid = on_disk["protocol_id"]
    for part in ("corpus=mini_emo", "train=studio_train", "test=phone_test", "scheme=speaker-independent",
                 "labels=mini_emo4"):
        assert part in pid
    assert pid.endswith("#01234567")
    assert protocol_id(protocol(test="studio_test")) != pid
    assert [p.name for p in path.parent.iterdir()] == ["results.json"]   # no temporary left behind


def test_write_result_rejects_incomplete_protocol(tmp_path):
    p = protocol()
    del p["scheme"]
    with pytest.raises(ValueError, match=r"missing required key\(s\) \['scheme'\]"):
        write_result(tmp_path / "results.json", stage=4, name="m", task="classification", protocol=p,
                     metrics={"uar": 0.5})
    with pytest.raises(ValueError, match="2 labels"):
        write_result(tmp_path / "results.json", stage=4, name="m", task="classification", protocol=protocol(),
                     metrics={}, labels=["a", "b"], confusion=[[1, 0, 0], [0, 1, 0], [0, 0, 1]])
    assert not (tmp_path / "results.json").exists()


def test_read_results_finds_every_record_sorted(exp):
    records = read_results(exp["root"])
    paths = [r["path"] for r in records]
    assert len(records) == 6 and paths == sorted(paths)
    assert all(p.endswith("results.json") for p in paths)


# ---------------------------------------------------------------- report

def test_report_end_to_end(exp, tmp_path, capsys):
    root = exp["root"]
    out = tmp_path / "RESULTS.md"
    assert report_cli.main(["--exp", str(root), "--out", str(out), "--title", "sertk results: mini_emo"]) == 0
    text = out.read_text()
    assert capsys.readouterr().out == text
    assert text.startswith("# sertk results: mini_emo\n")

    sections = re.findall(r"^## (.+)$", text, flags=re.M)
    assert sections == ["Stages 3-4: SELM and SER models", "Stages 7-8: Wav2Small distillation", "Baselines"]
    assert "| result | protocol | n | UAR | WA | macro-F1 | majority UAR / WA | chance UAR / WA | confusion |" in text
    assert "| result | protocol | n | CCC arousal | CCC valence | CCC dominance | mean CCC |" in text

    for rec in read_results(root):   # every result's protocol id, fold members included
        assert f"`{rec['protocol_id']}`" in text

    single = exp["single"]
    row = next(line for line in text.splitlines() if "studio_train → phone_test" in line and "| clf |" in line)
    assert f"{single['uar']:.3f} [0.410, 0.520]" in row
    assert f"{single['majority_uar']:.3f} / {single['majority_wa']:.3f}" in row
    assert f"{single['chance_uar']:.3f} / {single['chance_wa']:.3f}" in row

    agg = aggregate_folds(exp["folds"])
    row = next(line for line in text.splitlines() if "3 folds" in line)
    assert f"{agg['mean']['uar']:.3f} ± {agg['std']['uar']:.3f}" in row
    assert f"| {agg['n']} |" in row
    # the folds' utterances pooled: the summed confusion's UAR with an interval around it
    pooled = re.search(r"± [0-9.]+; pooled ([0-9.]+) \[([0-9.]+), ([0-9.]+)\]", row)
    assert pooled, row
    value, lo, hi = map(float, pooled.groups())
    assert value == pytest.approx(agg["pooled"]["uar"], abs=5e-4) and lo <= value <= hi and hi - lo > 0.01
    assert "folds=1,2,3" in text

    row = next(line for line in text.splitlines() if "| wav2small |" in line)
    assert f"{exp['reg']['ccc']['valence']:.3f}" in row and f"{exp['reg']['ccc_mean']:.3f}" in row

    links = re.findall(r"\[png\]\(([^)]+)\)", text)
    assert len(links) == 3          # two single classifiers + the fold aggregate
    for link in links:
        png = (out.parent / link).resolve()
        assert png.parent == (root / "plots").resolve()
        assert png.read_bytes()[:8] == PNG_MAGIC
        assert matplotlib.image.imread(png).ndim == 3
    assert (root / "plots" / "keep.txt").read_text() == "not the report's\n"


def test_report_rerun_is_stable(exp, tmp_path):
    first = write_report(exp["root"], tmp_path / "a.md", "t")
    assert write_report(exp["root"], tmp_path / "b.md", "t") == first


def test_malformed_results_json_names_the_file(exp, tmp_path, capsys):
    bad = exp["root"] / "broken" / "eval" / "results.json"
    bad.parent.mkdir(parents=True)
    bad.write_text('{"stage": 4, "name": ')
    with pytest.raises(ResultsError, match=re.escape(str(bad))):
        write_report(exp["root"], tmp_path / "RESULTS.md", "t")
    assert report_cli.main(["--exp", str(exp["root"]), "--out", str(tmp_path / "RESULTS.md")]) == 1
    assert str(bad) in capsys.readouterr().err
    assert not (tmp_path / "RESULTS.md").exists()

    bad.write_text(json.dumps({"stage": 4, "name": "x", "task": "classification", "metrics": {}}))
    with pytest.raises(ResultsError, match=re.escape(str(bad)) + r".*missing field\(s\) \['protocol', 'protocol_id'\]"):
        read_results(exp["root"])


def test_duplicate_fold_is_an_error(exp, tmp_path):
    proto = protocol(train="fold1_train", test="fold1_test", protocol="loso", fold=1,
                     scheme="leave-one-session-out", hash="1" * 12)
    write_classification(exp["root"] / "clf/loso_again/fold1/results.json", "clf", proto, seed=99)
    with pytest.raises(ResultsError, match="two results for fold 1"):
        write_report(exp["root"], tmp_path / "RESULTS.md", "t")


def test_folds_with_two_test_sets_give_two_rows_in_fold_order(tmp_path):
    root = tmp_path / "exp"
    for k in (1, 2, 10):
        for test in (f"fold{k}_test", "phone_test"):
            proto = protocol(train=f"fold{k}_train", test=test, protocol="loso", fold=k,
                             scheme="leave-one-session-out", hash=None)
            write_classification(root / f"clf/loso/fold{k}/eval/{test}/results.json", "clf", proto, seed=k)
    text = write_report(root, tmp_path / "RESULTS.md", "t")
    assert text.count("3 folds") == 2
    assert text.count("folds=1,2,10#") == 2
    assert len(list((root / "plots").glob("*.png"))) == 2


def test_empty_experiment_gives_a_report_saying_so(tmp_path):
    (tmp_path / "exp").mkdir()
    text = write_report(tmp_path / "exp", tmp_path / "RESULTS.md", "t")
    assert "No results.json found" in text


def test_a_model_that_did_not_learn_is_marked(tmp_path):
    root = tmp_path / "exp"
    write_classification(root / "clf/studio/eval/phone_test/results.json", "clf", protocol(), seed=1,
                         extra={"fold": None, "collapsed": True})
    for k in (1, 2):  # one fold's model collapsed: the fold row is marked
        proto = protocol(train=f"fold{k}_train", test=f"fold{k}_test", protocol="loso", fold=k,
                         scheme="leave-one-session-out", hash=f"{k}" * 12)
        write_classification(root / f"clf/loso/fold{k}/eval/fold{k}_test/results.json", "clf_loso", proto,
                             seed=k, extra={"fold": k, "collapsed": k == 2})
    gold = np.random.default_rng(0).normal(size=(40, 3))
    reg = regression_metrics(np.zeros((40, 3)), gold, ["arousal", "valence", "dominance"])
    for name, collapsed in (("teacher", True), ("wav2small", False)):
        write_result(root / f"{name}/studio/eval/phone_test/results.json", stage=8, name=name, task="regression",
                     protocol=protocol(), metrics=reg, extra={"fold": None, "collapsed": collapsed})
    text = write_report(root, tmp_path / "RESULTS.md", "t")
    names = [line.split(" | ")[0].lstrip("| ") for line in text.splitlines() if line.startswith("| ")
             and not line.startswith(("| result", "| ---"))]
    assert names == ["clf (did not learn)", "clf_loso (did not learn)", "teacher (did not learn)", "wav2small"]
    note = "*(did not learn)*: in training, the model's dev selection metric never rose above chance"
    assert text.count(note) == 2  # once under each table that has a marked row


def test_zoo_table_opens_the_report_with_probe_figures_beside_egemaps(exp, tmp_path):
    zoo = tmp_path / "zoo"
    (zoo / "w2v").mkdir(parents=True)
    (zoo / "w2v" / "zoo.json").write_text(json.dumps({
        "name": "w2v", "class": "Wav2Vec2Model", "stands_in_for": "facebook/wav2vec2-base", "params": 12345,
        "objective": "masked prediction", "train_seconds": 61.2, "dev": {"emo_uar": 0.5},
        "pool": {"path": "data/pretrain", "utterances": 1536, "speakers": 64}}))
    probe = write_classification(exp["root"] / "probe_w2v/studio/eval/phone_test/results.json", "probe_w2v",
                                 protocol(), seed=3, extra={"fold": None, "encoder": "zoo/w2v", "layer": 3})
    md = write_report(exp["root"], tmp_path / "RESULTS.md", zoo=zoo)
    section = md.split("## Model zoo (stage 0)")[1].split("\n## ")[0]
    assert md.index("## Model zoo") < md.index("## Baselines")
    row = next(line for line in section.splitlines() if line.startswith("| `zoo/w2v`"))
    assert "`Wav2Vec2Model`" in row and "12,345" in row and f"{probe['uar']:.3f} (probe_w2v, layer 3)" in row
    ref = next(line for line in section.splitlines() if line.startswith("| eGeMAPS + LR"))
    egemaps = json.loads((exp["root"] / "egemaps/studio/eval/phone_test/results.json").read_text())
    assert f"{egemaps['metrics']['uar']:.3f}" in ref
    assert "Model zoo" not in write_report(exp["root"], tmp_path / "R2.md")  # real recipes: no zoo


def test_an_undefined_ccc_is_reported_as_such_beside_the_categorical_results(tmp_path):
    """A constant A/V/D dimension gives null in results.json and 'undefined' with a note in the table."""
    root = tmp_path / "exp"
    rng = np.random.default_rng(4)
    names = ["arousal", "valence", "dominance"]

    def regression(path, proto, constant: bool):
        gold = rng.normal(size=(60, 3))
        pred = gold + rng.normal(scale=0.5, size=(60, 3))
        if constant:
            gold[:, 2] = pred[:, 2] = 3.0
        m = regression_metrics(pred, gold, names)
        write_result(path, stage=4, name="egemaps_lr_ridge", task="regression", protocol=proto, metrics=m,
                     extra={"fold": proto.get("fold")})
        return m

    single = regression(root / "lr/studio/eval/phone_test/avd/results.json", protocol(), True)
    write_classification(root / "lr/studio/eval/phone_test/results.json", "egemaps_lr", protocol(), seed=3)
    for k in (1, 2):
        regression(root / f"lr/loso/fold{k}/eval/fold{k}_test/avd/results.json",
                   protocol(train=f"fold{k}_train", test=f"fold{k}_test", protocol="loso", fold=k,
                            scheme="leave-one-session-out", hash=f"{k}" * 12), constant=k == 2)
    assert json.loads((root / "lr/studio/eval/phone_test/avd/results.json").read_text()
                      )["metrics"]["ccc"]["dominance"] is None
    text = write_report(root, tmp_path / "RESULTS.md", "t")
    assert "| egemaps_lr |" in text                          # the categorical result is still there
    row = next(line for line in text.splitlines() if "| egemaps_lr_ridge |" in line and "phone_test" in line)
    assert "| undefined |" in row and f"{single['ccc_mean']:.3f} (2 of 3 dims)" in row
    folds = next(line for line in text.splitlines() if "| egemaps_lr_ridge |" in line and "2 folds" in line)
    assert "(undefined in fold 2)" in folds
    assert "*undefined*: CCC has no value" in text
    regression(tmp_path / "defined/lr/studio/eval/phone_test/avd/results.json", protocol(), False)
    assert "*undefined*" not in write_report(tmp_path / "defined", tmp_path / "defined.md", "t")


def test_learning_curves_are_listed_and_linked(tmp_path):
    from sertk.eval.plots import plot_learning_curve
    root = tmp_path / "exp"
    write_classification(root / "clf/studio/eval/phone_test/results.json", "clf", protocol(), seed=1)
    hist = [{"epoch": e, "train_loss": 1.0 / e, "dev": {"uar": u}} for e, u in ((1, 0.3), (2, 0.6), (3, 0.5))]
    for rel, collapsed in (("clf/studio", False), ("selm/studio", True), ("clf.old-1/studio", False),
                           ("selm/studio/fewshot/k5", None)):
        d = root / rel
        d.mkdir(parents=True, exist_ok=True)
        (d / "history.json").write_text(json.dumps({"select_metric": "uar", "best_epoch": 2, "history": hist}))
        (d / "best.json").write_text(json.dumps({"epoch": 2, "metrics": {} if collapsed is None else {"uar": 0.6},
                                                 "collapsed": bool(collapsed),
                                                 "collapse_reason": "dev uar at chance" if collapsed else None}))
        plot_learning_curve(hist, d / "learning_curve.png", "uar", 2)
    text = write_report(root, tmp_path / "RESULTS.md", "t")
    section = text.split("## Learning curves", 1)[1]
    assert "| clf/studio | 3 | 2 | uar 0.600 | learned | [png](exp/clf/studio/learning_curve.png) |" in section
    assert "| selm/studio | 3 | 2 | uar 0.600 | did not learn: dev uar at chance |" in section
    assert "clf.old-1" not in section                     # a run moved aside is not current
    assert "| selm/studio/fewshot/k5 | 3 | 2 | – (no dev set: last epoch kept) | – (nothing to judge by) |" in section
    assert matplotlib.image.imread(str(root / "clf/studio/learning_curve.png")).shape[0] > 100
