"""Every config under egs/ must load and dry-run: a broken config fails CI, not a user's run."""
from pathlib import Path

import pytest
import torch

from sertk.common.config import ConfigError, load_config, load_yaml
from sertk.common.protocol import load_protocols
from sertk.tasks import check_config

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = sorted(ROOT.glob("egs/*/conf/**/*.yaml"))


def test_there_are_configs():
    assert any(p.name == "protocols.yaml" for p in CONFIGS)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(ROOT)))
def test_config_dry_run(path):
    torch.manual_seed(0)
    cfg = load_yaml(path)
    if path.name == "protocols.yaml" or path.name.startswith("protocols"):
        splits = load_protocols(path)
        assert splits and all(s.tests for s in splits)
        for s in splits:
            if s.label_map:
                assert Path(s.label_map).is_file(), f"{path}: label map {s.label_map} missing"
    elif "task" in cfg:
        check_config(cfg, str(path))


def test_overrides_are_typed_and_dotted(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("train:\n  lr: 0.1\n  epochs: 3\n")
    cfg = load_config(p, ["train.lr=1e-4", "train.layers=[1,2]", "model.encoder.freeze=true"])
    assert cfg["train"] == {"lr": 1e-4, "epochs": 3, "layers": [1, 2]}
    assert cfg["model"]["encoder"]["freeze"] is True
    with pytest.raises(ConfigError, match="key.sub=value"):
        load_config(p, ["train.lr"])
    with pytest.raises(ConfigError, match="not a mapping"):
        load_config(p, ["train.lr.x=1"])


def test_unknown_config_key_is_named(tmp_path):
    cfg = load_yaml(ROOT / "egs/mini_emo/conf/egemaps_lr.yaml")
    cfg["model"]["Cee"] = 2
    with pytest.raises(ValueError, match="Cee"):
        check_config(cfg, "x.yaml")


def test_teacher_configs_reject_unknown_train_keys():
    """The MSP-Podcast teacher ensemble once passed the dry-run with a misspelt train key."""
    cfg = load_yaml(ROOT / "egs/msp_podcast/conf/teacher_ensemble.yaml")
    check_config(cfg, "teacher_ensemble")
    with pytest.raises(ConfigError, match="learning_rate"):
        check_config({**cfg, "train": {**(cfg.get("train") or {}), "learning_rate": 1e-4}}, "teacher_ensemble")
