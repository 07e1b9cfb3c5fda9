"""The shared trainer: exact resume, exact accumulation and DDP, dev-only selection, AMP, losses."""
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from sertk.common.config import ConfigError
from sertk.train import (CheckpointError, TrainConfig, Trainer, TrainError, ccc_loss, default_batches, masked_ce)
from sertk.train.trainer import chance_level, constant_outputs

from _ddp_worker import Regression, collate, make_model, mse_loss, train_once

HERE = Path(__file__).resolve().parent


def _params(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _digest(paths):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in paths}


# ------------------------------------------------------------------ config --

def test_config_rejects_unknown_keys_and_bad_values():
    with pytest.raises(ConfigError, match="unknown key.*bacth_size.*known keys"):
        TrainConfig.from_dict({"bacth_size": 4})
    with pytest.raises(ConfigError, match="optimizer must be one of"):
        TrainConfig.from_dict({"optimizer": "lamb"})
    with pytest.raises(ConfigError, match="train.lr"):
        TrainConfig.from_dict({"lr": "fast"})
    with pytest.raises(ConfigError, match="grad_accum must be >= 1"):
        TrainConfig.from_dict({"grad_accum": 0})
    # YAML 1.1 reads 1e-3 as a string; it is still a learning rate
    cfg = TrainConfig.from_dict({"lr": "1e-3", "epochs": 3.0, "max_grad_norm": None, "amp": "BF16"})
    assert cfg.lr == 1e-3 and cfg.epochs == 3 and cfg.max_grad_norm is None and cfg.amp == "bf16"


# ------------------------------------------------------------------ losses --

def test_ccc_loss_matches_hand_computation():
    # dim 0: x=[1,2,3], y=[1,3,2]: cov 1/3, var 2/3 each, same mean -> CCC 1/2
    # dim 1: x=[1,2,3], y=[2,3,4]: cov 2/3, var 2/3 each, mean gap 1 -> CCC (4/3)/(7/3) = 4/7
    pred = torch.tensor([[1.0, 1.0], [2.0, 2.0], [3.0, 3.0]])
    gold = torch.tensor([[1.0, 2.0], [3.0, 3.0], [2.0, 4.0]])
    assert ccc_loss(pred, gold).item() == pytest.approx(1 - (0.5 + 4 / 7) / 2, abs=1e-6)
    x = torch.randn(32, 3)
    x = x - x.mean(0)  # centred, so that -x has the same mean and CCC(x, -x) = -1
    assert ccc_loss(x, x.clone()).item() == pytest.approx(0.0, abs=1e-6)
    assert ccc_loss(x, -x).item() == pytest.approx(2.0, abs=1e-5)
    assert ccc_loss(x.bfloat16(), x.bfloat16()).dtype == torch.float32
    with pytest.raises(ValueError, match="shape"):
        ccc_loss(x, x[:, :2])


def test_masked_ce_ignores_masked_positions():
    logits = torch.randn(2, 5, 7)
    targets = torch.randint(0, 7, (2, 5))
    mask = torch.zeros(2, 5, dtype=torch.bool)
    mask[0, 3:] = True
    mask[1, 1] = True
    expected = torch.nn.functional.cross_entropy(logits[mask], targets[mask])
    changed = targets.clone()
    changed[~mask] = (changed[~mask] + 1) % 7  # masked-out targets must not matter
    assert masked_ce(logits, changed, mask).item() == pytest.approx(expected.item(), rel=1e-6)
    with pytest.raises(ValueError, match="no position"):
        masked_ce(logits, targets, torch.zeros_like(mask))


# ---------------------------------------------------------------- batching --

def test_default_batches_shard_the_single_process_batches():
    single = default_batches(43, 8, seed=3, epoch=1)
    ranks = [default_batches(43, 4, seed=3, epoch=1, rank=r, world_size=2) for r in range(2)]
    assert len(ranks[0]) == len(ranks[1]) == len(single) == 6
    for i, b in enumerate(single):
        assert ranks[0][i] + ranks[1][i] == b
    assert sorted(sum(single, [])) == list(range(43))
    assert default_batches(43, 8, seed=3, epoch=1) == single  # reproducible per (seed, epoch)
    assert default_batches(43, 8, seed=3, epoch=2) != single  # reshuffled each epoch


# ------------------------------------------------------- resume / checkpoints --

