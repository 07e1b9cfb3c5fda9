"""new_corpus.sh: the first run of a generated recipe names its db.sh variable."""
from fixtures_corpora import configure_csv_import, new_corpus, run_recipe


def test_first_run_without_the_corpus_names_the_db_variable(tmp_path):
    assert new_corpus(tmp_path, "mycorpus").returncode == 0
    recipe = tmp_path / "egs" / "mycorpus"
    configure_csv_import(recipe)
    r = run_recipe(recipe, {"MYCORPUS": ""}, "--stage", "1", "--stop-stage", "1")
    assert r.returncode != 0
    assert "set MYCORPUS in db.sh (or export MYCORPUS=/path)" in r.stderr, r.stderr
    assert "set  in db.sh" not in r.stderr
