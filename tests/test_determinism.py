"""Same config, same seed, same weights: ``sertk train`` seeds every task's model construction."""
from pathlib import Path

import pytest
import yaml

from sertk.bin import train as train_cli

from toy_recipe import toy_recipe
from zoo_fixtures import without_zoo

CONF = Path(__file__).resolve().parent.parent / "egs/mini_emo/conf"
LABELS = ["neutral", "happy", "angry", "sad"]


pytestmark = pytest.mark.usefixtures("restore_logging")


@pytest.fixture(scope="module")
def recipe(tmp_path_factory):
    """test_export's tone corpus, with a class per pitch quartile, and a one-protocol protocols.yaml."""
    return toy_recipe(tmp_path_factory.mktemp("toy"), LABELS)


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
