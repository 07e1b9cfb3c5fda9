"""End to end: the mini_emo recipe on a reduced corpus, through run.sh and ser.sh.

Runs every implemented stage in a scratch copy of the recipe, then checks what
a user relies on: results for every config/protocol/test set with protocol
ids, the report, experiment dirs that can re-run themselves, stages that are
skipped when nothing changed and re-run when an option changed, and
`sertk predict` agreeing with stage 4.
"""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from zoo_fixtures import POOL_SMALL, tiny_zoo

ROOT = Path(__file__).resolve().parent.parent
SMALL = " ".join([
    "--set domains.studio.speakers.train=4", "--set domains.studio.speakers.dev=2",
    "--set domains.studio.speakers.test=2", "--set domains.studio.utts_per_speaker=8",
    "--set domains.phone.speakers.train=4", "--set domains.phone.speakers.dev=2",
    "--set domains.phone.speakers.test=2", "--set domains.phone.utts_per_speaker=8",
    "--set domains.studio.added_speakers.test=0", "--set domains.phone.added_speakers.test=0",
])
PREPARE = ("python3 -m sertk.bin.make_synth_corpus --config conf/synth.yaml --out-audio downloads/audio "
           f"--out-data data {SMALL}")
POOL = ("python3 -m sertk.bin.make_synth_corpus --config conf/synth.yaml --part pretrain --out-audio downloads/audio "
        f"--out-data data {' '.join('--set ' + s for s in POOL_SMALL)}")


