"""sertk.data.corpus_prep and protocol list files: the machinery every prepare script shares."""
from collections import Counter

import numpy as np
import pytest
import soundfile as sf
import yaml

from fixtures_corpora import tone
from sertk.common.config import ConfigError
from sertk.common.fileio import sha256_file
from sertk.common.protocol import load_protocols
from sertk.data.corpus_prep import (CorpusInfo, PrepError, PrepReport, UttTable, assign_folds, build_protocol_sets,
                                    check_counts, fold_sets, read_split_list, require_db, scan_audio, split_units,
                                    write_split_list)


def test_split_list_round_trip_and_errors(tmp_path):
    path = write_split_list(tmp_path / "s.txt", {"train": ["b", "a"], "test": ["c"]}, unit="speaker", version=2,
                            description=["made by hand"])
    sl = read_split_list(path)
    assert sl.sets == {"train": ["a", "b"], "test": ["c"]} and sl.unit == "speaker" and sl.version == "2"
    assert sl.unit_table == "utt2spk" and sl.sha256 == sha256_file(path)
    bad = tmp_path / "bad.txt"
    bad.write_text("# version: 1\n# unit: session\ntrain S1\ntrain S2\n")
    with pytest.raises(PrepError, match=r"bad.txt:4: set 'train' is listed twice"):
        read_split_list(bad)
    bad.write_text("# version: 1\n# unit: session\nlonely\n")
    with pytest.raises(PrepError, match=r"bad.txt:3: expected 'set-name unit1 unit2 ...'"):
        read_split_list(bad)
    bad.write_text("# unit: session\ntrain S1\n")
    with pytest.raises(PrepError, match="missing '# version: ...' header"):
        read_split_list(bad)


def test_assign_folds_is_seeded_and_balanced_per_stratum():
    units = [f"s{i:02d}" for i in range(24)]
    strata = {u: "m" if i % 2 else "f" for i, u in enumerate(units)}
    folds = assign_folds(units, 6, seed=0, strata=strata)
    assert folds == assign_folds(reversed(units), 6, seed=0, strata=strata)      # order of input irrelevant
    assert folds != assign_folds(units, 6, seed=1, strata=strata)
    assert sorted(u for f in folds for u in f) == units
    assert all(Counter(strata[u] for u in f) == {"m": 2, "f": 2} for f in folds)
    sets = fold_sets(folds, dev="next")
    assert sets["fold6_dev"] == folds[0] and len(sets["fold1_train"]) == 16
    assert set(sets["fold1_train"]).isdisjoint(sets["fold1_test"] + sets["fold1_dev"])
    with pytest.raises(PrepError, match="cannot fill 6 folds"):
        assign_folds(units[:5], 6, seed=0)


def test_split_units_fractions():
    units = [f"u{i}" for i in range(91)]
    parts = split_units(units, {"train": 0.7, "dev": 0.1, "test": 0.2}, seed=0)
    assert [len(parts[p]) for p in ("train", "dev", "test")] == [64, 9, 18]
    assert sorted(sum(parts.values(), [])) == sorted(units)
    with pytest.raises(PrepError, match="came out empty"):
        split_units(units[:2], {"train": 0.8, "dev": 0.1, "test": 0.1}, seed=0)


def _protocols(tmp_path, sha=None, sets=("train", "test"), label_map="labels.yaml"):
    conf = tmp_path / "conf"
    write_split_list(conf / "splits" / "x.txt", {"train": ["c-a", "c-b"], "test": ["c-c"], "dev": ["c-d"]},
                     unit="speaker", version=1)
    (conf / "labels.yaml").write_text("name: two\nlabels: [ang, neu]\naliases: {exc: neu}\n")
    spec = {"scheme": "speaker-independent", "lists": "splits/x.txt", "train": sets[0], "test": [sets[1]]}
    if label_map:
        spec["label_map"] = label_map
    if sha:
        spec["lists_sha256"] = sha
    (conf / "protocols.yaml").write_text(yaml.safe_dump({"corpus": "c", "protocols": {"p": spec}}))
    return conf


def test_protocol_records_and_pins_the_list_hash(tmp_path):
    conf = _protocols(tmp_path)
    (split,) = load_protocols(conf / "protocols.yaml")
    digest = sha256_file(conf / "splits" / "x.txt")
    (tmp_path / "data").mkdir()
    rec = split.record("test", tmp_path / "data")
    assert rec["lists"] == ["x.txt"] and rec["lists_hash"] == digest
    assert "lists" not in split.options
    conf = _protocols(tmp_path / "pinned", sha="0" * 64)
    with pytest.raises(ConfigError, match="the split changed"):
        load_protocols(conf / "protocols.yaml")
    (conf / "splits" / "x.txt").unlink()
    with pytest.raises(ConfigError, match="does not exist"):
        load_protocols(conf / "protocols.yaml")
    assert load_protocols(conf / "protocols.yaml", check_lists=False)[0].lists


