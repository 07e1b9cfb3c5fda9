"""RAVDESS recipe: file-name parsing, song exclusion, 6 speaker-independent folds, counts."""
import importlib.util
from collections import Counter
from pathlib import Path

import numpy as np
import soundfile as sf
import yaml

from fixtures_corpora import REPO, make_ravdess, read_skipped, read_table, run_prepare
from sertk.common.protocol import load_protocols
from sertk.data.corpus_prep import read_split_list
from sertk.data.datadir import DataDir
from sertk.data.validate import check_speaker_disjoint

RECIPE = REPO / "egs" / "ravdess"


def _module():
    spec = importlib.util.spec_from_file_location("ravdess_prepare", RECIPE / "local" / "prepare.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_prepare_parses_names_and_names_every_skipped_file(tmp_path):
    info = make_ravdess(tmp_path / "db")
    r = run_prepare("ravdess", tmp_path / "db", tmp_path / "data")
    assert r.returncode == 0, r.stderr
    dd = DataDir.read(tmp_path / "data" / "all")
    assert len(dd) == info["n"]
    u = "ravdess-05-03-01-05-02-01-01-05"             # angry, strong, "kids", rep 1, actor 5 (male)
    assert dd.utt2emo[u] == "angry" and dd.utt2spk[u] == "ravdess-05"
    assert dd.field("utt2gender")[u] == "m" and dd.field("utt2gender")["ravdess-04-03-01-01-01-01-01-04"] == "f"
    assert read_table(tmp_path / "data" / "all" / "utt2intensity")[u] == "strong"   # extra files ride along
    assert dd.field("text")[u] == "Kids are talking by the door"
    assert dd.field("utt2domain")[u] == "ravdess"
    skipped = read_skipped(tmp_path / "data")
    for kind, path in info["skipped"].items():
        rel = Path(path).relative_to(tmp_path / "db").as_posix()
        assert rel in skipped and skipped[rel].startswith(kind.strip()), (rel, skipped.get(rel))
    # every skipped file is also named in the log
    log = (tmp_path / "data" / "local" / "prepare.log").read_text()
    assert all(rel in log for rel in skipped)
    # audio exactly as distributed: AIFF behind .wav, 24-bit, float, stereo all kept
    formats = Counter(sf.info(p).format for p in read_table(tmp_path / "data" / "all" / "wav.scp").values())
    assert formats["AIFF"] > 0 and formats["WAV"] > 0


def test_folds_are_speaker_independent_and_cover_the_corpus(tmp_path):
    make_ravdess(tmp_path / "db")
    assert run_prepare("ravdess", tmp_path / "db", tmp_path / "data").returncode == 0
    data = tmp_path / "data"
    tested = []
    for split in load_protocols(RECIPE / "conf" / "protocols.yaml"):
        roles = {"train": data / split.train, "dev": data / split.dev, "test": data / split.tests[0]}
        assert check_speaker_disjoint(roles) == []
        tested += DataDir.read(data / split.tests[0]).utts
    assert sorted(tested) == DataDir.read(data / "all").utts     # each utterance is tested exactly once


def test_committed_split_is_the_seeded_one(tmp_path):
    mod = _module()
    mod.SPLIT_FILE = tmp_path / "split.txt"
    mod.write_splits(None)
    committed = RECIPE / "conf" / "splits" / "ravdess_speaker_6fold.txt"
    assert (tmp_path / "split.txt").read_bytes() == committed.read_bytes()
    sl = read_split_list(committed)
    tests = [sl.sets[f"fold{k}_test"] for k in range(1, 7)]
    assert all(len(t) == 4 for t in tests)
    assert sorted(s for t in tests for s in t) == [f"ravdess-{a:02d}" for a in range(1, 25)]
    for k, t in enumerate(tests):                      # 2 male (odd) + 2 female (even) actors per fold
        assert sum(int(s[-2:]) % 2 for s in t) == 2
        assert sl.sets[f"fold{k + 1}_dev"] == tests[(k + 1) % 6]
    pinned = yaml.safe_load((RECIPE / "conf" / "protocols.yaml").read_text())["protocols"]["speaker_6fold"]
    assert pinned["lists_sha256"] == sl.sha256


def test_full_corpus_gives_no_count_warning_and_partial_names_missing(tmp_path):
    mod = _module()
    db = tmp_path / "db"
    for rel in sorted(mod.expected_speech_files()):
        (db / rel).parent.mkdir(parents=True, exist_ok=True)
        sf.write(str(db / rel), np.full(160, 0.01, np.float32), 16000)
    r = run_prepare("ravdess", db, tmp_path / "full")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "full" / "local" / "warnings.txt").read_text() == ""
    assert len(DataDir.read(tmp_path / "full" / "all")) == 1440
    gone = db / "Actor_07" / "03-01-08-02-02-01-07.wav"
    gone.unlink()
    assert run_prepare("ravdess", db, tmp_path / "partial").returncode == 0
    warnings = (tmp_path / "partial" / "local" / "warnings.txt").read_text()
    assert "1 missing from this copy" in warnings and "Actor_07/03-01-08-02-02-01-07.wav" in warnings
    assert "surprised: 191 (expected 192)" in warnings


def test_unset_db_says_where_to_get_it(tmp_path):
    r = run_prepare("ravdess", "", tmp_path / "data")
    assert r.returncode == 1
    assert "set RAVDESS in db.sh" in r.stderr and "zenodo.org/record/1188976" in r.stderr
    assert "CC BY-NC-SA 4.0" in r.stderr
    r = run_prepare("ravdess", tmp_path, tmp_path / "data")   # a folder without Actor_*
    assert r.returncode == 1 and "Actor_" in r.stderr
