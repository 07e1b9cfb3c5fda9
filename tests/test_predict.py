"""sertk predict serves every model a recipe trains, and agrees with that model's own evaluation.

Each kind is trained and evaluated here on a toy recipe through ``sertk train`` /
``sertk evaluate`` (as stages 3-4 run them), then ``sertk predict`` runs on the
test set's wav.scp: its labels must be the stage-4 predictions and its scores
the stage-4 scores. The test clips are longer than the configs' max_duration,
so a predictor that forgot the evaluation crop would disagree.
"""
from __future__ import annotations

import copy
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from sertk.bin import evaluate as evaluate_cli
from sertk.bin import extract_egemaps as egemaps_cli
from sertk.bin import predict as predict_cli
from sertk.bin import train as train_cli
from sertk.data.datadir import read_table
from sertk.export.serve import NOT_SERVED, SERVERS, Predictions, ServeError, load_predictor

from toy_recipe import toy_recipe
from zoo_fixtures import TINY_WAV2VEC2, TINY_WHISPER, on_whisper, without_zoo

CONF = Path(__file__).resolve().parent.parent / "egs/mini_emo/conf"
LABELS = ["neutral", "happy", "angry", "sad"]
MAX_DURATION = 0.7  # toy clips are 0.6-1.2 s


pytestmark = pytest.mark.usefixtures("restore_logging")


@pytest.fixture(scope="module")
def recipe(tmp_path_factory):
    """test_export's tone corpus with a class per pitch quartile, one protocol, eGeMAPS extracted (stage 2)."""
    root = toy_recipe(tmp_path_factory.mktemp("toy"), LABELS)
    sets = ("train", "dev", "test")
    assert egemaps_cli.main(["--data", *(str(root / "data" / s) for s in sets),
                             "--out", *(str(root / "dump" / "egemaps" / s) for s in sets)]) == 0
    return root


def _run(recipe: Path, cfg: dict, name: str) -> Path:
    """Train and evaluate ``cfg`` as stages 3-4 do; the split's experiment dir."""
    path = recipe / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    args = ["--config", str(path), "--protocols", str(recipe / "protocols.yaml"), "--data", str(recipe / "data"),
            "--dump", str(recipe / "dump"), "--exp", str(recipe / "exp" / name), "--stage", "4"]
    assert train_cli.main(args) == 0
    assert evaluate_cli.main(args) == 0
    return recipe / "exp" / name / "p"


def _predict(recipe: Path, expdir: Path, out: Path, *extra: str) -> Path:
    assert predict_cli.main(["--model", str(expdir), "--wav-scp", str(recipe / "data" / "test" / "wav.scp"),
                             "--out", str(out), *extra]) == 0
    return out


def _scores(path: Path) -> tuple[str, dict[str, np.ndarray]]:
    head, *rows = path.read_text().splitlines()
    return head, {r.split()[0]: np.array([float(v) for v in r.split()[1:]]) for r in rows}


def _agrees_with_stage4(expdir: Path, out: Path, scores: bool = True, atol: float = 2e-4) -> None:
    stage4 = expdir / "eval" / "test"
    labels = {u: v.split()[0] for u, v in read_table(stage4 / "predictions.txt").items()}
    assert read_table(out / "utt2emo") == labels
    if scores:
        head4, want = _scores(stage4 / "scores.txt")
        head, got = _scores(out / "scores.txt")
        assert head == head4 and got.keys() == want.keys()
        for u in want:
            np.testing.assert_allclose(got[u], want[u], atol=atol, err_msg=u)


def _avd_agrees_with_stage4(expdir: Path, out: Path) -> None:
    want = {u: np.array(v.split(), float) for u, v in read_table(expdir / "eval" / "test" / "predictions.txt").items()}
    got = {u: np.array(v.split(), float) for u, v in read_table(out / "utt2avd").items()}
    assert got.keys() == want.keys()
    for u in want:
        np.testing.assert_allclose(got[u], want[u], atol=2e-4, err_msg=u)


