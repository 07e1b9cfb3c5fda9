"""Generated folds keep speakers whole and every class in every test fold; EmoBox's folds import as a split list."""
from __future__ import annotations

import json
import random
from collections import Counter

import pytest
import yaml

from sertk.bin import emobox_folds, import_corpus, split_data_dir
from sertk.data.corpus_prep import (PrepReport, UttTable, assign_folds, build_protocol_sets, read_split_list)
from sertk.data.datadir import DataDir
from sertk.data.folds import describe_fold_counts, fold_label_counts, stratified_group_folds

CLASSES = ("neu", "hap", "ang", "sad")


def talk_show(seed: int = 3, n_speakers: int = 30):
    """Spontaneous-speech-like corpus: each speaker shows one or two emotions, 4-25 utterances."""
    r = random.Random(seed)
    t = UttTable("show")
    for s in range(n_speakers):
        emos = r.sample(CLASSES, r.choice([1, 1, 2]))
        sp = t.speaker(f"s{s:02d}")
        for k in range(r.randint(4, 25)):
            t.add(t.utt_id(sp, f"u{k:02d}"), wav=f"/x/s{s:02d}_{k:02d}.wav", spk=sp, source=f"{s}-{k}",
                  emo=r.choice(emos))
    return t.to_datadir()


def _missing(folds, dd):
    counts = fold_label_counts(folds, dd.utt2spk, dd.utt2emo)
    return [(k, c) for k, cnt in enumerate(counts) for c in CLASSES if not cnt[c]]


def test_stratified_folds_keep_every_class_where_random_dealing_loses_one():
    dd = talk_show()
    utts = dd.utts
    groups, labels = [dd.utt2spk[u] for u in utts], [dd.utt2emo[u] for u in utts]
    random_folds = assign_folds(list(dd.spk2utt), 5, seed=0)       # the previous default: speakers dealt at random
    assert _missing(random_folds, dd), "the corpus must be one where random dealing loses a class"
    folds = stratified_group_folds(groups, labels, 5, seed=0)
    assert _missing(folds, dd) == []
    assert sorted(s for f in folds for s in f) == sorted(dd.spk2utt)       # every speaker in exactly one fold
    sizes = [sum(len(dd.spk2utt[s]) for s in f) for f in folds]
    assert max(sizes) - min(sizes) <= 0.5 * len(utts) / 5
    # deterministic, whatever order the utterances come in; another seed gives other folds
    rev = list(reversed(range(len(utts))))
    assert stratified_group_folds([groups[i] for i in rev], [labels[i] for i in rev], 5, seed=0) == folds
    assert stratified_group_folds(groups, labels, 5, seed=1) != folds
    with pytest.raises(ValueError, match="cannot fill 5 disjoint folds"):
        stratified_group_folds(groups[:10], labels[:10], 5)


def test_fold_counts_name_a_missing_class():
    lines, warns = describe_fold_counts([Counter(neu=3, hap=1), Counter(neu=2)], labels=["hap", "neu"])
    assert lines == ["fold1_test: 4 utterances: hap 1, neu 3", "fold2_test: 2 utterances: hap 0, neu 2"]
    assert warns == ["fold2_test has no utterance of hap: its UAR averages over 1 of 2 classes"]


def test_import_writes_stratified_folds_and_reports_counts(tmp_path):
    dd = talk_show()
    report = PrepReport()
    path = tmp_path / "split.txt"
    import_corpus._write_split(path, dd, {"folds": 5}, report, "show")
    sl = read_split_list(path)
    folds = [sl.sets[f"fold{k}_test"] for k in range(1, 6)]
    assert _missing(folds, dd) == []
    assert sum(n.startswith("fold") and "_test:" in n for n in report.notes) == 5 and not report.warnings
    assert "stratified by label" in path.read_text()
    # stratify: none keeps the old random dealing (which loses a class here, and says so)
    report = PrepReport()
    import_corpus._write_split(tmp_path / "random.txt", dd, {"folds": 5, "stratify": "none"}, report, "show")
    assert any("has no utterance of" in w for w in report.warnings)


def test_import_config_refuses_an_unknown_stratify(tmp_path):
    cfg = tmp_path / "import.yaml"
    cfg.write_text(yaml.safe_dump({"corpus": "c", "source": {"csv": "x.csv"}, "split": {"folds": 5, "stratify": "emo"}}))
    with pytest.raises(Exception, match="split.stratify must be one of label, none"):
        import_corpus.load_import_config(cfg)


