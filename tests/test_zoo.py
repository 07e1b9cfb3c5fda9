"""The mini_emo zoo (stage 0): models saved in the real transformers classes, loaded by the
same from_pretrained code as hub names, rebuilt only when something that defines them changes."""
import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers
import yaml
from transformers import AutoConfig, AutoFeatureExtractor, AutoModel, AutoModelForCausalLM, AutoTokenizer

from sertk.common.config import load_config
from sertk.common.stand_ins import card_names
from sertk.data.synth import generate_corpus
from sertk.models.dawn import RELEASED, DawnRegressor, load_released
from sertk.models.encoder import SpeechEncoder
from sertk.models.selm import build_lm
from sertk.models.text_tokenizer import HFTokenizer
from sertk.zoo import build_zoo, check_zoo_config, model_digest
from sertk.zoo.pool import Pool
from sertk.zoo.speech_encoder import frame_geometry, frame_targets
from zoo_fixtures import RECIPE_ZOO, tiny_zoo

ROOT = Path(__file__).resolve().parent.parent
# model_type and class ("architectures") of the hub checkpoints the zoo stands in for, as their config.json says
HUB = {"facebook/wav2vec2-base": ("wav2vec2", "Wav2Vec2Model"), "microsoft/wavlm-base-plus": ("wavlm", "WavLMModel"),
       "gpt2": ("gpt2", "GPT2LMHeadModel"),
       "laion/clap-htsat-unfused": ("clap", "ClapModel"), "laion/larger_clap_general": ("clap", "ClapModel"),
       "laion/larger_clap_music_and_speech": ("clap", "ClapModel"),
       "Qwen/Qwen2-Audio-7B-Instruct": ("qwen2_audio", "Qwen2AudioForConditionalGeneration"),
       "openai/whisper-tiny.en": ("whisper", "WhisperForConditionalGeneration")}


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    root = tmp_path_factory.mktemp("zoo")
    synth = load_config(ROOT / "egs/mini_emo/conf/synth.yaml", ["pretrain.speakers=4", "pretrain.utts_per_speaker=4"])
    generate_corpus(synth, root / "audio", root / "data", nj=1, part="pretrain")
    cfg = tiny_zoo()
    built = build_zoo(cfg, root / "data/pretrain", root / "zoo")
    return cfg, root, built


def test_recipe_zoo_config_is_valid():
    check_zoo_config(yaml.safe_load(RECIPE_ZOO.read_text()))
    with pytest.raises(ValueError, match="models.w2v: objective: unknown key"):
        bad = yaml.safe_load(RECIPE_ZOO.read_text())
        bad["models"]["w2v"]["objective"]["contrastive"] = {}
        check_zoo_config(bad)


def test_each_model_is_in_the_class_of_the_hub_checkpoint_it_stands_in_for(zoo):
    cfg, root, built = zoo
    assert set(built) == set(cfg["models"])
    for name, meta in built.items():
        d = root / "zoo" / name
        card = json.loads((d / "zoo.json").read_text())
        assert card["stands_in_for"] == cfg["models"][name]["stands_in_for"]
        primary = card_names(card)[0]
        readme = (d / "README.md").read_text()
        assert primary in readme and f"{card['params']:,}" in readme
        assert all(n in readme for n in card_names(card)[1:])  # the hub names it takes the place of offline
        if primary == RELEASED:  # the released A/V/D teacher is sertk's Dawn architecture, loaded as released
            assert type(load_released(d)).__name__ == card["class"] == "DawnRegressor"
            continue
        hub_type, hub_class = HUB[primary]
        assert json.loads((d / "config.json").read_text())["model_type"] == hub_type
        # the class the hub checkpoint loads in is the class the zoo path loads in, by the same call
        assert type(getattr(transformers, hub_class).from_pretrained(d)).__name__ == hub_class == card["class"]
        assert card["train_seconds"] >= 0
        if card.get("real"):  # imported, not trained: no pool; the card names where the weights come from
            assert card["pool"] is None and card["source"]["model_bin_sha256"] in readme
        else:
            assert card["pool"]["speakers"] == 4