def _tiny(conf: str, whisper: bool = False, **train) -> dict:
    """A mini_emo config on a random-init local encoder (``whisper``: the Whisper zoo model's stand-in)."""
    cfg = yaml.safe_load((CONF / conf).read_text())
    cfg = without_zoo(on_whisper(cfg) if whisper else cfg)
    cfg.pop("protocols", None)
    if "train" in cfg:
        cfg["train"] = {**cfg["train"], "epochs": 1, "warmup_steps": 0, "progress": False, **train}
    if "data" in cfg:
        cfg["data"] = {**cfg["data"], "max_duration": MAX_DURATION}
    if "eval" in cfg:
        cfg["eval"] = {**cfg["eval"], "bootstrap": 0}
    return cfg


def test_every_task_a_recipe_trains_has_a_server():
    from sertk.tasks import TASKS

    assert set(TASKS) <= set(SERVERS) | set(NOT_SERVED) and not set(SERVERS) & set(NOT_SERVED)


def test_egemaps_linear_model_is_served(recipe, tmp_path):
    """The model today's real recipes train: eGeMAPS extracted as stage 2 did, standardised as stage 4 did."""
    expdir = _run(recipe, yaml.safe_load((CONF / "egemaps_lr.yaml").read_text()), "egemaps_lr")
    out = _predict(recipe, expdir, tmp_path / "pred")
    _agrees_with_stage4(expdir, out, scores=False)  # stage 4 writes no scores for this model
    assert set(read_table(out / "utt2avd")) == set(read_table(out / "utt2emo"))  # its ridge A/V/D too
    head, probs = _scores(out / "scores.txt")
    assert head == "# utt " + " ".join(LABELS)
    assert all(abs(p.sum() - 1) < 1e-3 for p in probs.values())


def test_speaker_normalised_egemaps_model_needs_and_uses_the_speakers(recipe, tmp_path):
    expdir = _run(recipe, yaml.safe_load((CONF / "egemaps_lr_spknorm.yaml").read_text()), "egemaps_lr_spknorm")
    with pytest.raises(SystemExit, match="--utt2spk"):
        _predict(recipe, expdir, tmp_path / "nospk")
    out = _predict(recipe, expdir, tmp_path / "pred", "--utt2spk", str(recipe / "data" / "test" / "utt2spk"))
    _agrees_with_stage4(expdir, out, scores=False)


def test_frozen_encoder_probe_is_served(recipe, tmp_path):
    cfg = _tiny("probe_w2v.yaml")
    cfg["model"]["encoder"]["layer"] = 2
    expdir = _run(recipe, cfg, "probe")
    _agrees_with_stage4(expdir, _predict(recipe, expdir, tmp_path / "pred"))


def test_speech_classifier_is_served(recipe, tmp_path):
    expdir = _run(recipe, _tiny("classifier.yaml"), "classifier")
    _agrees_with_stage4(expdir, _predict(recipe, expdir, tmp_path / "pred", "--batch-size", "3"))


@pytest.mark.parametrize("encoder", [{**TINY_WAV2VEC2, "layer": 1}, {**TINY_WHISPER, "layer": 2, "window": "clip"}],
                         ids=["wav2vec2", "whisper"])
def test_selm_is_served(recipe, tmp_path, encoder):
    cfg = {"task": "selm", "model": {
        "encoder": copy.deepcopy(encoder),
        "prefix": {"length": 3, "proj_hidden": 32, "mapper_layers": 1, "mapper_heads": 2, "dropout": 0.0},
        "lm": {"mode": "full", "tokenizer": {"vocab_size": 60}, "config": {
            "n_embd": 32, "n_layer": 2, "n_head": 2, "n_positions": 64, "resid_pdrop": 0.0, "embd_pdrop": 0.0,
            "attn_pdrop": 0.0}},
        "prompt": "say the emotion.", "views": ["categorical"]},
        "data": {"cache": True, "max_duration": MAX_DURATION},
        "train": {"epochs": 1, "batch_size": 4, "lr": 3e-3, "progress": False, "device": "cpu"},
        "eval": {"batch_size": 8, "bootstrap": 0, "lm_prior_weight": 0.2}}
    expdir = _run(recipe, cfg, "selm")
    out = _predict(recipe, expdir, tmp_path / "pred")
    _agrees_with_stage4(expdir, out, atol=2e-3)  # stage 4 writes SELM's log-likelihoods with 4 decimals
    assert (out / "scores.txt").read_text().startswith("# utt log-likelihood neutral")