def test_split_data_dir_folds_are_stratified(tmp_path, capsys):
    dd = talk_show()
    dd.write(tmp_path / "all")
    assert split_data_dir.main([str(tmp_path / "all"), "--folds", "5", "--out", str(tmp_path / "f")]) == 0
    out = capsys.readouterr().out
    assert out.count("_test: ") == 5 and "has no utterance" not in out
    tests = [DataDir.read(tmp_path / "f" / f"fold{k}" / "test") for k in range(1, 6)]
    assert all(set(t.utt2emo.values()) == set(CLASSES) for t in tests)


# ----------------------------------------------------------------- EmoBox
def _emobox(root, folds, corpus="emo"):
    """EmoBox's layout: data/<corpus>/fold_N/<corpus>_{train,test}_fold_N.jsonl, keys not sertk's ids."""
    for k, parts in folds.items():
        for part, names in parts.items():
            rows = [{"key": f"{corpus}-{n}", "dataset": corpus, "wav": f"downloads/{corpus}/wav/{n}.wav",
                     "type": "raw", "sample_rate": 16000, "task": "category", "emo": "x", "channel": 1}
                    for n in names]
            path = root / f"fold_{k}" / f"{corpus}_{part}_fold_{k}.jsonl"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def _corpus():
    t = UttTable("emo")
    for spk, files in (("03", ["03a01Fa", "03a02Wb"]), ("08", ["08a01Na", "08b02Fa"]), ("09", ["09a01Wa"])):
        sp = t.speaker(spk)
        for f in files:
            t.add(t.utt_id(sp, f), wav=f"/db/wav/{f}.wav", spk=sp, source=f, emo={"F": "hap", "W": "ang",
                                                                                 "N": "neu"}[f[5]])
    return t.to_datadir()


def test_emobox_folds_become_a_split_list_the_protocols_use(tmp_path, capsys):
    dd = _corpus()
    dd.write(tmp_path / "data" / "all")
    eb = _emobox(tmp_path / "EmoBox" / "data" / "emo", {
        1: {"train": ["03a01Fa", "08a01Na", "gone01"], "test": ["03a02Wb", "08b02Fa", "09a01Wa"]},
        2: {"train": ["03a02Wb", "08b02Fa", "09a01Wa"], "test": ["03a01Fa", "08a01Na"]}})
    out = tmp_path / "conf" / "splits" / "emo_emobox.txt"
    args = ["--emobox", str(eb), "--data", str(tmp_path / "data" / "all"), "--out", str(out)]
    assert emobox_folds.main(args) == 0
    printed = capsys.readouterr()
    sl = read_split_list(out)
    assert sl.unit == "utt"
    assert sl.sets["emobox_fold1_test"] == ["emo-03-03a02Wb", "emo-08-08b02Fa", "emo-09-09a01Wa"]
    assert sl.sets["emobox_fold2_train"] == ["emo-03-03a02Wb", "emo-08-08b02Fa", "emo-09-09a01Wa"]
    assert "gone01" in printed.err                                   # a row this copy lacks is named
    assert "fold 1 shares 2 speaker(s)" in printed.err               # EmoBox folds need not be speaker-independent
    assert "emobox_fold2_test has no utterance of ang" in printed.err
    assert f"lists_sha256: {sl.sha256}" in printed.out
    # the printed protocols entry builds the data dirs
    entry = printed.out.split("add to conf/protocols.yaml:\n", 1)[1]
    (tmp_path / "conf" / "protocols.yaml").write_text("corpus: emo\nprotocols:\n" + entry)
    sets = build_protocol_sets(dd, tmp_path / "conf" / "protocols.yaml", tmp_path / "data", PrepReport())
    assert sets["emobox_fold2_test"].utts == ["emo-03-03a01Fa", "emo-08-08a01Na"]
    # never overwrites a committed list
    assert emobox_folds.main(args) == 1
    assert "not overwriting" in capsys.readouterr().err


def test_emobox_errors_name_the_problem(tmp_path, capsys):
    _corpus().write(tmp_path / "all")
    eb = _emobox(tmp_path / "eb", {1: {"train": ["03a01Fa"], "test": ["03a01Fa"]}})
    assert emobox_folds.main(["--emobox", str(eb), "--data", str(tmp_path / "all"), "--out", str(tmp_path / "l")]) == 1
    assert "in both train and test" in capsys.readouterr().err
    (eb / "fold_1" / "emo_test_fold_1.jsonl").write_text('{"key": "a"}\n')
    assert emobox_folds.main(["--emobox", str(eb), "--data", str(tmp_path / "all"), "--out", str(tmp_path / "l")]) == 1
    assert "emo_test_fold_1.jsonl:1: an EmoBox row needs 'key' and 'wav'" in capsys.readouterr().err
    assert emobox_folds.main(["--emobox", str(tmp_path / "none"), "--data", str(tmp_path / "all"),
                              "--out", str(tmp_path / "l")]) == 1
    assert "not a directory" in capsys.readouterr().err
    assert not (tmp_path / "l").exists()
