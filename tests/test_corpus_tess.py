"""TESS recipe: folder spellings, pleasant surprise, duplicates, speaker folds."""
from pathlib import Path

from fixtures_corpora import make_tess, read_skipped, run_prepare
from sertk.data.datadir import DataDir


def test_spellings_duplicates_and_speaker_folds(tmp_path):
    info = make_tess(tmp_path / "db")
    r = run_prepare("tess", tmp_path / "db", tmp_path / "data")
    assert r.returncode == 0, r.stderr
    data = tmp_path / "data"
    dd = DataDir.read(data / "all")
    assert len(dd) == info["n"]
    assert dd.utt2emo["tess-OAF-OAF_back_ps"] == "ps"              # folder OAF_Pleasant_surprise
    assert dd.utt2emo["tess-YAF-YAF_bar_ps"] == "ps"               # folder YAF_pleasant_surprised
    assert dd.utt2emo["tess-OAF-OAF_base_fear"] == "fear"          # folder OAF_Fear
    assert set(dd.field("utt2gender").values()) == {"f"}
    assert dd.field("text")["tess-YAF-YAF_base_sad"] == "Say the word base"
    for k, (train_spk, test_spk) in enumerate((("YAF", "OAF"), ("OAF", "YAF")), 1):
        assert set(DataDir.read(data / f"fold{k}_train").utt2spk.values()) == {f"tess-{train_spk}"}
        assert set(DataDir.read(data / f"fold{k}_test").utt2spk.values()) == {f"tess-{test_spk}"}
    skipped = read_skipped(data)
    for kind, path in info["skipped"].items():
        rel = Path(path).relative_to(tmp_path / "db").as_posix()
        assert skipped.get(rel, "").startswith(kind), (rel, skipped)


def test_truncated_speaker_name_takes_the_folder_speaker_with_a_warning(tmp_path):
    """The release's OAF_neutral/OA_bite_neutral.wav is kept as speaker OAF, and the log names it."""
    info = make_tess(tmp_path / "db")
    r = run_prepare("tess", tmp_path / "db", tmp_path / "data")
    assert r.returncode == 0, r.stderr
    dd = DataDir.read(tmp_path / "data" / "all")
    assert dd.utt2spk["tess-OAF-OAF_bite_neutral"] == "tess-OAF"
    assert dd.utt2emo["tess-OAF-OAF_bite_neutral"] == "neutral"
    assert "tess-OAF-OAF_bite_neutral" in DataDir.read(tmp_path / "data" / "fold1_test").utt2spk
    rel = Path(info["renamed"]["OAF_bite_neutral"]).relative_to(tmp_path / "db").as_posix()
    assert rel not in read_skipped(tmp_path / "data")
    warned = [line for line in r.stderr.splitlines() if rel in line]
    assert warned and all("WARNING" in line for line in warned), r.stderr
    assert "speaker OAF taken from the folder" in (tmp_path / "data" / "local" / "warnings.txt").read_text()


def test_log_levels_mean_what_they_say(tmp_path):
    """Nothing skipped is no error; a failed preparation is one."""
    r = run_prepare("tess", tmp_path / "no_such_db", tmp_path / "data")
    assert r.returncode == 1
    assert "skipped nothing" in r.stderr
    levels = {line.split(": ", 1)[0].rsplit(" ", 1)[-1] for line in r.stderr.splitlines() if "skipped nothing" in line}
    assert levels == {"INFO"}, r.stderr
    assert any("ERROR" in line and "TESS preparation failed" in line for line in r.stderr.splitlines()), r.stderr
    make_tess(tmp_path / "db")
    ok = run_prepare("tess", tmp_path / "db", tmp_path / "data")
    assert ok.returncode == 0 and "ERROR" not in ok.stderr, ok.stderr
