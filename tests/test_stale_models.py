"""A changed run never resumes: it is moved aside and trained fresh; the same run resumes exactly.

Issue 14, item 1: ``sertk train`` records each split's run digest (model config,
data, code) in ``<expdir>/run_digest.json`` and in every checkpoint. Checked
with the speech classifier on a tiny local encoder (a neural config, resumed
by the Trainer) and with a task that does not use the Trainer.
"""
import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from sertk.bin import evaluate as evaluate_cli
from sertk.bin import train as train_cli
from sertk.common.fileio import is_moved_aside, listing_digest, move_aside, write_text_atomic
from sertk.data.audio import write_audio
from sertk.tasks import TASKS
from sertk.train.trainer import Trainer, TrainConfig, run_digest

from _ddp_worker import Regression, collate, make_model, mse_loss
from zoo_fixtures import without_zoo

CONF = Path(__file__).resolve().parent.parent / "egs/mini_emo/conf"
LABELS = ["low", "high"]


pytestmark = pytest.mark.usefixtures("restore_logging")


@pytest.fixture
def recipe(tmp_path):
    """Low and high tones (8 train, 4 dev, 4 test utterances of 0.4 s) and a one-protocol protocols.yaml."""
    rng = np.random.default_rng(0)
    data = tmp_path / "data"
    for name, n in (("train", 8), ("dev", 4), ("test", 4)):
        d = data / name
        d.mkdir(parents=True)
        scp, spk, emo = [], [], []
        for i in range(n):
            u, label = f"{name}{i:02d}", LABELS[i % 2]
            t = np.arange(6400) / 16000
            f = (200 if label == "low" else 1200) * rng.uniform(0.9, 1.1)
            write_audio(data / f"{u}.wav", (0.3 * np.sin(2 * np.pi * f * t)).astype(np.float32), 16000)
            scp.append(f"{u} {data / (u + '.wav')}\n")
            spk.append(f"{u} s{i % 2}\n")
            emo.append(f"{u} {label}\n")
        for fname, lines in (("wav.scp", scp), ("utt2spk", spk), ("utt2emo", emo)):
            (d / fname).write_text("".join(lines))
    (tmp_path / "labels.yaml").write_text(yaml.safe_dump({"labels": LABELS}))
    (tmp_path / "protocols.yaml").write_text(yaml.safe_dump({
        "corpus": "toy", "label_map": "labels.yaml",
        "protocols": {"p": {"scheme": "speaker-independent", "train": "train", "dev": "dev", "test": ["test"]}}}))
    return tmp_path


def _config(path: Path, **train) -> Path:
    """mini_emo's classifier on a random-init tiny encoder, shrunk to seconds per epoch."""
    cfg = without_zoo(yaml.safe_load((CONF / "classifier.yaml").read_text()))
    cfg.pop("protocols", None)
    cfg["model"]["head_hidden"] = 8
    cfg["data"] = {"max_duration": 1.0, "buckets": 1}
    cfg["train"] = {**cfg["train"], "batch_size": 4, "warmup_steps": 0, "progress": False, **train}
    cfg["eval"] = {"batch_size": 4, "bootstrap": 0}
    path.write_text(yaml.safe_dump(cfg))
    return path


def _train(recipe: Path, exp: Path, *extra: str, **train) -> None:
    cfg = _config(recipe / f"{exp.name}.yaml", **train)
    assert train_cli.main(["--config", str(cfg), "--protocols", str(recipe / "protocols.yaml"),
                           "--data", str(recipe / "data"), "--dump", str(recipe / "dump"), "--exp", str(exp),
                           *extra]) == 0


def _epoch(split_dir: Path) -> int:
    """Epochs the newest checkpoint of a split's run holds."""
    newest = max((split_dir / "checkpoints").glob("epoch*.pt"), key=lambda p: int(p.stem[5:]))
    return torch.load(newest, weights_only=True)["epoch"]


def _log(exp: Path) -> str:
    return (exp / "log" / "train.log").read_text()


