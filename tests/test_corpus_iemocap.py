"""IEMOCAP recipe: EmoEvaluation blocks, V/A/D order, 4-class map, leave-one-session-out."""
from pathlib import Path

import pytest

from fixtures_corpora import REPO, make_iemocap, read_skipped, read_table, run_prepare
from sertk.common.protocol import load_protocols
from sertk.data.datadir import DataDir
from sertk.data.labels import LabelMap

RECIPE = REPO / "egs" / "iemocap"


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("iemocap")
    info = make_iemocap(root / "db")
    r = run_prepare("iemocap", root / "db", root / "data")
    assert r.returncode == 0, r.stderr
    return root, info


def test_labels_avd_order_and_speakers(prepared):
    root, info = prepared
    dd = DataDir.read(root / "data" / "all")
    assert len(dd) == info["n"]
    for name, (label, avd, session) in info["ann"].items():
        g = name.rsplit("_", 1)[1][0]
        u = f"iemocap-{name[:5]}{g}-{name}"
        assert dd.utt2emo[u] == label
        assert dd.utt2avd[u] == avd                    # bracket is [V, A, D]; utt2avd is A V D
        assert dd.utt2spk[u] == f"iemocap-{name[:5]}{g}"
        assert read_table(root / "data" / "all" / "utt2session")[u] == session
    typ = read_table(root / "data" / "all" / "utt2type")
    assert typ["iemocap-Ses02F-Ses02F_impro01_F000"] == "improvised"
    assert typ["iemocap-Ses02M-Ses02M_script01_1_M000"] == "scripted"
    votes = read_table(root / "data" / "all" / "utt2votes")["iemocap-Ses02F-Ses02F_impro01_F000"]
    assert votes.split() == ["E1:Neutral", "E2:Neutral/Frustration", "F1:Neutral"]
    skipped = read_skipped(root / "data")
    for kind, what in info["skipped"].items():
        hits = [k for k, v in skipped.items() if str(Path(str(what)).name) in k]
        assert hits and skipped[hits[0]].startswith(kind), (what, skipped)


def test_loso_folds_hold_one_session_in_the_4class_map(prepared):
    root, info = prepared
    lm = LabelMap.load(RECIPE / "conf" / "labels.yaml")
    splits = load_protocols(RECIPE / "conf" / "protocols.yaml")
    assert [s.tests[0] for s in splits] == [f"fold{k}_test" for k in range(1, 6)]
    in_map = {n for n, (lab, _, _) in info["ann"].items() if lab in lm}
    tested = []
    for k, split in enumerate(splits, 1):
        test = DataDir.read(root / "data" / split.tests[0])
        train = DataDir.read(root / "data" / split.train)
        sessions = read_table(root / "data" / split.tests[0] / "utt2session")
        assert set(sessions.values()) == {f"Session{k}"}
        assert f"Session{k}" not in set(read_table(root / "data" / split.train / "utt2session").values())
        assert set(test.utt2emo.values()) <= {"ang", "hap", "exc", "neu", "sad"}   # fru, xxx left out
        assert not set(test.utt2spk.values()) & set(train.utt2spk.values())
        tested += [u.split("-", 2)[2] for u in test.utts]
    assert sorted(tested) == sorted(in_map)           # every 4-class utterance tested once (5,531 on the corpus)
    assert "exc" in {lab for lab, _, _ in info["ann"].values() if lab in lm}


def test_malformed_block_line_is_named(tmp_path):
    make_iemocap(tmp_path / "db", sessions=(1,))
    ev = tmp_path / "db" / "Session1" / "dialog" / "EmoEvaluation" / "Ses01M_script01_1.txt"
    lines = ev.read_text().splitlines()
    bad = next(i for i, line in enumerate(lines) if line.startswith("["))
    lines[bad] = lines[bad].replace("\t[", "\t(")       # V, A, D not in brackets
    ev.write_text("\n".join(lines) + "\n")
    r = run_prepare("iemocap", tmp_path / "db", tmp_path / "data")
    assert r.returncode == 1
    assert f"Ses01M_script01_1.txt:{bad + 1}: expected '[start - end]" in r.stderr
