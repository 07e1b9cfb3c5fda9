"""Repeated seeds (issue 23): ``--seeds 0,1,2`` or a config's ``seeds:`` trains each split once per seed into
``<split>/seed<N>/``, every result records its seed, the report gives mean ± sd over seeds beside each
seed's interval, and a split dir of the other layout is moved aside, never mixed in."""
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from sertk.eval.report import build_rows, write_report
from sertk.eval.results import read_results, write_result
from sertk.tasks.runner import parse_seeds
from test_stale_models import _config, recipe  # noqa: F401  (the fixture: low/high tones)


def _run(root: Path, exp: Path, cfg: Path, *extra: str, steps=("train", "evaluate")) -> subprocess.CompletedProcess:
    for step in steps:
        r = subprocess.run([sys.executable, "-m", f"sertk.bin.{step}", "--config", str(cfg), "--protocols",
                            str(root / "protocols.yaml"), "--data", str(root / "data"), "--dump", str(root / "dump"),
                            "--exp", str(exp), *extra], cwd=root, capture_output=True, text=True, timeout=600)
        if r.returncode != 0:
            return r
    return r


def _results(exp: Path) -> dict[str, dict]:
    return {p.relative_to(exp).as_posix(): json.loads(p.read_text()) for p in sorted(exp.rglob("results.json"))}


def test_seeds_train_apart_and_the_report_aggregates_them(recipe):  # noqa: F811
    cfg = _config(recipe / "c.yaml", epochs=1)
    r = _run(recipe, recipe / "exp", cfg, "--seeds", "0,1,2")
    assert r.returncode == 0, r.stderr[-3000:]
    res = _results(recipe / "exp")
    assert set(res) == {f"p/seed{s}/eval/test/results.json" for s in (0, 1, 2)}
    assert [res[f"p/seed{s}/eval/test/results.json"]["seed"] for s in (0, 1, 2)] == [0, 1, 2]
    # each seed is its own run: its digest holds the seed, and the models differ
    digests = {json.loads((recipe / "exp" / "p" / f"seed{s}" / "run_digest.json").read_text())["digest"]
               for s in (0, 1, 2)}
    assert len(digests) == 3
    weights = {(recipe / "exp" / "p" / f"seed{s}" / "best.safetensors").read_bytes() for s in (0, 1, 2)}
    assert len(weights) == 3
    # the config's seeds: key, seeds run at once (--split-jobs: one process per split and seed): seeds 1 and
    # 2 alone give exactly the figures of their runs in the list
    cfg12 = yaml.safe_load(cfg.read_text())
    cfg12["seeds"] = [1, 2]
    (recipe / "c12.yaml").write_text(yaml.safe_dump(cfg12))
    r = _run(recipe, recipe / "par", recipe / "c12.yaml", "--split-jobs", "2")
    assert r.returncode == 0 and "[p/seed1] " in r.stderr and "[p/seed2] " in r.stderr, r.stderr[-3000:]
    par = _results(recipe / "par")
    assert set(par) == {"p/seed1/eval/test/results.json", "p/seed2/eval/test/results.json"}
    assert all(par[k]["metrics"] == res[k]["metrics"] and par[k]["seed"] == res[k]["seed"] for k in par)

    rows = build_rows(read_results(recipe / "exp"))
    assert len(rows) == 1 and rows[0].seeds == [0, 1, 2]
    uars = [res[f"p/seed{s}/eval/test/results.json"]["metrics"]["uar"] for s in (0, 1, 2)]
    assert rows[0].metrics["uar"] == pytest.approx(np.mean(uars))
    assert rows[0].std["uar"] == pytest.approx(np.std(uars, ddof=1))
    text = write_report(recipe / "exp", recipe / "RESULTS.md")
    assert "(3 seeds)" in text and "Repeated seeds" in text
    assert all(f"seed {s}: {u:.3f}" in text for s, u in zip((0, 1, 2), uars))


def test_switching_layout_moves_the_other_runs_aside(recipe):  # noqa: F811
    cfg = _config(recipe / "c.yaml", epochs=1)
    assert _run(recipe, recipe / "exp", cfg).returncode == 0  # unseeded: p/
    r = _run(recipe, recipe / "exp", cfg, "--seeds", "0,1", steps=("train",))
    assert r.returncode == 0, r.stderr[-3000:]
    assert _run(recipe, recipe / "exp", cfg, "--seeds", "0,1", steps=("evaluate",)).returncode == 0
    assert "moved aside" in r.stderr and (recipe / "exp" / "p.old-1" / "run_digest.json").is_file()
    assert set(_results(recipe / "exp")) - {p for p in _results(recipe / "exp") if p.startswith("p.old-1/")} == {
        "p/seed0/eval/test/results.json", "p/seed1/eval/test/results.json"}
    # evaluating a seed that never trained names the dir and what to do
    r = _run(recipe, recipe / "exp", cfg, "--seeds", "0,5", steps=("evaluate",))
    assert r.returncode != 0 and "seed5" in r.stderr and "nothing trained with seed 5" in r.stderr


@pytest.mark.parametrize("value,message", [("0,x", "'x' is not a non-negative integer seed"),
                                           ("1,1", "seed(s) [1] repeated"), ([], "non-empty list"),
                                           ([0, -2], "-2"), ([0.5], "0.5")])
def test_bad_seed_lists_are_named(value, message):
    with pytest.raises(SystemExit, match=re.escape(message)):
        parse_seeds(value, "--seeds")


def test_two_results_of_one_seed_are_refused(tmp_path):
    proto = {"corpus": "c", "protocol": "p", "train": "tr", "test": "te", "scheme": "si", "label_map": "l"}
    from sertk.eval.results import run_seed
    for sub in ("p/seed0/eval/te", "p/seed1/eval/te"):
        with run_seed(0):  # both record seed 0: a copied dir, say
            write_result(tmp_path / sub / "results.json", stage=4, name="m", task="classification",
                         protocol=proto, metrics={"uar": 0.5, "n": 4})
    with pytest.raises(ValueError, match="two results of seed 0"):
        build_rows(read_results(tmp_path))


def test_the_config_check_knows_the_seeds_key():
    from sertk.tasks import check_config
    selm = yaml.safe_load((Path(__file__).resolve().parent.parent / "egs/mini_emo/conf/selm.yaml").read_text())
    assert selm["seeds"] == [0, 1, 2]
    check_config(selm, "selm.yaml")  # the runner's key: accepted, not passed to the task
    with pytest.raises(ValueError, match=r"selm.yaml: seeds: 'a' is not a non-negative integer seed"):
        check_config({**selm, "seeds": [0, "a"]}, "selm.yaml")
    zs = yaml.safe_load((Path(__file__).resolve().parent.parent / "egs/mini_emo/conf/zsfuse.yaml").read_text())
    with pytest.raises(ValueError, match="no train: block"):
        check_config({**zs, "seeds": [0, 1]}, "zsfuse.yaml")