def test_changed_settings_data_or_fresh_retrain_and_move_the_old_run_aside(recipe):
    exp = recipe / "exp"
    _train(recipe, exp, epochs=4)
    assert _epoch(exp / "p") == 4
    assert json.loads((exp / "p" / "run_digest.json").read_text())["status"] == "finished"

    # fewer epochs: a 2-epoch model, not the 4-epoch one; the 4-epoch run is kept beside it
    _train(recipe, exp, epochs=2)
    assert _epoch(exp / "p") == 2 and _epoch(exp / "p.old-1") == 4
    assert (exp / "p.old-1" / "best.safetensors").is_file()
    assert "moved aside to" in _log(exp) and "config.train.epochs: 4 -> 2" in _log(exp)
    two_epochs = (exp / "p" / "best.safetensors").read_bytes()

    # another learning rate: retrained (the trainer would refuse to resume it), not an error
    _train(recipe, exp, epochs=2, lr=1e-3)
    assert _epoch(exp / "p") == 2 and (exp / "p.old-2").is_dir()
    base_lr = yaml.safe_load((CONF / "classifier.yaml").read_text())["train"]["lr"]
    assert f"config.train.lr: {base_lr} -> 0.001" in _log(exp)

    # a changed training set
    train = recipe / "data" / "train"
    for f in ("wav.scp", "utt2spk", "utt2emo"):
        lines = (train / f).read_text().splitlines(keepends=True)
        (train / f).write_text("".join(lines[:-2]))
    _train(recipe, exp, epochs=2, lr=1e-3)
    assert (exp / "p.old-3").is_dir() and "data.train changed" in _log(exp)

    # the same settings: nothing moves, nothing retrains
    before = (exp / "p" / "best.safetensors").read_bytes()
    _train(recipe, exp, epochs=2, lr=1e-3)
    assert not (exp / "p.old-4").exists() and (exp / "p" / "best.safetensors").read_bytes() == before
    assert "nothing new to train" in _log(exp)

    # --fresh (ser.sh --redo true): retrained from scratch, the old run kept; same seed, same weights
    _train(recipe, exp, "--fresh", epochs=2, lr=1e-3)
    assert (exp / "p.old-4" / "best.safetensors").read_bytes() == before
    assert (exp / "p" / "best.safetensors").read_bytes() == before
    assert "--fresh asks for a new run" in _log(exp)
    assert two_epochs != before and all(is_moved_aside(exp / f"p.old-{n}" / "best.json") for n in range(1, 5))

    # evaluating under other settings than the model was trained with is refused, naming what differs
    cfg = _config(recipe / "eval.yaml", epochs=3, lr=1e-3)
    with pytest.raises(SystemExit, match=r"exp/p: the model there was trained with other settings "
                                         r"\(config\.train\.epochs: 2 -> 3\)"):
        evaluate_cli.main(["--config", str(cfg), "--protocols", str(recipe / "protocols.yaml"),
                           "--data", str(recipe / "data"), "--dump", str(recipe / "dump"), "--exp", str(exp)])


def test_interrupted_identical_run_resumes_bit_exact(recipe, monkeypatch):
    _train(recipe, recipe / "full", epochs=2)
    save = Trainer._save_checkpoint

    def crash_after_first_epoch(self, state):
        save(self, state)
        if state["epoch"] == 1:
            raise RuntimeError("simulated crash")

    monkeypatch.setattr(Trainer, "_save_checkpoint", crash_after_first_epoch)
    with pytest.raises(RuntimeError, match="simulated crash"):
        _train(recipe, recipe / "cut", epochs=2)
    monkeypatch.undo()
    cut = recipe / "cut"
    assert json.loads((cut / "p" / "run_digest.json").read_text())["status"] == "training"
    assert _epoch(cut / "p") == 1
    _train(recipe, cut, epochs=2)
    assert not list(cut.glob("p.old-*")) and "resuming the interrupted run" in _log(cut)
    assert (recipe / "full/p/best.safetensors").read_bytes() == (cut / "p/best.safetensors").read_bytes()
    assert json.loads((recipe / "full/p/best.json").read_text()) == json.loads((cut / "p/best.json").read_text())


def _writing_task(monkeypatch):
    """A task without the Trainer (like egemaps_lr): writes its config's model section as its 'model'."""
    mod = types.ModuleType("writing_task")

    def train(cfg, split, ctx):
        write_text_atomic(ctx.expdir / "model.txt", json.dumps(cfg["model"]))

    mod.train = train
    mod.evaluate = lambda cfg, split, ctx: []
    monkeypatch.setitem(sys.modules, "writing_task", mod)
    monkeypatch.setitem(TASKS, "writing", "writing_task")


