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
