"""Multi-corpus sets built by the stages (SELM's protocol), CONFIG@PROTOCOLS in ser.sh, a config's protocols: key."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import yaml

from sertk.bin import build_multicorpus, train
from sertk.data.datadir import DataDir
from sertk.data.multicorpus import CorpusSetError, read_build
from sertk.data.validate import validate_datadir
from sertk.tasks import TASKS

ROOT = Path(__file__).resolve().parent.parent
SER = ROOT / "egs" / "TEMPLATE" / "ser.sh"
LABELS = ["neutral", "happy", "sad", "angry"]


def _corpus(egs: Path, name: str, rows: list[tuple[str, str, str]], canonical: dict, avd: dict | None = None,
            audio: bool = False) -> Path:
    """egs/<name>/ with conf/labels_canonical.yaml and data/all: rows of (utt, speaker, raw label)."""
    recipe = egs / name
    (recipe / "conf").mkdir(parents=True, exist_ok=True)
    (recipe / "conf" / "labels_canonical.yaml").write_text(yaml.safe_dump(canonical))
    wav = {}
    for u, _, _ in rows:
        wav[u] = str(recipe / "wav" / f"{u}.wav")
        if audio:
            Path(wav[u]).parent.mkdir(parents=True, exist_ok=True)
            sf.write(wav[u], 0.1 * np.sin(np.arange(4800) / 5.0).astype(np.float32), 16000)
    t = {"wav.scp": wav, "utt2spk": {u: s for u, s, _ in rows}, "utt2emo": {u: e for u, _, e in rows}}
    if avd:
        t["utt2avd"] = avd
    DataDir(t).write(recipe / "data" / "all")
    return recipe


def _siblings(egs: Path, audio: bool = False) -> None:
    # cremad-like: own codes, ids NOT corpus-prefixed (the build prefixes them), no A/V/D, one code outside
    _corpus(egs, "cremad", [(f"c{s}_{k}", f"c{s}", code) for s in range(6) for k, code in
                            enumerate(["ANG", "NEU", "HAP", "SAD", "XXX"])],
            {"name": "c", "labels": LABELS, "aliases": {"ANG": "angry", "NEU": "neutral", "HAP": "happy",
                                                        "SAD": "sad"}}, audio=audio)
    # msp-like: prefixed ids, A/V/D on 1-7, X (no agreement) has no class
    rows = [(f"msp_podcast-s{s}-{k}", f"msp_podcast-s{s}", code) for s in range(6)
            for k, code in enumerate(["A", "N", "H", "S", "X"])]
    _corpus(egs, "msp_podcast", rows, {"name": "m", "labels": LABELS + ["other"],
                                       "aliases": {"A": "angry", "N": "neutral", "H": "happy", "S": "sad"}},
            avd={u: "7 1 4" for u, _, _ in rows}, audio=audio)


def _test_recipe(egs: Path, audio: bool = False, recipes=("../cremad", "../msp_podcast")) -> Path:
    """egs/ravdess: the test corpus (calm and neutral), a main protocols file and protocols_selm.yaml."""
    recipe = _corpus(egs, "ravdess", [(f"ravdess-{s}-{e}", f"ravdess-{s}", e) for s in range(3)
                                      for e in ("neutral", "calm", "happy", "sad", "angry", "fearful")],
                     {"name": "r", "labels": LABELS + ["calm", "fearful"]}, audio=audio)
    conf = recipe / "conf"
    (conf / "labels.yaml").write_text(yaml.safe_dump({"name": "r", "labels": LABELS + ["calm", "fearful"]}))
    (conf / "labels_selm.yaml").write_text(yaml.safe_dump({"name": "s", "labels": LABELS}))
    (conf / "protocols.yaml").write_text(yaml.safe_dump({
        "corpus": "ravdess", "label_map": "labels.yaml",
        "protocols": {"whole": {"train": "all", "test": ["all"], "disjoint_speakers": False}}}))
    (conf / "protocols_selm.yaml").write_text(yaml.safe_dump({
        "corpus": "ravdess", "label_map": "labels_selm.yaml",
        "build": {"recipes": list(recipes), "train": "multi_train", "dev": "multi_dev", "dev_fraction": 0.25,
                  "test": "multi_test", "test_mapping": {"calm": "neutral"}, "avd_range": [1, 5],
                  "avd_ranges": {"msp_podcast": [1, 7]}},
        "protocols": {"multi": {"train": "multi_train", "dev": "multi_dev", "test": ["multi_test"]}}}))
    return recipe


def test_build_writes_prefixed_train_dev_from_siblings_never_the_test_corpus(tmp_path, monkeypatch):
    egs = tmp_path / "egs"
    _siblings(egs)
    recipe = _test_recipe(egs)
    monkeypatch.chdir(recipe)
    assert build_multicorpus.main(["--protocols", "conf/protocols_selm.yaml", "--data", "data"]) == 0
    train, dev, test = (DataDir.read(recipe / "data" / s) for s in ("multi_train", "multi_dev", "multi_test"))
    pooled = train.utts + dev.utts
    assert len(pooled) == 48  # 6 speakers x 4 kept classes, per sibling; XXX and X left out
    assert all(u.split("-")[0] in ("cremad", "msp_podcast") for u in pooled)  # corpus-prefixed ids
    assert {s.split("-")[0] for s in {**train.utt2spk, **dev.utt2spk}.values()} == {"cremad", "msp_podcast"}
    assert not set(train.utt2spk.values()) & set(dev.utt2spk.values())  # speaker-disjoint dev
    assert set(train.utt2emo.values()) | set(dev.utt2emo.values()) == set(LABELS)  # canonical labels
    # A/V/D kept where a corpus has it (msp only), rescaled from 1-7 onto 1-5
    both = {**train.field("utt2avd"), **dev.field("utt2avd")}
    assert set(both) == {u for u in pooled if u.startswith("msp_podcast-")}
    assert set(both.values()) == {"5 1 3"}
    rep = validate_datadir(recipe / "data" / "multi_train", check_audio=False)
    assert rep.ok, rep.summary()
    assert any(i.reason == "partial labels" for i in rep.warnings)
    # the test set: this corpus, canonical labels, calm merged into neutral, fearful (no class) left out
    assert all(u.startswith("ravdess-") for u in test.utts) and len(test) == 15
    assert sorted(set(test.utt2emo.values())) == sorted(LABELS)
    # the stage marker's inputs: the siblings' data dirs and maps
    assert build_multicorpus.main(["--protocols", "conf/protocols_selm.yaml", "--list-inputs"]) == 0


def test_listing_the_test_corpus_or_an_unprepared_sibling_stops_with_the_command(tmp_path, monkeypatch, capsys):
    egs = tmp_path / "egs"
    _siblings(egs)
    recipe = _test_recipe(egs, recipes=("../cremad", "../ravdess"))
    with pytest.raises(CorpusSetError, match="the test corpus ravdess itself"):
        read_build(recipe / "conf" / "protocols_selm.yaml")
    recipe = _test_recipe(egs, recipes=("../cremad", "../msp_podcast", "../tess"))
    monkeypatch.chdir(recipe)
    for args in (["--list-inputs"], []):
        assert build_multicorpus.main(["--protocols", "conf/protocols_selm.yaml", *args]) == 1
        err = capsys.readouterr().err
        assert "needs the prepared data of tess" in err and "cremad" not in err.split("tess")[0]
        assert "(cd ../tess && ./run.sh --stage 1 --stop-stage 1)" in err
    assert not (recipe / "data" / "multi_train").exists()


def test_combine_keeps_label_tables_where_present_and_validation_allows_whole_corpora_without(tmp_path):
    a = DataDir({"wav.scp": {"a-1": "x.wav", "a-2": "y.wav"}, "utt2spk": {"a-1": "a-s", "a-2": "a-s"},
                 "utt2emo": {"a-1": "sad", "a-2": "happy"}, "utt2avd": {"a-1": "1 2 3", "a-2": "2 3 4"},
                 "utt2domain": {"a-1": "a", "a-2": "a"}, "utt2partition": {"a-1": "Train", "a-2": "Train"}})
    b = DataDir({"wav.scp": {"b-1": "z.wav"}, "utt2spk": {"b-1": "b-s"}, "utt2emo": {"b-1": "sad"},
                 "utt2domain": {"b-1": "b"}})
    both = DataDir.combine([a, b])
    assert both.utt2avd == {"a-1": (1.0, 2.0, 3.0), "a-2": (2.0, 3.0, 4.0)} and len(both.utt2emo) == 3
    assert not both.has("utt2partition")  # not a label table: dropped as before
    with pytest.raises(Exception, match="has no wav.scp"):
        DataDir.combine([a, DataDir({"utt2spk": {"c-1": "c"}})])
    both.write(tmp_path / "ab")
    rep = validate_datadir(tmp_path / "ab", check_audio=False)
    assert rep.ok and "domain(s) b (1) (utt2domain) have none" in rep.summary()
    # a gap inside a corpus that has the table is still an error, and fixing drops only that utterance
    both.tables["utt2avd"].pop("a-2")
    both.write(tmp_path / "gap")
    rep = validate_datadir(tmp_path / "gap", check_audio=False)
    assert not rep.ok and "utt2avd: 1 utterance(s) of utt2spk have no line here, e.g. 'a-2'" in rep.summary()
    fixed = validate_datadir(tmp_path / "gap", check_audio=False, fix=True)
    assert fixed.ok and fixed.num_dropped == 1 and DataDir.read(tmp_path / "gap").utts == ["a-1", "b-1"]


# ------------------------------------------------------- protocols: restriction --
CALLS: list[tuple[str, dict]] = []


def train_fn(cfg, split, ctx):  # the recording task's train (registered as a task below)
    CALLS.append((split.protocol, dict(cfg)))



def _recording_task(monkeypatch):
    mod = type(sys)("recording_task")
    mod.train = train_fn
    monkeypatch.setitem(sys.modules, "recording_task", mod)
    monkeypatch.setitem(TASKS, "recording", "recording_task")
    CALLS.clear()


def test_config_protocols_key_runs_only_those_and_rejects_unknown_names(tmp_path, monkeypatch):
    _recording_task(monkeypatch)
    for s in ("cat_train", "cat_test", "dim_train", "dim_test"):
        (tmp_path / "data" / s).mkdir(parents=True)
    (tmp_path / "protocols.yaml").write_text(yaml.safe_dump({"corpus": "x", "protocols": {
        "categorical": {"train": "cat_train", "test": ["cat_test"]},
        "dimensional": {"train": "dim_train", "test": ["dim_test"]}}}))
    args = ["--protocols", str(tmp_path / "protocols.yaml"), "--data", str(tmp_path / "data"),
            "--exp", str(tmp_path / "exp")]
    cfg = tmp_path / "c.yaml"
    cfg.write_text("task: recording\nprotocols: [dimensional]\nmodel: {x: 1}\n")
    assert train.main(["--config", str(cfg), *args]) == 0
    assert [p for p, _ in CALLS] == ["dimensional"]
    assert "protocols" not in CALLS[0][1] and CALLS[0][1]["model"] == {"x": 1}  # the task never sees the key
    log = (tmp_path / "exp" / "log" / "train.log").read_text()
    assert "protocol categorical skipped: not in the config's 'protocols:'" in log
    cfg.write_text("task: recording\nprotocols: [dimensionl]\n")
    with pytest.raises(SystemExit, match=r"names \['dimensionl'\], which .*protocols.yaml does not define "
                                         r"\(it has: categorical, dimensional\)"):
        train.main(["--config", str(cfg), *args])
    cfg.write_text("task: recording\n")  # no key: every protocol
    CALLS.clear()
    assert train.main(["--config", str(cfg), *args]) == 0
    assert [p for p, _ in CALLS] == ["categorical", "dimensional"]


# --------------------------------------------------------------------- ser.sh --
FAKE_PY = """#!/usr/bin/env bash
# Records train/evaluate calls (and makes their exp dir); everything else runs the real interpreter.
if [ "$1" = -m ] && { [ "$2" = sertk.bin.train ] || [ "$2" = sertk.bin.evaluate ]; }; then
  echo "${@:2}" >> "$CALLS"
  while [ $# -gt 0 ]; do [ "$1" = --exp ] && mkdir -p "$2"; shift; done
  exit 0
fi
exec "$REAL_PY" "$@"
"""


def _ser(recipe: Path, *args: str) -> subprocess.CompletedProcess:
    fake = recipe / "fake_python.sh"
    fake.write_text(FAKE_PY)
    fake.chmod(0o755)
    env = {**os.environ, "CALLS": str(recipe / "calls.log"), "REAL_PY": sys.executable, "OMP_NUM_THREADS": "1"}
    return subprocess.run(["bash", str(SER), "--corpus", "ravdess", "--python", str(fake), "--nj", "1",
                           "--prepare-cmd", "true", "--protocols", "conf/protocols.yaml", *args],
                          cwd=recipe, env=env, capture_output=True, text=True, timeout=300)


def test_ser_sh_runs_config_at_protocols_on_that_file(tmp_path):
    egs = tmp_path / "egs"
    _siblings(egs)
    recipe = _test_recipe(egs)
    for c in ("a", "b"):
        (recipe / "conf" / f"{c}.yaml").write_text("task: egemaps_linear\n")
    r = _ser(recipe, "--stage", "3", "--stop-stage", "4", "--ser-configs",
             "conf/a.yaml conf/b.yaml@conf/protocols_selm.yaml")
    assert r.returncode == 0, r.stderr[-3000:]
    calls = (recipe / "calls.log").read_text().splitlines()
    assert [c.split()[0] for c in calls] == ["sertk.bin.train"] * 2 + ["sertk.bin.evaluate"] * 2
    assert "--config conf/a.yaml --protocols conf/protocols.yaml" in calls[0] and "--exp exp/a " in calls[0]
    assert "--config conf/b.yaml --protocols conf/protocols_selm.yaml" in calls[1] and "--exp exp/b " in calls[1]
    marker = json.loads((recipe / "exp" / ".stages" / "stage3_train_b.json").read_text())
    assert "conf/protocols_selm.yaml" in marker["signature"]["inputs"]  # its digest covers that file


def test_stage_1_builds_the_sets_and_names_unprepared_siblings(tmp_path):
    egs = tmp_path / "egs"
    _siblings(egs, audio=True)
    recipe = _test_recipe(egs, audio=True)
    configs = ["--ser-configs", "conf/selm.yaml@conf/protocols_selm.yaml"]
    (recipe / "conf" / "selm.yaml").write_text("task: selm\n")
    r = _ser(recipe, "--stage", "1", "--stop-stage", "1", *configs)
    assert r.returncode == 0, r.stderr[-3000:]
    assert all((recipe / "data" / s / "utt2spk").is_file() for s in ("multi_train", "multi_dev", "multi_test"))
    assert "stage 1 (build_protocols_selm): running" in r.stderr
    # a re-prepared sibling re-runs the build; an unchanged one does not
    r = _ser(recipe, "--stage", "1", "--stop-stage", "1", *configs)
    assert "stage 1 up to date (build_protocols_selm)" in r.stderr
    emo = egs / "cremad" / "data" / "all" / "utt2emo"
    emo.write_text(emo.read_text().replace("c0_0 ANG", "c0_0 SAD"))
    r = _ser(recipe, "--stage", "1", "--stop-stage", "1", *configs)
    assert "stage 1 (build_protocols_selm): running because inputs changed: ../cremad/data/all" in r.stderr
    # an unprepared sibling: a run going on to the model stages stops, naming it and the command
    (egs / "msp_podcast" / "data" / "all" / "utt2spk").unlink()
    r = _ser(recipe, "--stage", "1", "--stop-stage", "4", *configs)
    assert r.returncode != 0 and "(cd ../msp_podcast && ./run.sh --stage 1 --stop-stage 1)" in r.stderr
    assert "stage 2" not in r.stderr
    # ... while preparing this corpus only (e.g. as another recipe's sibling) goes on
    r = _ser(recipe, "--stage", "1", "--stop-stage", "1", *configs)
    assert r.returncode == 0 and "are not built" in r.stderr


# ----------------------------------------- the committed recipes, on their fixtures --
def test_committed_selm_protocols_build_from_prepared_fixture_corpora(tmp_path, monkeypatch):
    """egs/{ravdess,cremad,iemocap}/conf/protocols_selm.yaml against the real recipes' prepared layouts."""
    from fixtures_corpora import (copy_recipe, cremad_split_actors, make_cremad, make_iemocap, make_msp_podcast,
                                  make_ravdess, make_tess, run_prepare)
    makers = {"ravdess": make_ravdess, "cremad": lambda d: make_cremad(d, cremad_split_actors(1)),
              "iemocap": make_iemocap, "tess": make_tess,
              "msp_podcast": make_msp_podcast}
    for name, make in makers.items():
        recipe = copy_recipe(name, tmp_path, keep_folds=None)
        make(tmp_path / f"{name}_db")
        r = run_prepare(name, tmp_path / f"{name}_db", recipe / "data")
        assert r.returncode == 0, r.stderr[-2000:]
    for name in ("ravdess", "cremad", "iemocap"):
        recipe = tmp_path / "egs" / name
        monkeypatch.chdir(recipe)
        assert build_multicorpus.main(["--protocols", "conf/protocols_selm.yaml"]) == 0
        train, dev, test = (DataDir.read(recipe / "data" / s) for s in ("selm_multi_train", "selm_multi_dev",
                                                                         "selm_test"))
        corpora = {u.split("-")[0] for u in train.utts + dev.utts}
        assert corpora == set(makers) - {name}, corpora
        assert all(u.startswith(f"{name}-") for u in test.utts)
        labels = set(yaml.safe_load((recipe / "conf" / "labels_selm.yaml").read_text())["labels"])
        assert set(train.utt2emo.values()) <= labels and set(test.utt2emo.values()) <= labels
        avd = {**train.utt2avd, **dev.utt2avd}
        assert {u.split("-")[0] for u in avd} == {"iemocap", "msp_podcast"} - {name}
        assert all(1.0 <= x <= 5.0 for v in avd.values() for x in v)  # MSP-Podcast's 1-7 rescaled onto 1-5
        assert validate_datadir(recipe / "data" / "selm_multi_train", check_audio=False).ok
        if name == "ravdess":
            assert "neutral" in test.utt2emo.values() and "calm" not in test.utt2emo.values()


def test_ser_sh_trains_classifier_then_selm_on_the_built_sets_with_relative_gain(tmp_path):
    """Stages 1-4 as the SELM recipes run them, with tiny local models: every SELM result carries the gain."""
    from test_selm import ENC, LM, PREFIX
    egs = tmp_path / "egs"
    _siblings(egs, audio=True)
    recipe = _test_recipe(egs, audio=True)
    small = {"epochs": 1, "batch_size": 8, "lr": 1e-3, "progress": False}
    (recipe / "conf" / "classifier_mc.yaml").write_text(yaml.safe_dump({
        "task": "classifier", "baseline": True, "model": {"encoder": {**ENC, "freeze": False}, "pooling": "mean"},
        "train": small, "eval": {"bootstrap": 0}}))
    (recipe / "conf" / "selm.yaml").write_text(yaml.safe_dump({
        "task": "selm", "model": {"encoder": ENC, "prefix": PREFIX, "lm": {**LM, "tokenizer": {"vocab_size": 60}},
                                  "views": ["categorical", "sentiment", "dimensional"], "avd_thresholds": [2.5, 3.5]},
        "train": small, "eval": {"bootstrap": 0, "baseline": "exp/classifier_mc"},
        "fewshot": {"k": [1], "pool": {"multi_test": "multi_test"}, "train": {"epochs": 1, "progress": False}}}))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    for stages in (("1", "1"), ("3", "4")):  # stage 2 (eGeMAPS) is not needed by these configs
        r = subprocess.run(["bash", str(SER), "--corpus", "ravdess", "--python", sys.executable, "--nj", "1",
                            "--prepare-cmd", "true", "--protocols", "conf/protocols.yaml", "--stage", stages[0],
                            "--stop-stage", stages[1], "--ser-configs",
                            "conf/classifier_mc.yaml@conf/protocols_selm.yaml conf/selm.yaml@conf/protocols_selm.yaml"],
                           cwd=recipe, env=env, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr[-4000:]
    base = json.loads((recipe / "exp/classifier_mc/multi/eval/multi_test/results.json").read_text())
    assert base["protocol"]["train"] == "multi_train" and base["protocol"]["test"] == "multi_test"
    results = sorted((recipe / "exp" / "selm").rglob("results.json"))
    assert len(results) == 2  # the model and its k=1 few-shot copy
    for path in results:
        extra = json.loads(path.read_text())["extra"]
        assert extra["baseline_uar"] == base["metrics"]["uar"] and "relative_gain_uar" in extra, path
    log = (recipe / "exp" / "selm" / "log" / "train.log").read_text()
    assert "multi_train: views: categorical 36 utts, sentiment 36 utts, dimensional 24 utts" in log
    assert r.stderr.index("train_classifier_mc") < r.stderr.index("train_selm") \
        < r.stderr.index("evaluate_classifier_mc") < r.stderr.index("evaluate_selm")