def test_a_task_without_the_trainer_is_moved_aside_too(recipe, monkeypatch):
    _writing_task(monkeypatch)
    exp, cfg = recipe / "exp", recipe / "w.yaml"
    args = ["--config", str(cfg), "--protocols", str(recipe / "protocols.yaml"), "--data", str(recipe / "data"),
            "--exp", str(exp)]
    cfg.write_text("task: writing\nmodel: {C: 1}\neval: {bootstrap: 0}\n")
    assert train_cli.main(args) == 0
    cfg.write_text("task: writing\nmodel: {C: 1}\neval: {bootstrap: 100}\n")  # evaluation only: same run
    assert train_cli.main(args) == 0 and not (exp / "p.old-1").exists()
    cfg.write_text("task: writing\nmodel: {C: 2}\neval: {bootstrap: 100}\n")
    assert train_cli.main(args) == 0
    assert json.loads((exp / "p.old-1" / "model.txt").read_text()) == {"C": 1}
    assert json.loads((exp / "p" / "model.txt").read_text()) == {"C": 2}
    assert "config.model.C: 1 -> 2" in _log(exp)


def test_trainer_resumes_only_its_own_run_digest(tmp_path):
    def trainer(epochs):
        return Trainer(make_model(), Regression(16), Regression(8, seed=5), collate, mse_loss, None,
                       TrainConfig.from_dict({"epochs": epochs, "batch_size": 8, "progress": False}), tmp_path / "t")

    with run_digest("a" * 64):
        trainer(1).fit()
        assert trainer(2).fit()["epochs_done"] == 2  # same run: resumed from epoch 1
    assert torch.load(tmp_path / "t/checkpoints/epoch2.pt", weights_only=True)["run_digest"] == "a" * 64
    with run_digest("b" * 64):  # another run: the checkpoints are moved aside, not resumed or refused
        summary = trainer(1).fit()
    assert summary["epochs_done"] == 1 and len(summary["history"]) == 1
    assert (tmp_path / "t.old-1/checkpoints/epoch2.pt").is_file()


def test_move_aside_numbers_and_listing_digest(tmp_path):
    for n in (1, 2):
        (tmp_path / "run").mkdir()
        assert move_aside(tmp_path / "run") == tmp_path / f"run.old-{n}"
    root = tmp_path / "corpus"
    (root / "a").mkdir(parents=True)
    (root / "a" / "x.wav").write_bytes(b"12")
    (root / ".DS_Store").write_bytes(b"junk")
    first = listing_digest([root])[str(root)]
    assert first["files"] == 1 and first["bytes"] == 2
    (root / "a" / "y.wav").write_bytes(b"3")
    assert listing_digest([root])[str(root)]["digest"] != first["digest"]
    assert listing_digest([tmp_path / "none"])[str(tmp_path / "none")]["digest"] == "missing"


def test_a_model_trained_on_another_configs_model_retrains_when_that_one_does(recipe, monkeypatch):
    _writing_task(monkeypatch)
    common = ["--protocols", str(recipe / "protocols.yaml"), "--data", str(recipe / "data")]
    teacher, student = recipe / "teacher.yaml", recipe / "student.yaml"
    student.write_text(f"task: writing\nmodel: {{teacher: {recipe / 'exp/teacher'}}}\n")
    for c in (1, 1, 2):
        teacher.write_text(f"task: writing\nmodel: {{C: {c}}}\n")
        assert train_cli.main(["--config", str(teacher), *common, "--exp", str(recipe / "exp/teacher")]) == 0
        assert train_cli.main(["--config", str(student), *common, "--exp", str(recipe / "exp/student")]) == 0
    # the teacher's second (identical) run left the student alone; its retraining did not
    assert sorted(p.name for p in (recipe / "exp/student").glob("p*")) == ["p", "p.old-1"]
    assert f"refs.{recipe / 'exp/teacher'} changed" in _log(recipe / "exp/student")


def test_new_code_retrains_and_evaluating_an_older_codes_model_only_warns(recipe, monkeypatch, caplog):
    import sertk.tasks.run_digest as runner

    _writing_task(monkeypatch)
    cfg = recipe / "w.yaml"
    cfg.write_text("task: writing\nmodel: {C: 1}\n")
    args = ["--config", str(cfg), "--protocols", str(recipe / "protocols.yaml"), "--data", str(recipe / "data"),
            "--exp", str(recipe / "exp")]
    assert train_cli.main(args) == 0
    version = runner.code_version
    monkeypatch.setattr(runner, "code_version", lambda task: {**version(task), "task_source": "f" * 64})
    assert evaluate_cli.main(args) == 0  # the model as it is, with a warning
    assert "trained by other code (code.task_source changed)" in caplog.text
    assert train_cli.main(args) == 0
    assert (recipe / "exp" / "p.old-1").is_dir() and "code.task_source changed" in _log(recipe / "exp")