RESUME_CFG = {"epochs": 4, "batch_size": 4, "grad_accum": 2, "lr": 0.01, "weight_decay": 0.01,
              "scheduler": "cosine", "warmup_steps": 3, "max_grad_norm": 1.0, "progress": False, "log_interval": 2}


def _resume_trainer(expdir, crash_at=None, init_seed=0):
    calls = {"n": 0}

    def loss(model, batch):
        if model.training:
            calls["n"] += 1
            if crash_at is not None and calls["n"] == crash_at:
                raise RuntimeError("simulated crash")
        return mse_loss(model, batch)

    # dropout makes the run depend on the RNG, which resume must restore
    return Trainer(make_model(dropout=0.3, seed=init_seed), Regression(43), Regression(16, seed=99),
                   collate, loss, None, TrainConfig.from_dict(RESUME_CFG), expdir)


def test_resume_after_crash_equals_uninterrupted_run(tmp_path):
    full = _resume_trainer(tmp_path / "full")
    summary_full = full.fit()
    # 11 micro-batches per epoch: call 27 is in the middle of epoch 3
    crashed = _resume_trainer(tmp_path / "cut", crash_at=27)
    with pytest.raises(RuntimeError, match="simulated crash"):
        crashed.fit()
    assert sorted(p.name for p in (tmp_path / "cut" / "checkpoints").iterdir()) == ["epoch1.pt", "epoch2.pt"]
    # a fresh process: new model object (another init), new trainer, same experiment dir
    resumed = _resume_trainer(tmp_path / "cut", init_seed=1)
    summary_resumed = resumed.fit(resume=True)
    a, b = _params(full.model), _params(resumed.model)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    strip = [{k: v for k, v in h.items() if k != "time_s"} for h in summary_full["history"]]
    assert strip == [{k: v for k, v in h.items() if k != "time_s"} for h in summary_resumed["history"]]
    assert summary_full["best_epoch"] == summary_resumed["best_epoch"]
    assert (tmp_path / "full/best.safetensors").read_bytes() == (tmp_path / "cut/best.safetensors").read_bytes()
    assert json.loads((tmp_path / "full/best.json").read_text()) == json.loads((tmp_path / "cut/best.json").read_text())
    # only the newest keep_checkpoints=2 are kept; they load with weights_only
    ckpts = sorted((tmp_path / "cut" / "checkpoints").iterdir())
    assert [p.name for p in ckpts] == ["epoch3.pt", "epoch4.pt"]
    ck = torch.load(ckpts[-1], weights_only=True)
    assert ck["epoch"] == 4 and ck["global_step"] == 4 * 6 and len(ck["history"]) == 4
    # a finished run resumes to a no-op
    again = _resume_trainer(tmp_path / "cut", init_seed=2)
    assert again.fit()["history"] == summary_resumed["history"]
    assert all(torch.equal(a[k], _params(again.model)[k]) for k in a)


def _train_one_epoch(expdir, hidden=16, **over):
    cfg = {"epochs": 1, "batch_size": 8, "progress": False, **over}
    t = Trainer(make_model(hidden=hidden), Regression(24), Regression(8, seed=5), collate, mse_loss, None,
                TrainConfig.from_dict(cfg), expdir)
    return t


