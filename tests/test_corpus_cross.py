"""Cross-corpus eGeMAPS matrix: canonical labels, feature reuse, one command, results with protocol ids."""
import json

from fixtures_corpora import copy_recipe, cremad_split_actors, make_cremad, make_ravdess, make_tess, run_prepare
from sertk.bin import cross_corpus
from sertk.data.datadir import DataDir
from sertk.features.egemaps import extract_datadir


def _prepared(work, name, make):
    recipe = copy_recipe(name, work, keep_folds=None)
    make(work / f"{name}_db")
    r = run_prepare(name, work / f"{name}_db", recipe / "data")
    assert r.returncode == 0, r.stderr
    return recipe


def test_train_on_a_test_on_b_matrix(tmp_path):
    recipes = [_prepared(tmp_path, "ravdess", make_ravdess),
               _prepared(tmp_path, "cremad", lambda d: make_cremad(d, cremad_split_actors(1))),
               _prepared(tmp_path, "tess", make_tess)]
    # ravdess's stage 2 already has features for every utterance: they are reused, not recomputed
    extract_datadir(recipes[0] / "data" / "all", recipes[0] / "dump" / "egemaps" / "all")
    out = tmp_path / "cross"
    assert cross_corpus.main(["--recipes", *map(str, recipes), "--out", str(out), "--loco"]) == 0
    matrix = json.loads((out / "matrix.json").read_text())
    assert matrix["labels"] == ["angry", "happy", "neutral", "sad"]
    rows = matrix["results"]
    assert set(rows) == {"ravdess", "cremad", "tess", "all but ravdess", "all but cremad", "all but tess"}
    for a in ("ravdess", "cremad", "tess"):
        assert set(rows[a]) == {"ravdess", "cremad", "tess"} - {a}
        assert set(rows[f"all but {a}"]) == {a}
        for cell in rows[a].values():
            assert 0.0 <= cell["uar"] <= 1.0 and 0.0 <= cell["wa"] <= 1.0
    res = json.loads(open(rows["ravdess"]["cremad"]["results"]).read())
    assert res["protocol"]["corpus"] == "cross_corpus"
    assert (res["protocol"]["train"], res["protocol"]["test"]) == ("ravdess", "cremad")
    assert res["labels"] == ["angry", "happy", "neutral", "sad"]
    # labels are on the canonical vocabulary; TESS keeps only the requested classes it has
    assert set(DataDir.read(out / "data" / "cremad").utt2emo.values()) == {"angry", "happy", "neutral", "sad"}
    assert set(DataDir.read(out / "data" / "tess").utt2emo.values()) == {"angry", "neutral", "sad"}
    assert not (out / "features" / "ravdess" / "extra").exists()
    assert (out / "features" / "cremad" / "extra" / "feats.scp").is_file()
    assert "| ravdess |" in (out / "matrix.md").read_text()
    # train on a set of corpora, test on another
    out2 = tmp_path / "set"
    assert cross_corpus.main(["--train", str(recipes[0]), str(recipes[1]), "--test", str(recipes[2]),
                              "--out", str(out2)]) == 0
    rows = json.loads((out2 / "matrix.json").read_text())["results"]
    assert list(rows) == ["ravdess+cremad"] and list(rows["ravdess+cremad"]) == ["tess"]
    train = DataDir.read(out2 / "data" / "ravdess+cremad")
    assert {s.split("-")[0] for s in train.utt2spk.values()} == {"ravdess", "cremad"}


def test_unprepared_recipe_is_named(tmp_path, capsys):
    a = copy_recipe("emodb", tmp_path, keep_folds=None)
    b = copy_recipe("tess", tmp_path, keep_folds=None)
    assert cross_corpus.main(["--recipes", str(a), str(b), "--out", str(tmp_path / "x")]) == 1
    assert "run stage 1 first" in capsys.readouterr().err
    assert cross_corpus.main(["--recipes", str(a), str(b), "--out", str(tmp_path / "x"), "--labels", "joy"]) == 1
    assert "not canonical" in capsys.readouterr().err
    assert cross_corpus.main(["--train", str(a), "--test", str(a), "--out", str(tmp_path / "x")]) == 1
    assert "in both --train and --test" in capsys.readouterr().err
