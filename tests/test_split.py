"""Speaker-independent splits and folds, job parts, subsets and combining (no audio needed)."""
from __future__ import annotations

from pathlib import Path

import pytest

from sertk.bin import combine_data_dirs, split_data_dir, subset_data_dir
from sertk.data.datadir import DataDir, DataDirError
from sertk.data.split import (combine, make_folds, split_by_speaker, split_into_parts, subset, write_folds)
from sertk.data.validate import check_speaker_disjoint

# Uneven speakers, as in real corpora: 10 speakers with 3..21 utterances.
SIZES = {f"spk{i:02d}": 3 + 2 * i for i in range(10)}


def make_dir(root: Path, name: str = "all", prefix: str = "", sizes=SIZES) -> Path:
    t = {"wav.scp": {}, "utt2spk": {}, "utt2emo": {}, "segments": {}}
    for s, n in sizes.items():
        t["wav.scp"][f"{prefix}{s}_rec"] = f"/audio/{prefix}{s}.wav"
        for k in range(n):
            u = f"{prefix}{s}-{k:03d}"
            t["utt2spk"][u] = f"{prefix}{s}"
            t["utt2emo"][u] = ["neu", "hap", "sad"][k % 3]
            t["segments"][u] = f"{prefix}{s}_rec {k}.0 {k}.5"
    DataDir(t).write(root / name)
    return root / name


def speakers(dd: DataDir) -> set[str]:
    return set(dd.utt2spk.values())


def test_folds_are_speaker_disjoint_and_cover_all(tmp_path):
    d = make_dir(tmp_path)
    full = DataDir.read(d)
    folds = make_folds(d, 5, seed=1)
    assert len(folds) == 5
    tests = []
    for train, test in folds:
        assert not speakers(train) & speakers(test)
        assert sorted(train.utts + test.utts) == full.utts
        assert set(test.tables["wav.scp"]) == {test.tables["segments"][u].split()[0] for u in test.utts}
        tests += test.utts
    assert sorted(tests) == full.utts  # every utterance is tested exactly once
    # deterministic per seed; a different seed gives other folds
    assert [t.utts for _, t in make_folds(d, 5, seed=1)] == [t.utts for _, t in folds]
    assert [t.utts for _, t in make_folds(d, 5, seed=2)] != [t.utts for _, t in folds]
    sizes = [len(t) for _, t in folds]
    assert max(sizes) - min(sizes) <= 8  # balanced although speakers have 3..21 utterances
    paths = write_folds(folds, tmp_path / "folds")
    assert DataDir.read(paths[0] / "test").utts == folds[0][1].utts
    assert check_speaker_disjoint({"train": paths[2] / "train", "test": paths[2] / "test"}) == []


def test_group_folds_keep_groups_whole(tmp_path):
    d = make_dir(tmp_path)
    full = DataDir.read(d)
    session = {u: f"ses{int(full.utt2spk[u][3:]) // 2}" for u in full.utts}  # 2 speakers per session
    folds = make_folds(d, 5, by="group", groups=session)
    for train, test in folds:
        assert len({session[u] for u in test.utts}) == 1
        assert not {session[u] for u in test.utts} & {session[u] for u in train.utts}
    with pytest.raises(DataDirError, match="cannot make 11 disjoint folds"):
        make_folds(d, 11)


def test_split_by_speaker_fractions(tmp_path):
    d = make_dir(tmp_path)
    parts = split_by_speaker(d, {"train": 0.8, "test": 0.2}, seed=0)
    tr, te = parts["train"], parts["test"]
    assert not speakers(tr) & speakers(te)
    assert sorted(tr.utts + te.utts) == DataDir.read(d).utts
    assert 0.65 < len(tr) / (len(tr) + len(te)) < 0.95
    again = split_by_speaker(d, {"train": 0.8, "test": 0.2}, seed=0)
    assert again["test"].utts == te.utts
    equal = split_by_speaker(d, n_parts=3, seed=4)
    assert sorted(u for p in equal.values() for u in p.utts) == DataDir.read(d).utts
    with pytest.raises(ValueError, match="either fractions or n_parts"):
        split_by_speaker(d)