def run_recipe(recipe: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    r = subprocess.run(["bash", "run.sh", "--prepare-cmd", PREPARE, "--pool-cmd", POOL,
                        "--overrides", "train.epochs=1 eval.bootstrap=200", *args],
                       cwd=recipe, env=env, capture_output=True, text=True, timeout=1200)
    if r.returncode != 0:
        pytest.fail(f"run.sh {' '.join(args)} failed:\n{r.stderr[-6000:]}")
    return r


@pytest.fixture(scope="module")
def recipe(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("sertk")
    (root / "egs").mkdir()
    (root / "egs" / "TEMPLATE").symlink_to(ROOT / "egs" / "TEMPLATE")
    dst = root / "egs" / "mini_emo"
    shutil.copytree(ROOT / "egs" / "mini_emo", dst,
                    ignore=shutil.ignore_patterns("data", "exp", "dump", "downloads", "zoo", "RESULTS.md"))
    (dst / "conf" / "zoo.yaml").write_text(yaml.safe_dump(tiny_zoo()))  # stage 0: structure, not quality
    for student in ("wav2small", "wav2small_17k", "mobilenetv3_small"):  # a 1-epoch teacher need not learn
        path = dst / "conf" / f"{student}.yaml"
        cfg = yaml.safe_load(path.read_text())
        cfg["distill"]["allow_collapsed_teacher"] = True
        path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    selm = yaml.safe_load((dst / "conf" / "selm.yaml").read_text())  # repeated seeds: two run the same path
    assert selm["seeds"] == [0, 1, 2]
    selm["seeds"] = [0, 1]
    (dst / "conf" / "selm.yaml").write_text(yaml.safe_dump(selm, sort_keys=False))
    first = run_recipe(dst)
    (dst / "first_run.log").write_text(first.stderr)
    return dst


def results(recipe: Path) -> dict[str, dict]:
    return {str(p.relative_to(recipe / "exp")): json.loads(p.read_text())
            for p in sorted((recipe / "exp").rglob("results.json"))}


def test_every_config_protocol_and_test_set_has_results(recipe):
    res = results(recipe)
    # SELM trains repeated seeds (conf/selm.yaml seeds:, two here), each in its own dir, each result naming it
    runs = [(cfg, "") for cfg in ("egemaps_lr", "egemaps_lr_spknorm", "probe_whisper", "classifier")]
    runs += [("selm", f"/seed{s}") for s in (0, 1)]
    for cfg, seed_dir in runs:
        for proto, tests in (("studio", ("studio_test", "phone_test")), ("phone", ("phone_test", "studio_test"))):
            for t in tests:
                r = res[f"{cfg}/{proto}{seed_dir}/eval/{t}/results.json"]
                assert not seed_dir or r["seed"] == int(seed_dir[len("/seed"):])
                assert r["task"] == "classification" and r["stage"] == 4
                assert r["protocol"]["train"] == f"{proto}_train" and r["protocol"]["test"] == t
                assert "corpus=mini_emo" in r["protocol_id"]
                assert 0.0 <= r["metrics"]["uar"] <= 1.0 and len(r["metrics"]["uar_ci"]) == 2
    for proto, test in (("studio", "phone_test"), ("phone", "studio_test")):
        for k in (1, 5, 10, 20):
            r = res[f"selm/{proto}/seed0/fewshot/{test}/k{k}/eval/{test}/results.json"]
            assert r["name"] == f"selm_fewshot_k{k}" and r["stage"] == 4
        assert "relative_gain_uar" in res[f"selm/{proto}/seed0/eval/{test}/results.json"]["extra"]
    assert not any(k.startswith(("selm/studio/eval", "selm/phone/eval")) for k in res)  # only seed dirs
    r = res["regressor/studio/eval/studio_test/results.json"]
    assert r["task"] == "regression" and r["stage"] == 8
    assert set(r["metrics"]["ccc"]) == {"arousal", "valence", "dominance"}


def test_distillation_teacher_and_students(recipe):
    res = results(recipe)
    for cfg in ("teacher", "wav2small", "wav2small_17k", "mobilenetv3_small"):
        for t in ("studio_test", "phone_test"):  # studio-trained: in-domain and cross-domain
            r = res[f"{cfg}/studio/eval/{t}/results.json"]
            assert r["task"] == "regression" and r["stage"] == 8
            assert set(r["metrics"]["ccc"]) == {"arousal", "valence", "dominance"}
        assert not any(k.startswith(f"{cfg}/phone/") for k in res)  # the config restricts its protocols
    for cfg, lo, hi in (("wav2small", 60_000, 80_000), ("wav2small_17k", 8_000, 20_000)):
        r = res[f"{cfg}/studio/eval/studio_test/results.json"]
        m = r["metrics"]
        assert lo <= m["params"] <= hi and m["onnx_int8_kb"] < 130 and m["rtf_1thread"] > 0
        assert set(m["ccc_teacher"]) == {"arousal", "valence", "dominance"}
        assert r["extra"]["profile"]["parity_fp32_max_abs"] < 1e-4
    onnx = recipe / "exp/wav2small/studio/onnx/model.int8.onnx"
    assert onnx.exists()
    assert "Students (int8 ONNX)" in (recipe / "exp" / "RESULTS.md").read_text()


def test_predict_serves_the_onnx_student(recipe, tmp_path):
    out = tmp_path / "pred"
    r = subprocess.run([sys.executable, "-m", "sertk.cli", "predict", "--model", str(recipe / "exp/wav2small/studio"),
                        "--wav-scp", str(recipe / "data/studio_test/wav.scp"), "--out", str(out)],
                       cwd=recipe, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = [line.split() for line in (out / "utt2avd").read_text().splitlines()]
    utts = (recipe / "data/studio_test/utt2spk").read_text().split("\n")
    assert len(rows) == len([u for u in utts if u]) and all(len(row) == 4 for row in rows)


def test_egemaps_baseline_learns(recipe):
    """Even on the reduced corpus the feature baseline is far above chance in-domain."""
    r = results(recipe)["egemaps_lr/studio/eval/studio_test/results.json"]
    assert r["metrics"]["uar"] > 0.45, r["metrics"]


def test_report_has_a_table_per_stage_and_plots(recipe):
    md = (recipe / "exp" / "RESULTS.md").read_text()
    assert "egemaps_lr_spknorm" in md and "classifier" in md and "regressor" in md
    assert "chance" in md.lower() and "majority" in md.lower()
    assert "(2 seeds)" in md and "Repeated seeds" in md  # SELM's seeds: mean ± sd and each seed
    plots = list((recipe / "exp" / "plots").glob("*.png"))
    assert plots and all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in plots)


def test_experiment_dirs_record_how_they_were_made(recipe):
    for cfg in ("classifier", "egemaps_lr", "regressor"):
        exp = recipe / "exp" / cfg
        assert "sertk.bin.train" in (exp / "run_train.sh").read_text()
        assert "sertk.bin.evaluate" in (exp / "run_evaluate.sh").read_text()
        run_sh = (exp / "run.sh").read_text()
        assert run_sh.index("run_train.sh") < run_sh.index("run_evaluate.sh")
        assert "task:" in (exp / "config.yaml").read_text()
    # the recorded command really re-runs: evaluation again gives the same figures
    exp = recipe / "exp" / "egemaps_lr"
    before = json.loads((exp / "studio/eval/studio_test/results.json").read_text())["metrics"]
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    r = subprocess.run(["bash", str(exp / "run_evaluate.sh")], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    after = json.loads((exp / "studio/eval/studio_test/results.json").read_text())["metrics"]
    assert after == before


def test_second_run_skips_everything_and_changes_nothing(recipe):
    before = {k: v["metrics"] for k, v in results(recipe).items()}
    r = run_recipe(recipe)
    for n in (0, 1, 2, 3, 4, 7, 8):
        assert f"stage {n} up to date" in r.stderr
    assert "running because" not in r.stderr
    assert {k: v["metrics"] for k, v in results(recipe).items()} == before


def test_changed_option_reruns_the_stage(recipe):
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    r = subprocess.run(["bash", "run.sh", "--prepare-cmd", PREPARE, "--stage", "3", "--stop-stage", "3",
                        "--ser-configs", "conf/egemaps_lr.yaml",
                        "--overrides", "train.epochs=1 eval.bootstrap=200 model.C=0.5"],
                       cwd=recipe, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "stage 3 (train_egemaps_lr): running because options changed" in r.stderr


def test_predict_agrees_with_stage_4(recipe, tmp_path):
    exp = recipe / "exp" / "classifier" / "studio"
    wav_scp = recipe / "data" / "studio_test" / "wav.scp"
    out = tmp_path / "pred"
    r = subprocess.run([sys.executable, "-m", "sertk.cli", "predict", "--model", str(exp),
                        "--wav-scp", str(wav_scp), "--out", str(out)],
                       cwd=recipe, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    ours = dict(line.split() for line in (out / "utt2emo").read_text().splitlines())
    stage4 = dict(line.split() for line in (exp / "eval" / "studio_test" / "predictions.txt").read_text().splitlines())
    assert ours == stage4
    header = (out / "scores.txt").read_text().splitlines()[0]
    assert header == "# utt neutral happy angry sad"
