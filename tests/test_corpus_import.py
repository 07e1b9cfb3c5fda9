"""Adding a corpus: new_corpus.sh makes a recipe; import-corpus turns a CSV or a folder layout into data dirs."""

import pytest

from fixtures_corpora import (configure_csv_import, make_csv_corpus, new_corpus, read_skipped, run_recipe, tone)
from sertk.common.protocol import load_protocols
from sertk.data.corpus_prep import PrepError, PrepReport, read_split_list
from sertk.data.datadir import DataDir
from sertk.data.importer import LabelNormaliser, import_pattern, pattern_regex
from sertk.data.validate import check_speaker_disjoint


def test_new_corpus_recipe_imports_a_csv(tmp_path):
    r = new_corpus(tmp_path, "mycorpus")
    assert r.returncode == 0, r.stderr
    recipe = tmp_path / "egs" / "mycorpus"
    assert "MYCORPUS=${MYCORPUS:-}" in (recipe / "db.sh").read_text()
    configure_csv_import(recipe)
    info = make_csv_corpus(tmp_path / "db")
    r = run_recipe(recipe, {"MYCORPUS": str(tmp_path / "db")}, "--stage", "1", "--stop-stage", "1")
    assert r.returncode == 0, r.stderr
    data = recipe / "data"
    dd = DataDir.read(data / "all")
    assert len(dd) == info["n"]
    u = "mycorpus-anna-audio_anna_take_0"
    assert dd.utt2emo[u] == "angry" and dd.utt2avd[u] == (1.0, 2.0, 3.0) and dd.field("utt2gender")[u] == "f"
    skipped = read_skipped(data)
    for kind, what in info["skipped"].items():
        assert any(what in k and v.startswith(kind) for k, v in skipped.items()), (kind, what, skipped)
    # first run wrote the label map (every label found) and the seeded speaker split
    assert "labels:\n  - angry   # 10\n  - happy   # 10\n  - neutral   # 10\n  - sad   # 10" in \
        (recipe / "conf" / "labels.yaml").read_text()
    split = read_split_list(recipe / "conf" / "splits" / "mycorpus_speaker_split.txt")
    assert [len(split.sets[p]) for p in ("train", "dev", "test")] == [8, 1, 1]
    for s in load_protocols(recipe / "conf" / "protocols.yaml"):
        assert check_speaker_disjoint({"train": data / s.train, "dev": data / s.dev, "test": data / s.tests[0]}) == []
    # a second run reuses the committed split instead of drawing a new one
    before = split.sha256
    r = run_recipe(recipe, {"MYCORPUS": str(tmp_path / "db")}, "--stage", "1", "--stop-stage", "1", "--redo", "true")
    assert r.returncode == 0, r.stderr
    assert read_split_list(recipe / "conf" / "splits" / "mycorpus_speaker_split.txt").sha256 == before


def test_new_corpus_refuses_bad_names_and_existing_recipes(tmp_path):
    assert new_corpus(tmp_path, "My Corpus").returncode != 0
    assert new_corpus(tmp_path, "ok_name", "--folds", "5").returncode == 0
    conf = tmp_path / "egs" / "ok_name" / "conf"
    assert "fold5_train" in (conf / "protocols.yaml").read_text() and "folds: 5" in (conf / "import.yaml").read_text()
    r = new_corpus(tmp_path, "ok_name")
    assert r.returncode != 0 and "already exists" in r.stderr


def test_folder_pattern_import(tmp_path):
    root = tmp_path / "db"
    for spk in ("s1", "s2"):
        for emo in ("ANGRY", "calm"):
            tone(root / spk / emo / f"{spk}_{emo}_01.wav", emo)
    tone(root / "notes" / "extra.wav", "x")                  # no label level: does not match
    report = PrepReport()
    dd = import_pattern(root, "{speaker}/{label}/{*}.wav", "pat", report,
                        labels=LabelNormaliser({"calm": "neutral"}, lowercase=True))
    assert sorted(set(dd.utt2emo.values())) == ["angry", "neutral"] and len(dd) == 4
    assert set(dd.utt2spk.values()) == {"pat-s1", "pat-s2"}
    assert report.skipped == [("notes/extra.wav", "path does not match the layout pattern {speaker}/{label}/{*}.wav")]
    regex, fields = pattern_regex("{**}/{speaker}_{word}_{label}.wav")
    assert fields == ["speaker", "word", "label"]
    assert regex.match("a/b/OAF_back_angry.wav").groupdict() == {"speaker": "OAF", "word": "back", "label": "angry"}
    with pytest.raises(PrepError, match="needs a {label} field"):
        pattern_regex("{speaker}/{*}.wav")