def test_split_into_parts_covers_all_and_keeps_speakers_whole(tmp_path):
    d = make_dir(tmp_path)
    utts = DataDir.read(d).utts
    paths = split_into_parts(d, 4)
    assert paths == [d / "split4" / str(k) for k in range(1, 5)]
    parts = [DataDir.read(p) for p in paths]
    assert [u for p in parts for u in p.utts] == utts  # contiguous blocks, in order, each once
    spk_sets = [speakers(p) for p in parts]
    for i in range(4):
        for j in range(i + 1, 4):
            assert not spk_sets[i] & spk_sets[j]
    assert all(len(p) > 0 for p in parts)
    # more jobs than speakers: speakers get cut, but nothing is lost
    parts = [DataDir.read(p) for p in split_into_parts(d, 30)]
    assert [u for p in parts for u in p.utts] == utts and all(len(p) > 0 for p in parts)
    with pytest.raises(DataDirError, match="cannot fill"):
        split_into_parts(d, len(utts) + 1)


def test_subset_rules(tmp_path):
    d = make_dir(tmp_path)
    full = DataDir.read(d)
    assert subset(d, first=5).utts == full.utts[:5]
    assert subset(d, last=3).utts == full.utts[-3:]
    per = subset(d, per_spk=2)
    assert len(per) == 20 and all(len(us) == 2 for us in per.spk2utt.values())
    lst = tmp_path / "keep.txt"
    lst.write_text("spk03-001\nspk01-000 extra fields ignored\n")
    assert subset(d, utt_list=lst).utts == ["spk01-000", "spk03-001"]
    assert speakers(subset(d, spk_list=["spk02"])) == {"spk02"}
    r = subset(d, random_n=10, seed=3)
    assert len(r) == 10 and r.utts == subset(d, random_n=10, seed=3).utts
    assert set(r.tables["wav.scp"]) == {r.tables["segments"][u].split()[0] for u in r.utts}
    with pytest.raises(DataDirError, match="not in"):
        subset(d, utt_list=["nope"])
    with pytest.raises(ValueError, match="exactly one"):
        subset(d, first=2, last=2)


def test_combine(tmp_path):
    a = make_dir(tmp_path, "a", prefix="c1_", sizes={"x": 3, "y": 2})
    b = make_dir(tmp_path, "b", prefix="c2_", sizes={"x": 4})
    both = combine([a, b])
    assert len(both) == 9 and speakers(both) == {"c1_x", "c1_y", "c2_x"}
    clash = tmp_path / "clash"
    dd = DataDir.read(b)
    dd.tables["utt2spk"] = {u.replace("c2_", "c1_"): s for u, s in dd.utt2spk.items()}
    dd.tables["utt2emo"] = {u.replace("c2_", "c1_"): "ang" for u in dd.utts}
    dd.tables["segments"] = {u.replace("c2_", "c1_"): v for u, v in dd.tables["segments"].items()}
    dd.write(clash)
    with pytest.raises(DataDirError, match="appears twice with different values"):
        combine([a, clash])


def test_cli_split_subset_combine(tmp_path, capsys):
    d = make_dir(tmp_path)
    assert split_data_dir.main([str(d), "--folds", "3", "--out", str(tmp_path / "cv")]) == 0
    assert all((tmp_path / "cv" / f"fold{k}" / "test" / "utt2spk").exists() for k in (1, 2, 3))
    assert split_data_dir.main([str(d), "--fractions", "train=0.7,dev=0.1,test=0.2", "--out", str(tmp_path)]) == 0
    parts = {n: DataDir.read(tmp_path / n) for n in ("train", "dev", "test")}
    assert check_speaker_disjoint(parts) == []
    assert split_data_dir.main([str(d), "--nj", "2"]) == 0
    assert (d / "split2" / "2" / "spk2utt").exists()
    assert split_data_dir.main([str(d), "--folds", "3"]) == 2  # --out missing
    assert subset_data_dir.main([str(d), str(tmp_path / "sub"), "--per-spk", "1"]) == 0
    assert len(DataDir.read(tmp_path / "sub")) == 10
    assert combine_data_dirs.main([str(tmp_path / "comb"), str(tmp_path / "dev"), str(tmp_path / "test")]) == 0
    assert len(DataDir.read(tmp_path / "comb")) == len(parts["dev"]) + len(parts["test"])
    assert subset_data_dir.main([str(d), str(tmp_path / "bad"), "--utt-list", str(tmp_path / "missing.txt")]) == 1
    assert "subset-data-dir:" in capsys.readouterr().err
