"""Same config, same seed, same weights: ``sertk train`` seeds every task's model construction."""
import logging
from pathlib import Path

import numpy as np
import pytest
import yaml

from sertk.bin import train as train_cli

from test_export import _toy_corpus
from zoo_fixtures import without_zoo

CONF = Path(__file__).resolve().parent.parent / "egs/mini_emo/conf"
LABELS = ["neutral", "happy", "angry", "sad"]


@pytest.fixture(autouse=True)
def _restore_logging():
    """The entry point installs root log handlers (stderr + the run's log file); take them away again."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for h in root.handlers[:]:
        if h not in handlers:
            root.removeHandler(h)
            h.close()
    root.setLevel(level)


@pytest.fixture(scope="module")
def recipe(tmp_path_factory):
    """test_export's tone corpus, with a class per pitch quartile, and a one-protocol protocols.yaml."""
    root = tmp_path_factory.mktemp("toy")
    _toy_corpus(root / "data", np.random.default_rng(0))
    for d in (root / "data" / s for s in ("train", "dev", "test")):
        rows = [line.split() for line in (d / "utt2avd").read_text().splitlines()]
        (d / "utt2emo").write_text("".join(f"{u} {LABELS[min(3, int(float(a) * 4))]}\n" for u, a, *_ in rows))
    (root / "labels.yaml").write_text(yaml.safe_dump({"labels": LABELS}))
    (root / "protocols.yaml").write_text(yaml.safe_dump({
        "corpus": "toy", "label_map": "labels.yaml",
        "protocols": {"p": {"scheme": "speaker-independent", "train": "train", "dev": "dev", "test": ["test"]}}}))
    return root


def _train(recipe: Path, conf: str, exp: Path) -> None:
    cfg = without_zoo(yaml.safe_load((CONF / conf).read_text()))  # a random-init encoder: seeding shows
    cfg.pop("protocols", None)
    cfg["train"] = {**cfg["train"], "epochs": 1, "warmup_steps": 0, "progress": False}
    path = exp.parent / f"{exp.name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert train_cli.main(["--config", str(path), "--protocols", str(recipe / "protocols.yaml"),
                           "--data", str(recipe / "data"), "--dump", str(recipe / "dump"), "--exp", str(exp)]) == 0


@pytest.mark.parametrize("conf, weights", [("teacher.yaml", "p/dawn/best.safetensors"),
                                           ("classifier.yaml", "p/best.safetensors")])
def test_same_config_and_seed_give_identical_weights(recipe, tmp_path, conf, weights):
    # the first run leaves the global RNG somewhere else: the second must not depend on it
    _train(recipe, conf, tmp_path / "exp1")
    _train(recipe, conf, tmp_path / "exp2")
    assert (tmp_path / "exp1" / weights).read_bytes() == (tmp_path / "exp2" / weights).read_bytes()