def test_unusable_checkpoint_fails_clearly_and_keeps_results(tmp_path):
    _train_one_epoch(tmp_path).fit()
    files = [tmp_path / "checkpoints" / "epoch1.pt", tmp_path / "best.safetensors", tmp_path / "best.json"]
    before = _digest(files)
    with pytest.raises(CheckpointError,
                       match=r"epoch1\.pt: checkpoint does not fit this model: 0\.weight: checkpoint \(16, 6\) vs model"):
        _train_one_epoch(tmp_path, hidden=8, epochs=2).fit()
    with pytest.raises(CheckpointError, match=r"different training settings \(lr: 0\.001 -> 0\.1\)"):
        _train_one_epoch(tmp_path, epochs=2, lr=0.1).fit()
    (tmp_path / "checkpoints" / "epoch2.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=r"epoch2\.pt: cannot read checkpoint"):
        _train_one_epoch(tmp_path, epochs=3).fit()
    assert _digest(files) == before
    assert (tmp_path / "checkpoints" / "epoch2.pt").read_bytes() == b"not a checkpoint"


# ------------------------------------------------------ accumulation / DDP --

def test_grad_accum_equals_the_larger_batch(tmp_path):
    big = train_once(tmp_path / "b8", batch_size=8, optimizer="adamw", lr=0.01)
    acc = train_once(tmp_path / "b4x2", batch_size=4, grad_accum=2, optimizer="adamw", lr=0.01)
    a, b = _params(big.model), _params(acc.model)
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    assert not torch.allclose(a["0.weight"], _params(make_model())["0.weight"], atol=1e-3)  # it did train


def test_ddp_two_gloo_ranks_equal_one_process(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(
        [str(HERE.parent), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(HERE / "_ddp_worker.py"), str(tmp_path / "ddp"), "4"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    r0 = torch.load(tmp_path / "ddp/rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "ddp/rank1.pt", weights_only=True)
    assert all(torch.equal(r0[k], r1[k]) for k in r0)  # ranks agree
    single = _params(train_once(tmp_path / "single", batch_size=8).model)
    for k in single:
        assert torch.allclose(single[k], r0[k], atol=1e-6), k
    # only rank 0 writes: one log line per epoch, one set of checkpoints
    log = (tmp_path / "ddp/exp/log/train.log").read_text()
    assert log.count("epoch 3/3 train_loss") == 1
    assert (tmp_path / "ddp/exp/best.json").is_file()
    for r in range(2):  # ranks with different batch counts: a clear error on each rank instead of a hang
        assert "ranks have different numbers of batches (between 7 and 8)" in (
            tmp_path / f"ddp/rank{r}_uneven.txt").read_text()


def test_custom_batch_sampler_is_asked_per_epoch(tmp_path):
    calls = []

    def by_length(ds, epoch, rank, world_size):
        calls.append((ds, epoch, rank, world_size))
        return [[i, i + 1] for i in range(0, len(ds), 2)][::-1]

    train = Regression(12)
    cfg = TrainConfig.from_dict({"epochs": 3, "progress": False})
    t = Trainer(make_model(), train, Regression(8, seed=5), collate, mse_loss, None, cfg, tmp_path,
                batch_sampler_fn=by_length)
    t.fit()
    assert [c[1:] for c in calls if c[1] > 0] == [(1, 0, 1), (2, 0, 1)] and all(c[0] is train for c in calls)
    assert t.fit()["history"][-1]["global_step"] == 3 * 6


# --------------------------------------------------------- selection / misc --

def test_best_epoch_is_chosen_on_dev_with_early_stopping(tmp_path):
    scores = iter([0.5, 0.7, 0.6, 0.65, 0.4, 0.9])
    dev = Regression(8, seed=5)
    seen = []

    def evaluate(model, loader):
        seen.append(loader.dataset)
        assert not model.training and not torch.is_grad_enabled()
        return {"score": next(scores)}

    cfg = TrainConfig.from_dict({"epochs": 6, "batch_size": 8, "select_metric": "score", "select_mode": "max",
                                 "patience": 2, "keep_checkpoints": None, "progress": False})
    t = Trainer(make_model(), Regression(24), dev, collate, mse_loss, evaluate, cfg, tmp_path)
    summary = t.fit()
    assert all(d is dev for d in seen)
    assert summary["best_epoch"] == 2 and summary["best_metrics"] == {"score": 0.7}
    assert summary["stopped_early"] and len(summary["history"]) == 4  # epochs 3, 4 without gain
    assert json.loads((tmp_path / "best.json").read_text())["epoch"] == 2
    epoch2 = torch.load(tmp_path / "checkpoints/epoch2.pt", weights_only=True)["model"]
    best = load_file(str(tmp_path / "best.safetensors"))
    assert all(torch.equal(best[k], epoch2[k]) for k in epoch2)
    assert not torch.equal(t.model.state_dict()["0.weight"], epoch2["0.weight"])  # model holds epoch 4
    t.load_best()
    assert all(torch.equal(t.model.state_dict()[k], epoch2[k]) for k in epoch2)
    log = (tmp_path / "log/train.log").read_text()
    for e in range(1, 5):
        assert f"epoch {e}/6 train_loss" in log
    assert "dev {score: 0.7000} lr 0.001 time" in log and "early stop" in log
    # the learning curve: every epoch's train loss and dev metric, kept beside the model and drawn
    hist = json.loads((tmp_path / "history.json").read_text())
    assert hist["best_epoch"] == 2 and [h["dev"]["score"] for h in hist["history"]] == [0.5, 0.7, 0.6, 0.65]
    assert all(h["train_loss"] > 0 for h in hist["history"])
    png = (tmp_path / "learning_curve.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    # resuming an early-stopped run does not train on
    assert Trainer(make_model(), Regression(24), dev, collate, mse_loss, evaluate, cfg, tmp_path).fit()[
        "epochs_done"] == 4


def test_dev_loss_selection_when_evaluate_gives_no_loss(tmp_path):
    t = Trainer(make_model(), Regression(24), Regression(8, seed=5), collate, mse_loss,
                lambda m, dl: {"n": len(dl.dataset)}, TrainConfig.from_dict({"epochs": 2, "progress": False}),
                tmp_path)
    summary = t.fit()
    t.load_best()
    with torch.no_grad():
        d = collate([Regression(8, seed=5)[i] for i in range(8)])
        expected = mse_loss(t.model, d).item()
    assert summary["best_metrics"]["n"] == 8
    assert summary["best_metrics"]["loss"] == pytest.approx(expected, rel=1e-5)


def test_frozen_parameters_stay_bit_identical(tmp_path):
    model = make_model()
    for p in model[0].parameters():
        p.requires_grad_(False)
    frozen = {k: v.clone() for k, v in model[0].state_dict().items()}
    head = model[3].weight.detach().clone()
    cfg = TrainConfig.from_dict({"epochs": 2, "batch_size": 4, "weight_decay": 0.1, "progress": False})
    Trainer(model, Regression(24), Regression(8, seed=5), collate, mse_loss, None, cfg, tmp_path).fit()
    assert all(torch.equal(frozen[k], model[0].state_dict()[k]) for k in frozen)
    assert not torch.equal(head, model[3].weight)


def test_amp_auto_on_cpu_trains_in_float32_and_bf16_on_request(tmp_path):
    dtypes = []

    def loss(model, batch):
        out = model(batch["x"])
        if model.training:  # the dev loss is computed in float32 on purpose
            dtypes.append(out.dtype)
        return torch.nn.functional.mse_loss(out.float(), batch["y"])

    for amp, expected in (("auto", torch.float32), ("bf16", torch.bfloat16)):
        dtypes.clear()
        cfg = TrainConfig.from_dict({"epochs": 4, "batch_size": 8, "lr": 0.02, "amp": amp, "progress": False})
        t = Trainer(make_model(), Regression(48), Regression(16, seed=5), collate, loss, None, cfg, tmp_path / amp)
        hist = t.fit()["history"]
        assert not t.scaler.is_enabled()
        assert set(dtypes) == {expected}
        assert hist[-1]["dev"]["loss"] < 0.7 * hist[0]["dev"]["loss"]  # it learns
    with pytest.raises(ConfigError, match="fp16 needs a CUDA device"):
        Trainer(make_model(), Regression(8), None, collate, loss, None,
                TrainConfig.from_dict({"amp": "fp16", "device": "cpu"}), tmp_path / "fp16")


def test_nonfinite_loss_stops_training_with_a_clear_error(tmp_path):
    def bad(model, batch):
        return mse_loss(model, batch) * float("nan")

    t = Trainer(make_model(), Regression(16), Regression(8), collate, bad, None,
                TrainConfig.from_dict({"epochs": 1, "batch_size": 8, "progress": False}), tmp_path)
    with pytest.raises(TrainError, match="non-finite in epoch 1"):
        t.fit()


# ------------------------------------------------------------ did not learn --

def _scored_run(tmp_path, scores, chance=None, metric="uar"):
    """A run whose dev ``metric`` follows ``scores`` (floats, or dicts of dev figures), one epoch each."""
    scores = iter(scores)

    def evaluate(model, loader):
        s = next(scores)
        return s if isinstance(s, dict) else {metric: s}

    cfg = TrainConfig.from_dict({"epochs": 3, "batch_size": 8, "select_metric": metric, "select_mode": "max",
                                 "progress": False})
    return Trainer(make_model(), Regression(16), Regression(8, seed=5), collate, mse_loss, evaluate, cfg, tmp_path,
                   **(chance_level(metric, 4) if chance is None else chance)).fit()


def test_a_metric_stuck_at_chance_is_reported_as_not_learned(tmp_path, caplog):
    with caplog.at_level("WARNING", logger="sertk.train"):
        summary = _scored_run(tmp_path, [0.25, 0.262, 0.24])  # UAR of 4 classes never above 0.25 + 0.02
    reason = "dev uar never above chance 0.25 (+0.02) in 3 epochs"
    assert summary["collapsed"] and summary["collapse_reason"] == reason
    best = json.loads((tmp_path / "best.json").read_text())
    assert best["collapsed"] is True and best["collapse_reason"] == reason and best["epoch"] == 2
    assert [r.levelname for r in caplog.records if "did not learn" in r.getMessage()] == ["WARNING"]
    assert f"{tmp_path}: training did not learn: {reason}" in caplog.text
    assert f"training did not learn: {reason}" in (tmp_path / "log/train.log").read_text()


def test_a_rising_metric_learned_and_constant_outputs_did_not(tmp_path, caplog):
    with caplog.at_level("WARNING", logger="sertk.train"):
        summary = _scored_run(tmp_path / "rising", [0.25, 0.31, 0.4])
    assert not summary["collapsed"] and summary["collapse_reason"] is None
    assert json.loads((tmp_path / "rising/best.json").read_text())["collapsed"] is False
    assert "did not learn" not in caplog.text
    # CCC far above chance, but the selected epoch gave every dev item the same output
    const = _scored_run(tmp_path / "const", [{"ccc_mean": 0.1, "constant_outputs": 0.0},
                                             {"ccc_mean": 0.6, "constant_outputs": 1.0},
                                             {"ccc_mean": 0.2, "constant_outputs": 0.0}], metric="ccc_mean")
    assert const["collapsed"] and const["collapse_reason"] == "dev outputs of the selected epoch 2 were constant"
    # no chance level known (or no dev set): no verdict
    assert not _scored_run(tmp_path / "wa", [0.0, 0.0, 0.0], chance={}, metric="wa")["collapsed"]


def test_chance_level_and_constant_outputs():
    assert chance_level("uar", 5) == {"chance_metric": 0.2, "chance_margin": 0.02}
    assert chance_level("ccc_teacher_mean") == {"chance_metric": 0.0, "chance_margin": 0.05}
    assert chance_level("loss") == {} and chance_level("uar") == {}
    assert constant_outputs(np.ones((5, 3))) == 1.0 and constant_outputs(np.zeros(4)) == 1.0
    assert constant_outputs(np.array([[0.1, 0.2], [0.1, 0.3]])) == 0.0 and constant_outputs(np.ones((1, 3))) == 0.0


def test_distill_refuses_a_teacher_that_did_not_learn(tmp_path):
    import yaml

    from sertk.common.protocol import Split
    from sertk.tasks import TaskContext, check_config
    from sertk.tasks import distill

    tdir = tmp_path / "exp/teacher/p"
    tdir.mkdir(parents=True)
    members = [{"name": "dawn", "spec": {"backbone": {}}, "collapsed": True,
                "collapse_reason": "dev ccc_mean never above chance 0 (+0.05) in 6 epochs"},
               {"name": "released", "spec": {"pretrained": "x"}}]
    (tdir / "teacher.yaml").write_text(yaml.safe_dump({"task": "teacher", "members": members, "collapsed": True}))
    cfg = {"task": "distill", "teacher": str(tmp_path / "exp/teacher"), "student": {"type": "wav2small", "channels": 8},
           "train": {"epochs": 1, "progress": False}}
    split = Split(corpus="toy", protocol="p", scheme="s", train="train", dev="dev", tests=["test"], label_map=None)
    ctx = TaskContext(tmp_path / "data", tmp_path / "dump", tmp_path / "exp/student/p", "w2s", 7)
    with pytest.raises(RuntimeError, match=rf"{tdir}: the teacher did not learn: dawn \(dev ccc_mean never above "
                                           r"chance 0 \(\+0\.05\) in 6 epochs\).*allow_collapsed_teacher: true"):
        distill.train(cfg, split, ctx)
    allowed = {**cfg, "distill": {"allow_collapsed_teacher": True}}
    check_config(allowed, "student")
    distill.check_teacher(allowed, tdir)  # allowed: a warning, no error
    with pytest.raises(ValueError, match="allow_collapsed_teacher must be true or false"):
        check_config({**cfg, "distill": {"allow_collapsed_teacher": "yes"}}, "student")
