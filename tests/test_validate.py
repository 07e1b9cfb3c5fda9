"""Data-dir validator and fixer: every bad input is named by file and line or utterance."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from sertk.bin import validate_data_dir as cli
from sertk.data.audio import write_audio
from sertk.data.datadir import DataDir
from sertk.data.labels import CANONICAL_EMOTIONS, LabelError, LabelMap
from sertk.data.validate import check_speaker_disjoint, validate_datadir

ROOT = Path(__file__).resolve().parents[1]
LABELS = ["ang", "hap", "neu", "sad"]
LM = LabelMap(LABELS, {"exc": "hap"}, name="four")


def make_dir(root: Path, name: str = "train", speakers=("s1", "s2", "s3"), per_spk: int = 4,
             dur: float = 0.5, sr: int = 16000) -> Path:
    """A clean data dir with real audio, labels and A/V/D."""
    rng = np.random.default_rng(0)
    (root / "wav").mkdir(parents=True, exist_ok=True)
    t = {"wav.scp": {}, "utt2spk": {}, "utt2emo": {}, "utt2avd": {}}
    for s in speakers:
        for k in range(per_spk):
            u = f"{s}-{k:02d}"
            p = root / "wav" / f"{u}.wav"
            if not p.exists():
                write_audio(p, 0.1 * rng.standard_normal(int(dur * sr)).astype(np.float32), sr)
            t["wav.scp"][u] = str(p)
            t["utt2spk"][u] = s
            t["utt2emo"][u] = LABELS[k % 4]
            t["utt2avd"][u] = f"{k * 0.1:.1f} 0.5 0.5"
    DataDir(t).write(root / name)
    return root / name


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


def line_of(path: Path, key: str) -> int:
    return next(i for i, ln in enumerate(lines(path), 1) if ln.split()[0] == key)


def errors(rep) -> str:
    return "\n".join(str(e) for e in rep.errors)


def test_clean_dir_passes_with_class_counts_and_durations(tmp_path):
    d = make_dir(tmp_path)
    rep = validate_datadir(d, LM)
    assert rep.ok, errors(rep)
    assert rep.num_utts == 12 and rep.num_speakers == 3
    assert rep.class_counts == {"ang": 3, "hap": 3, "neu": 3, "sad": 3}
    assert rep.durations["total"] == pytest.approx(6.0)
    assert rep.sample_rates == {16000: 12}


def test_missing_wav_names_line_and_utterance(tmp_path):
    d = make_dir(tmp_path)
    (tmp_path / "wav" / "s2-01.wav").unlink()
    rep = validate_datadir(d)
    assert not rep.ok
    msg = errors(rep)
    assert f"wav.scp:{line_of(d / 'wav.scp', 's2-01')}" in msg and "'s2-01'" in msg and "does not exist" in msg


def test_unreadable_audio(tmp_path):
    d = make_dir(tmp_path)
    (tmp_path / "wav" / "s1-02.wav").write_bytes(b"this is not audio at all" * 10)
    rep = validate_datadir(d)
    msg = errors(rep)
    assert "cannot read audio" in msg and "'s1-02'" in msg and f"wav.scp:{line_of(d / 'wav.scp', 's1-02')}" in msg


def test_empty_audio(tmp_path):
    d = make_dir(tmp_path)
    sf.write(str(tmp_path / "wav" / "s3-00.wav"), np.zeros(0, dtype=np.float32), 16000)
    rep = validate_datadir(d)
    assert "'s3-00'" in errors(rep) and "empty" in errors(rep)


def test_too_short_audio(tmp_path):
    d = make_dir(tmp_path)
    write_audio(tmp_path / "wav" / "s3-01.wav", np.zeros(800, dtype=np.float32), 16000)
    assert validate_datadir(d, min_duration=0.0).ok
    rep = validate_datadir(d, min_duration=0.2)
    assert "'s3-01' is 0.050 s long, shorter than the minimum 0.2 s" in errors(rep)
    assert len(rep.errors) == 1


def test_sort_order_is_byte_order_not_locale(tmp_path):
    # Byte order puts 'B' (0x42) before '_' (0x5f) before 'b' (0x62); a locale sort
    # (case-insensitive, punctuation ignored) would put 's1_a' before 's1B'.
    d = make_dir(tmp_path, speakers=("s1",), per_spk=2)
    wavs = [v for v in DataDir.read(d).tables["wav.scp"].values()]
    c_order = {"wav.scp": {"s1B": wavs[0], "s1_a": wavs[1]}, "utt2spk": {"s1B": "s1", "s1_a": "s1"}}
    DataDir(c_order).write(tmp_path / "c")
    assert lines(tmp_path / "c" / "utt2spk") == ["s1B s1", "s1_a s1"]
    assert validate_datadir(tmp_path / "c").ok
    (tmp_path / "c" / "utt2spk").write_text("s1_a s1\ns1B s1\n")  # what a locale-aware sort gives
    rep = validate_datadir(tmp_path / "c")
    assert "utt2spk:2: not sorted: id 's1B' comes after 's1_a' (line 1)" in errors(rep)
    assert "LC_ALL=C sort" in errors(rep)


def test_duplicate_ids(tmp_path):
    d = make_dir(tmp_path)
    emo = lines(d / "utt2emo")
    emo.insert(3, emo[2])
    (d / "utt2emo").write_text("\n".join(emo) + "\n")
    rep = validate_datadir(d)
    assert f"utt2emo:4: duplicate id '{emo[2].split()[0]}' (first at line 3)" in errors(rep)


def test_label_outside_map_names_label_line_and_valid_labels(tmp_path):
    d = make_dir(tmp_path)
    (d / "utt2emo").write_text((d / "utt2emo").read_text().replace("s2-03 sad", "s2-03 fru")
                               .replace("s1-01 hap", "s1-01 exc"))
    rep = validate_datadir(d, LM)
    msg = errors(rep)
    assert len(rep.errors) == 1
    assert f"utt2emo:{line_of(d / 'utt2emo', 's2-03')}: label 'fru' (utterance 's2-03'" in msg
    assert "['ang', 'hap', 'neu', 'sad']" in msg
    assert rep.class_counts["hap"] == 3  # the alias 'exc' counts as 'hap'
    assert validate_datadir(d).ok  # without a label map any label is accepted


def test_nan_and_malformed_avd(tmp_path):
    d = make_dir(tmp_path)
    avd = lines(d / "utt2avd")
    avd[1] = avd[1].split()[0] + " nan 0.5 0.5"
    avd[4] = avd[4].split()[0] + " 0.1 inf 0.5"
    avd[6] = avd[6].split()[0] + " 0.1 0.2"
    avd[7] = avd[7].split()[0] + " 0.1 high 0.2"
    (d / "utt2avd").write_text("\n".join(avd) + "\n")
    rep = validate_datadir(d)
    msg = errors(rep)
    for ln in (2, 5, 8):
        assert f"utt2avd:{ln}: utterance '{avd[ln - 1].split()[0]}'" in msg
        assert "not 3 finite numbers" in msg
    assert "utt2avd:7: expected" in msg


def test_mismatched_utterance_sets_name_an_example(tmp_path):
    d = make_dir(tmp_path)
    emo = [ln for ln in lines(d / "utt2emo") if not ln.startswith("s2-02 ")]
    (d / "utt2emo").write_text("\n".join(emo) + "\nzz-extra neu\n")
    rep = validate_datadir(d)
    msg = errors(rep)
    assert "utt2emo: 1 utterance(s) of utt2spk have no line here, e.g. 's2-02'" in msg
    assert "utt2emo: 1 id(s) are not in utt2spk, e.g. 'zz-extra'" in msg


def test_spk2utt_must_agree_with_utt2spk(tmp_path):
    d = make_dir(tmp_path)
    (d / "spk2utt").write_text((d / "spk2utt").read_text().replace("s1-03", "s2-00"))
    rep = validate_datadir(d, check_audio=False)
    assert "spk2utt:1: speaker 's1' lists utterance 's2-00' but utt2spk gives speaker 's2'" in errors(rep)
    assert "'s1-03'" in errors(rep)


def test_segments_checks(tmp_path):
    d = make_dir(tmp_path, speakers=("s1",), per_spk=1, dur=2.0)
    rec = str(tmp_path / "wav" / "s1-00.wav")
    t = {"wav.scp": {"rec1": rec},
         "segments": {"s1-a": "rec1 0.0 1.0", "s1-b": "rec1 1.0 0.5", "s1-c": "rec9 0 1", "s1-d": "rec1 2.5 3.0"},
         "utt2spk": {u: "s1" for u in ("s1-a", "s1-b", "s1-c", "s1-d")}}
    DataDir(t).write(tmp_path / "seg")
    rep = validate_datadir(tmp_path / "seg")
    msg = errors(rep)
    assert "segments:2: utterance 's1-b': segment 1.0-0.5 s is not a span" in msg
    assert "segments:3: utterance 's1-c' refers to recording 'rec9', which wav.scp lacks" in msg
    assert "segments:4: utterance 's1-d' starts at 2.5 s, after the end of recording 'rec1'" in msg
    assert "'s1-a'" not in msg
    fixed = validate_datadir(tmp_path / "seg", fix=True)
    assert fixed.ok and fixed.num_dropped == 3 and fixed.num_utts == 1


def test_speaker_in_train_and_test(tmp_path):
    train = make_dir(tmp_path, "train", speakers=("s1", "s2"))
    test = make_dir(tmp_path, "test", speakers=("s2", "s3"))
    dev = make_dir(tmp_path, "dev", speakers=("s4",))
    issues = check_speaker_disjoint({"train": train, "test": test, "dev": dev})
    assert len(issues) == 1
    assert "1 speaker(s) are in both train and test: 's2'" in str(issues[0])
    assert str(train / "utt2spk") in issues[0].where
    assert check_speaker_disjoint({"train": train, "dev": dev}) == []


def test_fix_drops_counts_and_writes_a_valid_dir(tmp_path):
    d = make_dir(tmp_path)
    (tmp_path / "wav" / "s1-00.wav").unlink()  # missing audio
    (d / "utt2emo").write_text((d / "utt2emo").read_text().replace("s2-03 sad", "s2-03 fru"))  # outside map
    avd = lines(d / "utt2avd")
    avd[5] = avd[5].split()[0] + " nan 0 0"  # s2-01
    (d / "utt2avd").write_text("\n".join(reversed(avd)) + "\n")  # also unsorted
    emo = lines(d / "utt2emo")
    (d / "utt2emo").write_text("\n".join(emo + [emo[-1]]) + "\n")  # duplicate line
    (d / "utt2dur").write_text("".join(f"{ln.split()[0]} 0.5\n" for ln in lines(d / "utt2spk")))
    (d / "notes.txt").write_text("kept as is\n")
    before = validate_datadir(d, LM)
    assert not before.ok
    rep = validate_datadir(d, LM, fix=True)
    assert rep.ok, errors(rep)
    assert rep.fixed and rep.num_dropped == 3
    assert rep.dropped == {"missing audio": 1, "label outside map": 1, "bad A/V/D": 1}
    assert "dropped 3 utterance(s)" in rep.summary()
    fixed = DataDir.read(d)  # strict reader: sorted, unique, complete
    assert len(fixed) == 9 and not {"s1-00", "s2-01", "s2-03"} & set(fixed.utts)
    assert set(lines(d / "utt2dur")) == {f"{u} 0.5" for u in fixed.utts}
    assert (d / "notes.txt").read_text() == "kept as is\n"
    assert (d / ".backup" / "utt2emo").read_text().count("\n") == 13
    assert validate_datadir(d, LM).ok


def test_fix_to_other_dir_leaves_source(tmp_path):
    d = make_dir(tmp_path)
    (tmp_path / "wav" / "s3-03.wav").unlink()
    rep = validate_datadir(d, fix=True, out=tmp_path / "clean")
    assert rep.ok and rep.num_dropped == 1 and rep.num_utts == 11
    assert len(lines(d / "utt2spk")) == 12


def test_missing_required_file_cannot_be_fixed(tmp_path):
    d = make_dir(tmp_path)
    (d / "utt2spk").unlink()
    rep = validate_datadir(d, fix=True, require=("utt2emo",))
    assert "utt2spk: required file is missing" in errors(rep)
    assert "cannot fix" in errors(rep)


def test_cli_exit_codes_and_class_table(tmp_path, capsys):
    train = make_dir(tmp_path, "train", speakers=("s1", "s2"))
    test = make_dir(tmp_path, "test", speakers=("s3",))
    lm_file = tmp_path / "labels.yaml"
    LM.save(lm_file)
    assert cli.main([str(train), "--label-map", str(lm_file), "--disjoint-from", str(test)]) == 0
    out = capsys.readouterr().out
    assert "class counts per split" in out and "share none" in out
    table = {ln.split()[0]: ln.split()[1:] for ln in out.splitlines()[-6:]}
    assert table["ang"] == ["2", "1"] and table["total"] == ["8", "4"]
    overlap = make_dir(tmp_path, "test2", speakers=("s2",))
    assert cli.main([str(train), "--disjoint-from", str(overlap), "--no-audio"]) == 1
    assert "speaker(s) are in both" in capsys.readouterr().out
    (tmp_path / "wav" / "s1-00.wav").unlink()
    assert cli.main([str(train)]) == 1
    assert cli.main([str(train), "--fix"]) == 0
    assert "dropped 1 utterance(s) (1 missing audio)" in capsys.readouterr().out


def test_fix_data_dir_shell_wrapper(tmp_path):
    d = make_dir(tmp_path)
    (tmp_path / "wav" / "s1-01.wav").unlink()
    env = dict(os.environ, PYTHON=sys.executable)
    r = subprocess.run([str(ROOT / "utils" / "fix_data_dir.sh"), str(d), "--no-audio"], env=env,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr  # nothing to drop without the audio check
    r = subprocess.run([str(ROOT / "utils" / "fix_data_dir.sh"), str(d)], env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "dropped 1 utterance(s)" in r.stdout
    r = subprocess.run([str(ROOT / "utils" / "validate_data_dir.sh"), str(d)], env=env, capture_output=True, text=True)
    assert r.returncode == 0 and "11 utterances" in r.stdout


# ------------------------------------------------------------- label maps
def test_label_map_yaml_and_text(tmp_path):
    y = tmp_path / "labels.yaml"
    y.write_text("name: iemocap4\nlabels: [ang, hap, neu, sad]\naliases: {exc: hap}\n")
    lm = LabelMap.load(y)
    assert lm.name == "iemocap4" and lm.num_classes == 4
    assert lm.canonical("exc") == "hap" and lm.index("exc") == 1 and lm.index("sad") == 3
    assert LabelMap.from_dict(lm.to_dict()) == lm
    t = tmp_path / "labels.txt"
    t.write_text("# classes\nneutral\nhappy\n\nsad\n")
    assert LabelMap.load(t).labels == ["neutral", "happy", "sad"]
    with pytest.raises(LabelError, match=r"label 'fru' is not one of the labels of label map 'iemocap4'.*'neu'"):
        lm.canonical("fru")


def test_label_map_rejects_bad_files(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("labels: [a, b]\naliases: {c: z}\n")
    with pytest.raises(LabelError, match="bad.yaml.*alias 'c' -> 'z'"):
        LabelMap.load(bad)
    bad.write_text("labels: [a, b, a]\n")
    with pytest.raises(LabelError, match="duplicate labels"):
        LabelMap.load(bad)
    assert len(set(CANONICAL_EMOTIONS)) == 10 and "neutral" in CANONICAL_EMOTIONS


# ------------------------------------------------ empty dirs and short clips (issue 14, item 5)
def test_an_empty_dir_is_an_error(tmp_path):
    d = tmp_path / "empty"
    d.mkdir()
    for f in ("wav.scp", "utt2spk", "utt2emo"):
        (d / f).write_text("")
    rep = validate_datadir(d, LM)
    assert not rep.ok and rep.num_utts == 0
    assert f"{d}/utt2spk: no utterances: the data dir is empty" in errors(rep)
    assert "OK" not in rep.summary().splitlines()[-1]
    assert cli.main([str(d)]) == 1


def test_clips_shorter_than_the_default_minimum_are_named_and_fix_drops_them(tmp_path, capsys):
    d = make_dir(tmp_path)
    write_audio(tmp_path / "wav" / "s2-02.wav", np.zeros(int(0.2 * 16000), dtype=np.float32), 16000)
    rep = validate_datadir(d)  # default minimum 0.25 s: openSMILE's windows need it
    assert f"wav.scp:{line_of(d / 'wav.scp', 's2-02')}" in errors(rep)
    assert "'s2-02' is 0.200 s long, shorter than the minimum 0.25 s" in errors(rep)
    assert validate_datadir(d, min_duration=0.1).ok
    assert cli.main([str(d), "--min-duration", "0.1"]) == 0
    assert cli.main([str(d), "--fix"]) == 0
    assert "dropped 1 utterance(s) (1 too short)" in capsys.readouterr().out
    assert "s2-02" not in DataDir.read(d).utts


def _protocols(tmp_path, body: str) -> Path:
    p = tmp_path / "protocols.yaml"
    p.write_text(body)
    return p


def test_stage1_validation_names_short_clips_with_a_configurable_minimum(tmp_path, capsys):
    from sertk.bin import protocols as protocols_cli

    data = tmp_path / "data"
    make_dir(data, "train", speakers=("s1", "s2"))
    make_dir(data, "test", speakers=("s3",))
    write_audio(data / "wav" / "s3-01.wav", np.zeros(int(0.1 * 16000), dtype=np.float32), 16000)
    body = ("corpus: toy\nprotocols:\n  p:\n    train: train\n    test: [test]\n")
    p = _protocols(tmp_path, body)
    assert protocols_cli.main(["--protocols", str(p), "--data", str(data), "--validate"]) == 1
    assert "'s3-01' is 0.100 s long, shorter than the minimum 0.25 s" in capsys.readouterr().err
    assert protocols_cli.main(["--protocols", str(p), "--data", str(data), "--validate",
                               "--min-duration", "0.05"]) == 0
    p = _protocols(tmp_path, "min_duration: 0.05\n" + body)  # a recipe lowers it in its protocols file
    assert protocols_cli.main(["--protocols", str(p), "--data", str(data), "--validate"]) == 0


# ----------------------------------------- one label map per protocol (issue 14, item 9)
def test_each_set_is_checked_against_its_own_protocols_label_map(tmp_path, capsys):
    from sertk.bin import protocols as protocols_cli

    data = tmp_path / "data"
    for name, spk in (("train_4", "s1"), ("test_4", "s2"), ("train_2", "s3"), ("test_2", "s4")):
        make_dir(data, name, speakers=(spk,))
    LM.save(tmp_path / "labels_4.yaml")
    LabelMap(["ang", "neu"], name="two").save(tmp_path / "labels_2.yaml")
    for name, old, new in (("test_4", "s2-01 hap", "s2-01 joy"), ("train_2", "s3-01 hap", "s3-01 ang"),
                           ("train_2", "s3-03 sad", "s3-03 neu"), ("test_2", "s4-01 hap", "s4-01 ang"),
                           ("test_2", "s4-03 sad", "s4-03 neu")):
        (data / name / "utt2emo").write_text((data / name / "utt2emo").read_text().replace(old, new))
    p = _protocols(tmp_path, "corpus: toy\nlabel_map: labels_4.yaml\nprotocols:\n"
                             "  four:\n    train: train_4\n    test: [test_4]\n"
                             "  two:\n    label_map: labels_2.yaml\n    train: train_2\n    test: [test_2]\n")
    assert protocols_cli.main(["--protocols", str(p), "--data", str(data), "--validate"]) == 1
    err = capsys.readouterr().err
    assert f"{data}/test_4/utt2emo:{line_of(data / 'test_4' / 'utt2emo', 's2-01')}: label 'joy'" in err
    assert "not in label map 'four'" in err
    assert "sertk protocols: 1 error(s)" in err  # the two-class sets fit their own map
    (data / "test_4" / "utt2emo").write_text((data / "test_4" / "utt2emo").read_text().replace("joy", "hap"))
    assert protocols_cli.main(["--protocols", str(p), "--data", str(data), "--validate"]) == 0
    (data / "test_2" / "utt2emo").write_text((data / "test_2" / "utt2emo").read_text().replace("s4-00 ang",
                                                                                               "s4-00 sad"))
    assert protocols_cli.main(["--protocols", str(p), "--data", str(data), "--validate"]) == 1
    assert "label 'sad' (utterance 's4-00'" in capsys.readouterr().err


def test_a_non_finite_egemaps_row_names_its_utterance(tmp_path):
    """A store that holds a NaN row (a clip too short for openSMILE) fails naming the utterance, not sklearn's
    anonymous "Input contains NaN"."""
    from sertk.features.store import write_ark_scp
    from sertk.tasks import TaskContext
    from sertk.tasks.egemaps_linear import load_set

    d = make_dir(tmp_path / "data", "train", speakers=("s1",))
    feats = {u: np.ones(88, dtype=np.float32) for u in DataDir.read(d).utts}
    feats["s1-02"][5] = np.nan
    store = tmp_path / "dump" / "egemaps" / "train"
    store.mkdir(parents=True)
    write_ark_scp(feats, store / "feats.ark", store / "feats.scp")
    ctx = TaskContext(data=tmp_path / "data", dump=tmp_path / "dump", expdir=tmp_path / "exp", name="lr", stage=4)
    with pytest.raises(ValueError, match=r"feats.scp: the eGeMAPS features of 1 utterance\(s\) are not finite, "
                                         r"e.g. s1-02"):
        load_set(ctx, "train", speaker_norm=False)