def test_speech_encoders_round_trip_with_identical_outputs(zoo, tmp_path):
    _, root, _ = zoo
    wav = torch.from_numpy(np.random.default_rng(0).standard_normal((2, 16000)).astype(np.float32))
    for name in ("w2v", "wavlm"):
        m = AutoModel.from_pretrained(root / "zoo" / name).eval()
        assert AutoFeatureExtractor.from_pretrained(root / "zoo" / name).sampling_rate == 16000
        m.save_pretrained(tmp_path / name)
        again = AutoModel.from_pretrained(tmp_path / name).eval()
        with torch.no_grad():
            assert torch.equal(m(wav).last_hidden_state, again(wav).last_hidden_state)


def test_text_lm_and_tokenizer_round_trip(zoo, tmp_path):
    _, root, _ = zoo
    tok = AutoTokenizer.from_pretrained(root / "zoo/gpt2")
    assert type(tok).__name__ == "GPT2Tokenizer"
    text = "say the emotion. emotion: angry"
    ids = tok.encode(text)
    assert tok.decode(ids) == text and tok.eos_token_id is not None
    lm = AutoModelForCausalLM.from_pretrained(root / "zoo/gpt2").eval()
    lm.save_pretrained(tmp_path / "lm")
    tok.save_pretrained(tmp_path / "lm")
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "lm").eval()
    x = torch.tensor([ids])
    with torch.no_grad():
        assert torch.equal(lm(x).logits, again(x).logits)
    assert AutoTokenizer.from_pretrained(tmp_path / "lm").encode(text) == ids


def test_sertk_model_code_loads_zoo_paths_as_it_loads_hub_names(zoo):
    """SELM, the classifier/probe encoder and the Dawn teacher take `name_or_path: zoo/<name>`."""
    _, root, _ = zoo
    enc = SpeechEncoder({"name_or_path": str(root / "zoo/w2v"), "layer": 1, "freeze": True})
    assert type(enc.model).__name__ == "Wav2Vec2Model" and enc.normalize is True
    feats, n = enc(torch.zeros(1, 16000).uniform_(-0.1, 0.1), torch.tensor([16000]))
    assert feats.shape[-1] == 32 and int(n[0]) == feats.shape[1]
    dawn = DawnRegressor.from_spec({"name_or_path": str(root / "zoo/wavlm")})
    assert type(dawn.wav2vec2).__name__ == "WavLMModel"
    tok = HFTokenizer(str(root / "zoo/gpt2"))
    lm = build_lm({"name_or_path": str(root / "zoo/gpt2"), "mode": "frozen"}, tok)
    assert type(lm).__name__ == "GPT2LMHeadModel" and lm.config.vocab_size == tok.vocab_size


def test_unchanged_zoo_is_skipped_and_a_changed_entry_rebuilds_only_that_model(zoo):
    cfg, root, _ = zoo
    stamp = {n: (root / "zoo" / n / "zoo.json").stat().st_mtime_ns for n in cfg["models"]}
    assert build_zoo(cfg, root / "data/pretrain", root / "zoo") == {}
    changed = copy.deepcopy(cfg)
    changed["models"]["gpt2"]["train"]["lr"] = 1e-3
    assert set(build_zoo(changed, root / "data/pretrain", root / "zoo")) == {"gpt2"}
    assert (root / "zoo/w2v/zoo.json").stat().st_mtime_ns == stamp["w2v"]
    assert (root / "zoo/gpt2/zoo.json").stat().st_mtime_ns != stamp["gpt2"]


@pytest.mark.parametrize("model", ["w2v", "wavlm"])
def test_frame_targets_sit_on_the_encoder_frame_grid(model):
    """Masked-prediction and regression targets need one row per encoder frame."""
    e = yaml.safe_load(RECIPE_ZOO.read_text())["models"][model]
    config = AutoConfig.for_model(e["type"], **e["config"])
    field, hop = frame_geometry(config)
    enc = AutoModel.from_config(config)
    for n in (16000, 23456, 40000):
        frames = frame_targets(np.random.default_rng(n).standard_normal(n).astype(np.float32), 16000, field, hop, 40)
        assert frames.shape == (int(enc._get_feat_extract_output_lengths(torch.tensor(n))), 42)


