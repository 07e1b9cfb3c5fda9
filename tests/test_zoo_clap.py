"""Zoo CLAPs (stage 0): ClapModel + ClapProcessor saved as hub checkpoints are, loaded by path with
identical outputs, differing as the recipe says (tower size, training data, text side)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml
from transformers import AutoConfig, AutoModel, ClapModel, ClapProcessor

from sertk.models.clap_zeroshot import ClapFrontEnd, ClapZeroShot
from sertk.zoo import build_zoo, check_zoo_config
from sertk.zoo.clap import caption_clauses, key_clause
from zoo_fixtures import RECIPE_ZOO, small_pool, tiny_zoo

CLAPS = ("clap_s", "clap_l", "clap_ms")


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    root = tmp_path_factory.mktemp("zoo_clap")
    small_pool(root, 4, 4)
    cfg = tiny_zoo()
    cfg["models"] = {k: v for k, v in cfg["models"].items() if k in CLAPS}
    built = build_zoo(cfg, root / "data/pretrain", root / "zoo")
    return cfg, root, built


def test_recipe_claps_are_valid_and_differ_as_the_papers_three_alms():
    cfg = yaml.safe_load(RECIPE_ZOO.read_text())
    check_zoo_config(cfg)
    m = {k: cfg["models"][k] for k in CLAPS}
    assert all(e["trainer"] == "clap" for e in m.values())
    assert len({e["stands_in_for"] for e in m.values()}) == 3
    audio = {k: e["config"]["audio"] for k, e in m.items()}
    size = {k: a["hidden_size"] * sum(a["depths"]) for k, a in audio.items()}
    assert size["clap_l"] > size["clap_s"]  # a larger audio tower
    # other training data: the studio half of the pool vs the whole pool
    assert m["clap_s"]["data"]["domains"] == m["clap_l"]["data"]["domains"] == ["studio"]
    assert not m["clap_ms"]["data"].get("domains")
    assert m["clap_ms"]["config"]["text"] != m["clap_l"]["config"]["text"]  # another text side
    bad = yaml.safe_load(RECIPE_ZOO.read_text())
    bad["models"]["clap_s"]["features"]["feature_size"] = 48
    with pytest.raises(ValueError, match="feature_size must equal"):
        check_zoo_config(bad)


def test_each_clap_is_a_clap_model_with_its_processor(zoo):
    cfg, root, built = zoo
    assert set(built) == set(CLAPS)
    for name in CLAPS:
        d = root / "zoo" / name
        card = json.loads((d / "zoo.json").read_text())
        assert card["stands_in_for"] == cfg["models"][name]["stands_in_for"] and card["class"] == "ClapModel"
        assert json.loads((d / "config.json").read_text())["model_type"] == "clap"
        assert type(AutoModel.from_pretrained(d)) is type(AutoModel.from_config(AutoConfig.for_model("clap")))
        proc = ClapProcessor.from_pretrained(d)
        assert proc.feature_extractor.sampling_rate == 16000 and proc.tokenizer.pad_token_id == 1
        assert "zs_uar" in card["dev"] and 0.0 <= card["dev"]["zs_uar"] <= 1.0
    assert "(studio)" in json.loads((root / "zoo/clap_s/zoo.json").read_text())["training_data"]
    assert "all domains" in json.loads((root / "zoo/clap_ms/zoo.json").read_text())["training_data"]


def test_claps_round_trip_save_pretrained_with_identical_outputs(zoo, tmp_path):
    _, root, _ = zoo
    rng = np.random.default_rng(0)
    wavs = [(0.1 * rng.standard_normal(n)).astype(np.float32) for n in (9000, 16000, 30000)]
    texts = ["the speaker sounds angry", "a sad voice"]
    for name in CLAPS:
        model, proc = ClapModel.from_pretrained(root / "zoo" / name).eval(), ClapProcessor.from_pretrained(
            root / "zoo" / name)
        model.save_pretrained(tmp_path / name)
        proc.save_pretrained(tmp_path / name)
        again = ClapModel.from_pretrained(tmp_path / name).eval()
        feats, _ = ClapFrontEnd(proc.feature_extractor)(wavs)
        enc = proc.tokenizer(texts, padding=True, return_tensors="pt")
        with torch.no_grad():
            for m in (again,):
                assert torch.equal(model.get_audio_features(input_features=feats).pooler_output,
                                   m.get_audio_features(input_features=feats).pooler_output)
                assert torch.equal(model.get_text_features(**enc).pooler_output,
                                   m.get_text_features(**enc).pooler_output)
        assert ClapProcessor.from_pretrained(tmp_path / name).tokenizer(texts)["input_ids"] == proc.tokenizer(
            texts)["input_ids"]
        # the scorer loads a zoo path exactly as a hub name
        zs = ClapZeroShot(str(root / "zoo" / name), device="cpu")
        with torch.no_grad():
            want = model.get_text_features(**enc).pooler_output.numpy()
        np.testing.assert_allclose(zs.text_embeddings(texts), want,
                                   atol=1e-6)


def test_caption_clauses_and_the_key_clause_come_from_the_text_alone():
    cap = ("A female speaker with a low-pitched, clear voice talks quickly and loudly, with lively intonation, "
           "heard over a telephone line; she sounds cheerful.")
    parts = caption_clauses(cap)
    assert "she sounds cheerful" in parts and all(len(p.split()) >= 2 for p in parts)
    assert key_clause(cap, "sounds") == "she sounds cheerful"
    assert key_clause("a quiet studio recording", "sounds") is None
