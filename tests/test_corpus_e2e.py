"""Every corpus recipe end to end on its fixture: ./run.sh --stage 1 --stop-stage 4 (data, eGeMAPS, baseline).

The runs are small (first fold, first protocol and first test set of each
recipe, no dev set: the baseline does not use one; stage-1 preparation of
every set is covered by the per-corpus tests) and two run at a time; each
recipe is checked separately below.
"""
from concurrent.futures import ThreadPoolExecutor

import pytest

from fixtures_corpora import (copy_recipe, cremad_split_actors, make_cremad, make_emodb, make_fau_aibo, make_iemocap,
                              make_msp_podcast, make_ravdess, make_tess, missing_stage_modules, results_of, run_recipe)
from sertk.common.fileio import sha256_file

RECIPES = {  # recipe: (db.sh variable, fixture builder)
    "ravdess": ("RAVDESS", make_ravdess),
    "cremad": ("CREMAD", lambda d: make_cremad(d, cremad_split_actors(1))),
    "iemocap": ("IEMOCAP", lambda d: make_iemocap(d, sessions=(1, 2, 3))),
    "msp_podcast": ("MSP_PODCAST", make_msp_podcast),
    "fau_aibo": ("FAU_AIBO", make_fau_aibo),
    "emodb": ("EMODB", make_emodb),
    "tess": ("TESS", make_tess),
}


def test_stage_entry_points_exist():
    """A stage module ser.sh calls must exist: a missing one is a failure, never a skip."""
    assert missing_stage_modules(4) == []


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    work = tmp_path_factory.mktemp("e2e")
    jobs = {}
    for name, (var, make) in RECIPES.items():
        make(work / f"{name}_db")
        recipe = copy_recipe(name, work, keep_folds=1, keep_protocols=1, small=True)
        jobs[name] = (recipe, {var: str(work / f"{name}_db")})
    with ThreadPoolExecutor(max_workers=2) as pool:
        # the eGeMAPS baseline only: the SELM configs need sibling corpora and hub models (tests/test_multicorpus.py)
        futures = {n: pool.submit(run_recipe, r, env, "--stage", "1", "--stop-stage", "4",
                                  "--ser-configs", "conf/egemaps_lr.yaml")
                   for n, (r, env) in jobs.items()}
        return {n: (f.result(), jobs[n][0]) for n, f in futures.items()}


@pytest.mark.parametrize("name", list(RECIPES))
def test_recipe_runs_stages_1_to_4(runs, name):
    proc, recipe = runs[name]
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert (recipe / "data" / "all" / "wav.scp").is_file()
    results = [r for r in results_of(recipe) if r["task"] == "classification"]
    assert results, f"no results.json under {recipe / 'exp'}"
    for res in results:
        proto = res["protocol"]
        lists = [recipe / "conf" / "splits" / f for f in proto["lists"]]
        assert proto["lists_hash"] == sha256_file(lists[0])        # the committed list the split came from
        assert proto["corpus"] == name
        assert 0.0 <= res["metrics"]["uar"] <= 1.0
        assert sum(map(sum, res["confusion"])) > 0