def test_build_zoo_jobs_trains_models_in_parallel_processes_and_names_a_failure(zoo, tmp_path):
    """--jobs N: one process per pending model, lines prefixed by its name; a failure is named."""
    import subprocess
    import sys
    cfg, root, _ = zoo
    small = copy.deepcopy(cfg)
    small["models"] = {k: small["models"][k] for k in ("w2v", "gpt2")}
    conf = tmp_path / "zoo.yaml"
    conf.write_text(yaml.safe_dump(small))
    cmd = [sys.executable, "-m", "sertk.bin.build_zoo", "--config", str(conf), "--pool", str(root / "data/pretrain"),
           "--zoo", str(tmp_path / "zoo"), "--jobs", "2"]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "[w2v] " in r.stderr and "[gpt2] " in r.stderr
    pool = Pool.load(root / "data/pretrain")
    for name in ("w2v", "gpt2"):  # each model built as a serial build of the same entry would record it
        meta = json.loads((tmp_path / "zoo" / name / "zoo.json").read_text())
        assert meta["digest"] == model_digest(small["models"][name], pool, small.get("seed", 0))
    assert build_zoo(small, root / "data/pretrain", tmp_path / "zoo") == {}  # both up to date
    small["models"]["gpt2"]["config"]["n_head"] = 5  # 32 is not a multiple of 5: gpt2 cannot build
    small["models"]["w2v"]["train"]["lr"] = 1e-3
    conf.write_text(yaml.safe_dump(small))
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 1 and "failed: gpt2" in r.stderr
    assert json.loads((tmp_path / "zoo/w2v/zoo.json").read_text())["digest"] == \
        model_digest(small["models"]["w2v"], pool, small.get("seed", 0))  # the other model still built


def test_stage0_builds_what_the_configs_name_and_what_those_start_from(tmp_path, caplog, monkeypatch):
    """ser.sh's stage 0 builds `build-zoo --list --for-configs`: the models named by config values, plus the
    ones they start from (the ALM's audio tower is zoo/whisper_tiny_en's encoder), each after those."""
    from types import SimpleNamespace

    from sertk.zoo import build_order, model_digests, models_named_in

    cfg = yaml.safe_load(RECIPE_ZOO.read_text())
    alm = tmp_path / "a.yaml"
    alm.write_text("task: concept_alm\nmodel: {name_or_path: zoo/alm}\n")
    fm = tmp_path / "b.yaml"
    fm.write_text("fms:\n  x: {encoder: {name_or_path: zoo/wavlm, layer: 2}}\n# zoo/w2v in a comment is no use\n")
    assert models_named_in([alm, fm], cfg) == ["alm", "wavlm"]
    assert build_order(cfg, ["alm", "wavlm"]) == ["wavlm", "whisper_tiny_en", "alm"]
    bad = tmp_path / "c.yaml"
    bad.write_text("model: {encoder: {name_or_path: zoo/hubert, layer: 2}}\n")
    monkeypatch.chdir(tmp_path)  # configs name zoo/<name> relative to the recipe dir, as --zoo does
    with caplog.at_level("WARNING", logger="sertk.zoo"):
        assert models_named_in([bad], cfg, "zoo") == []
    assert "c.yaml: model.encoder.name_or_path names zoo/hubert" in caplog.text and "not build" in caplog.text
    caplog.clear()
    (tmp_path / "zoo" / "hubert").mkdir(parents=True)  # put there by hand: nothing to say
    assert models_named_in([bad], cfg, "zoo") == [] and not caplog.text
    # a rebuilt Whisper rebuilds the ALM that starts from it
    pool = SimpleNamespace(digest="pool")
    other = copy.deepcopy(cfg)
    other["models"]["whisper_tiny_en"]["source"]["licence"] = "MIT (restated)"
    assert model_digests(cfg, pool, ["alm"])["alm"] != model_digests(other, pool, ["alm"])["alm"]
    assert model_digests(cfg, pool, ["gpt2"])["gpt2"] == model_digests(other, pool, ["gpt2"])["gpt2"]
    cyc = copy.deepcopy(cfg)
    cyc["models"]["alm"]["audio_tower"]["init"] = "alm"
    with pytest.raises(ValueError, match="alm -> alm start from each other"):
        check_zoo_config(cyc)
