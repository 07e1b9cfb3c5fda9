"""Offline stand-ins (--zoo): hub names in a config resolve to the zoo models whose cards list them."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from sertk.common import stand_ins
from sertk.common.stand_ins import StandInError, stand_in_table, substitute
from toy_recipe import toy_recipe

ROOT = Path(__file__).resolve().parents[1]


def _card(zoo: Path, name: str, names, digest: str = "d0") -> Path:
    d = zoo / name
    d.mkdir(parents=True, exist_ok=True)
    (d / "zoo.json").write_text(json.dumps({"name": name, "stands_in_for": names, "digest": digest}))
    return d


def test_first_listed_name_wins_and_equal_claims_are_refused(tmp_path):
    zoo = tmp_path / "zoo"
    _card(zoo, "whisper_tiny_en", ["openai/whisper-tiny.en", "facebook/wav2vec2-base", "microsoft/wavlm-large"])
    w2v = _card(zoo, "w2v", "facebook/wav2vec2-base")
    table = stand_in_table(zoo)
    assert table["facebook/wav2vec2-base"].model == "w2v" and table["facebook/wav2vec2-base"].path == str(w2v)
    assert table["microsoft/wavlm-large"].model == "whisper_tiny_en"
    _card(zoo, "w2v_copy", "facebook/wav2vec2-base")
    with pytest.raises(StandInError, match="both zoo/w2v and zoo/w2v_copy stand in for 'facebook/wav2vec2-base'"):
        stand_in_table(zoo)


def test_every_model_key_is_substituted_and_local_paths_are_kept(tmp_path, monkeypatch):
    zoo = tmp_path / "zoo"
    wh = _card(zoo, "whisper_tiny_en", ["openai/whisper-tiny.en", "microsoft/wavlm-large"])
    lm = _card(zoo, "gpt2", "gpt2")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "exp" / "classifier").mkdir(parents=True)
    cfg = {"model": {"encoder": {"name_or_path": "microsoft/wavlm-large", "layer": 2},
                     "lm": {"name_or_path": "gpt2", "mode": "full"}},
           "fms": {"a": {"encoder": {"name_or_path": "zoo/gpt2"}}},       # a local path: left alone
           "members": [{"name": "m", "pretrained": "openai/whisper-tiny.en"}],
           "eval": {"baseline": "exp/classifier"}}
    out, done = substitute(cfg, zoo, "conf/x.yaml")
    assert out["model"]["encoder"] == {"name_or_path": str(wh), "layer": 2}
    assert out["model"]["lm"]["name_or_path"] == str(lm) and out["members"][0]["pretrained"] == str(wh)
    assert out["fms"]["a"]["encoder"]["name_or_path"] == "zoo/gpt2" and out["eval"] == cfg["eval"]
    assert cfg["model"]["lm"]["name_or_path"] == "gpt2"  # the caller's config is not modified
    assert done["model.lm.name_or_path"] == {"configured": "gpt2", "zoo_model": "gpt2", "path": str(lm),
                                             "digest": "d0"}
    assert set(done) == {"model.encoder.name_or_path", "model.lm.name_or_path", "members[0].pretrained"}


def test_a_hub_name_nothing_stands_in_for_is_an_error_naming_the_key(tmp_path):
    zoo = tmp_path / "zoo"
    _card(zoo, "gpt2", "gpt2")
    cfg = {"model": {"lm": {"name_or_path": "gpt2"}, "encoder": {"name_or_path": "facebook/hubert-large-ll60k"}}}
    with pytest.raises(StandInError) as e:
        substitute(cfg, zoo, "conf/selm.yaml")
    msg = str(e.value)
    assert "conf/selm.yaml" in msg and "model.encoder.name_or_path: 'facebook/hubert-large-ll60k'" in msg
    assert "stand in for: gpt2" in msg
    with pytest.raises(StandInError, match="does not exist"):
        substitute(cfg, tmp_path / "nowhere", "conf/selm.yaml")


def test_without_a_zoo_nothing_changes(monkeypatch):
    monkeypatch.delenv(stand_ins.ENV, raising=False)
    cfg = {"model": {"lm": {"name_or_path": "Qwen/Qwen2.5-0.5B"}}}
    assert stand_ins.apply_from_env(cfg, "conf/icl.yaml") is cfg


# ---------------------------------------------------------------- a run, end to end
def _tiny_wav2vec2(out: Path) -> None:
    from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2Model

    cfg = Wav2Vec2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                         conv_dim=[16, 16], conv_kernel=[10, 3], conv_stride=[5, 2], num_conv_pos_embeddings=16,
                         num_conv_pos_embedding_groups=4, feat_extract_norm="layer", do_stable_layer_norm=True)
    Wav2Vec2Model(cfg).save_pretrained(out)
    Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, padding_value=0.0, do_normalize=True,
                             return_attention_mask=True).save_pretrained(out)


def _run(module: str, recipe: Path, cfg: str, zoo: Path | None):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    env.pop(stand_ins.ENV, None)
    if zoo is not None:
        env[stand_ins.ENV] = str(zoo)
    return subprocess.run([sys.executable, "-m", f"sertk.bin.{module}", "--config", cfg, "--protocols",
                           "protocols.yaml", "--data", "data", "--dump", "dump", "--exp", f"exp/{Path(cfg).stem}",
                           "--stage", "3"], cwd=recipe, env=env, capture_output=True, text=True, timeout=600)


def test_a_run_loads_the_stand_in_and_records_it(tmp_path):
    recipe = toy_recipe(tmp_path / "recipe", ["low", "high"])
    zoo = tmp_path / "zoo"
    model = _card(zoo, "w2v_tiny", ["facebook/wav2vec2-base"], digest="abc123")
    _tiny_wav2vec2(model)
    probe = {"task": "probe", "model": {"encoder": {"name_or_path": "facebook/wav2vec2-base", "layer": 1},
                                        "pooling": "mean+std", "C": 1.0},
             "data": {"max_duration": 1.0}, "eval": {"bootstrap": 20}}
    (recipe / "probe.yaml").write_text(yaml.safe_dump(probe))
    for module in ("train", "evaluate"):
        proc = _run(module, recipe, "probe.yaml", zoo)
        assert proc.returncode == 0, proc.stderr[-3000:]
    log = (recipe / "exp" / "probe" / "log" / "train.log").read_text()
    assert log.count("stand-in: model.encoder.name_or_path = facebook/wav2vec2-base -> zoo/w2v_tiny") == 1
    assert yaml.safe_load((recipe / "exp" / "probe" / "config.yaml").read_text())[
        "model"]["encoder"]["name_or_path"] == str(model.resolve())
    res = json.loads(next((recipe / "exp" / "probe").rglob("results.json")).read_text())
    assert res["stand_ins"] == {"model.encoder.name_or_path": {
        "configured": "facebook/wav2vec2-base", "zoo_model": "w2v_tiny", "path": str(model.resolve()),
        "digest": "abc123"}}

    # a hub name no card lists: refused before anything trains, naming the key
    bad = {**probe, "model": {**probe["model"], "encoder": {"name_or_path": "microsoft/wavlm-large", "layer": 1}}}
    (recipe / "bad.yaml").write_text(yaml.safe_dump(bad))
    proc = _run("train", recipe, "bad.yaml", zoo)
    assert proc.returncode != 0
    assert "bad.yaml: no zoo model" in proc.stderr and "model.encoder.name_or_path: 'microsoft/wavlm-large'" \
        in proc.stderr
    assert not (recipe / "exp" / "bad").exists()