def test_teacher_is_served(recipe, tmp_path):
    expdir = _run(recipe, _tiny("teacher.yaml"), "teacher")
    _avd_agrees_with_stage4(expdir, _predict(recipe, expdir, tmp_path / "pred"))


@pytest.mark.parametrize("conf", ["probe_w2v.yaml", "classifier.yaml", "regressor.yaml", "teacher.yaml"])
def test_whisper_encoder_models_are_served(recipe, tmp_path, conf):
    """The mini_emo configs on the Whisper zoo model (a local Whisper stands in): trained and evaluated
    as stages 3-4 (7) run them, served with the same clip-window features, batched otherwise."""
    cfg = _tiny(conf, whisper=True)
    name = conf.removesuffix(".yaml") + "_whisper"
    expdir = _run(recipe, cfg, name)
    spec = yaml.safe_load(((expdir / "teacher.yaml") if conf == "teacher.yaml" else (expdir / "model.yaml")
                           ).read_text())
    assert "'type': 'whisper'" in str(spec) and "'window': 'clip'" in str(spec)
    out = _predict(recipe, expdir, tmp_path / "pred", "--batch-size", "3")
    if conf in ("regressor.yaml", "teacher.yaml"):
        _avd_agrees_with_stage4(expdir, out)
    else:
        _agrees_with_stage4(expdir, out)


def test_exported_student_is_served_as_stage8_scores_it(recipe, tmp_path):
    """A student is served as its int8 ONNX export, one whole file at a time (stage 8's scoring)."""
    from sertk.data.dataset import AudioDataset
    from sertk.export.onnx_export import export_onnx, quantize_int8, run_onnx, session
    from sertk.models.wav2small import Wav2Small

    torch.manual_seed(0)
    expdir = tmp_path / "exp" / "wav2small" / "p"
    meta = {"output_names": "arousal,valence,dominance", "sample_rate": 16000}
    int8 = quantize_int8(export_onnx(Wav2Small("paper").eval(), expdir / "onnx" / "model.onnx", meta),
                         expdir / "onnx" / "model.int8.onnx")
    (expdir / "model.yaml").write_text("task: distill\n")
    out = _predict(recipe, expdir, tmp_path / "pred")
    ds = AudioDataset(recipe / "data" / "test", 16000, targets=("avd",))
    sess = session(int8)
    got = read_table(out / "utt2avd")
    for i, u in enumerate(ds.utts):
        np.testing.assert_allclose(np.array(got[u].split(), float), run_onnx(sess, ds[i]["wav"].numpy()), atol=1e-4)
    assert load_predictor(int8).predict({"x": str(recipe / "data" / "test00.wav")}).dims == meta[
        "output_names"].split(",")


def test_threads_option_sets_the_threads_a_model_predicts_on(tmp_path, monkeypatch):
    """``--threads N`` as on every entry point (default 1): the model computes on N threads."""
    from sertk.common.threads import set_threads

    seen = []

    class Model:
        task = "probe"

        def predict(self, files, speakers=None):
            seen.append((torch.get_num_threads(), os.environ["OMP_NUM_THREADS"]))
            return Predictions(sorted(files), ["a", "b"], ["a"] * len(files), np.full((len(files), 2), 0.5))

    monkeypatch.setattr(predict_cli, "load_predictor", lambda path: Model())
    (tmp_path / "wav.scp").write_text("u1 /nowhere/u1.wav\n")
    args = ["--model", str(tmp_path), "--wav-scp", str(tmp_path / "wav.scp"), "--out", str(tmp_path / "out")]
    try:
        assert predict_cli.main([*args, "--threads", "2"]) == 0
        assert predict_cli.main(args) == 0
    finally:
        set_threads(1)  # the test session's count
    assert seen == [(2, "2"), (1, "1")]
    with pytest.raises(SystemExit):  # a served model keeps its own config
        predict_cli.main([*args, "--set", "eval.batch_size=4"])


def test_a_dir_without_a_model_is_named(tmp_path):
    with pytest.raises(ServeError, match="no model.yaml"):
        load_predictor(tmp_path)