def _corpus():
    t = UttTable("c")
    for spk, labels in (("a", ["ang", "neu"]), ("b", ["exc", "fru"]), ("c", ["ang", "fru"]), ("d", ["neu"])):
        for k, lab in enumerate(labels):
            sp = t.speaker(spk)
            t.add(t.utt_id(sp, f"u{k}"), wav=f"/x/{spk}{k}.wav", spk=sp, source=f"{spk}{k}", emo=lab)
    return t.to_datadir()


def test_build_protocol_sets_filters_by_units_and_label_map(tmp_path):
    conf = _protocols(tmp_path)
    report = PrepReport()
    out = build_protocol_sets(_corpus(), conf / "protocols.yaml", tmp_path / "data", report)
    assert sorted(out) == ["test", "train"]
    assert out["train"].utt2emo == {"c-a-u0": "ang", "c-a-u1": "neu", "c-b-u0": "exc"}   # fru outside the map
    assert out["test"].utts == ["c-c-u0"]
    assert any("c-d" in n for n in report.notes)            # a speaker of this copy in no set used here
    conf = _protocols(tmp_path / "undefined", sets=("train", "nope"))
    with pytest.raises(PrepError, match="uses set 'nope', which none of its lists"):
        build_protocol_sets(_corpus(), conf / "protocols.yaml", tmp_path / "d2", PrepReport())
    t = UttTable("c")
    t.add("c-c-u9", wav="/x.wav", spk="c-c", source="x", emo="fru")              # only an unmapped label
    t.add("c-a-u9", wav="/y.wav", spk="c-a", source="y", emo="ang")
    conf = _protocols(tmp_path / "empty")
    with pytest.raises(PrepError, match="set test: none of the speakers"):
        build_protocol_sets(t.to_datadir(), conf / "protocols.yaml", tmp_path / "d3", PrepReport())
    rep = PrepReport()
    assert list(build_protocol_sets(t.to_datadir(), conf / "protocols.yaml", tmp_path / "d4", rep,
                                    optional=True)) == ["train"]
    assert any("skipped (optional)" in n for n in rep.notes)


def test_scan_audio_reads_by_content_and_names_what_it_skips(tmp_path):
    root = tmp_path / "db"
    tone(root / "a" / "one.wav", "x", variant=3)                 # AIFF data behind .wav
    tone(root / "a" / "two.WAV", "x", variant=1)                 # 24-bit, upper-case suffix
    sf.write(str(root / "a" / "silent.wav"), np.zeros(800, np.float32), 16000)
    (root / "a" / "empty.wav").write_bytes(b"")
    (root / "__MACOSX" / "a").mkdir(parents=True)
    (root / "__MACOSX" / "a" / "._one.wav").write_bytes(b"\0")
    (root / "notes.pdf").write_bytes(b"%PDF")
    report = PrepReport()
    found = scan_audio(root, report)
    assert [f.rel for f in found] == ["a/one.wav", "a/silent.wav", "a/two.WAV"]
    assert found[0].format == "AIFF" and found[2].subtype == "PCM_24"
    reasons = dict(report.skipped)
    assert reasons["a/empty.wav"].startswith("unreadable audio") or reasons["a/empty.wav"].startswith("empty audio")
    assert reasons["__MACOSX/a/._one.wav"] == "system folder (__MACOSX)"
    assert reasons["notes.pdf"] == "not audio (suffix .pdf)"
    report = PrepReport()
    assert [f.rel for f in scan_audio(root, report, decode=True)] == ["a/one.wav", "a/two.WAV"]
    assert dict(report.skipped)["a/silent.wav"] == "silent audio: every sample is 0"


def test_utt_table_and_counts_and_db_messages(tmp_path):
    t = UttTable("c")
    t.add("c-a-1", wav="/a.wav", spk="c-a", source="first.wav", emo="ang")
    with pytest.raises(PrepError, match="from second.wav was already made from first.wav"):
        t.add("c-a-1", wav="/b.wav", spk="c-a", source="second.wav", emo="ang")
    t.add("c-a-2", wav="/c.wav", spk="c-a", source="third.wav")                 # no label
    with pytest.raises(PrepError, match=r"utt2emo: 1 utterance\(s\) have no value.*third.wav"):
        t.to_datadir()
    report = PrepReport()
    assert check_counts(report, "x", {"a": 2, "b": 1}, {"a": 2, "b": 1})
    assert not check_counts(report, "x", {"a": 1, "z": 1}, {"a": 2, "b": 1})
    assert "a: 1 (expected 2); b: 0 (expected 1); z: 1 (not expected at all)" in report.warnings[0]
    info = CorpusInfo("Foo", "FOO", "foo", "https://foo.example", "CC0", "the folder foo/", expect=("foo",))
    with pytest.raises(PrepError, match=r"set FOO in db.sh .* obtain Foo from https://foo.example \(licence: CC0\)"):
        require_db(info, "")
    with pytest.raises(PrepError, match="found none of foo there"):
        require_db(info, str(tmp_path))
