"""The Dawn teacher: released-checkpoint key layout, equivalence with the reference computation, ensemble."""
import json
import re

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from transformers import Wav2Vec2Config, Wav2Vec2Model

from sertk.models.dawn import (DAWN_OUTPUTS, DawnRegressor, EnsembleTeacher, load_released,
                               load_released_state_dict, released_key_map)

SMALL = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
             conv_dim=[16] * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4,
             feat_extract_norm="layer", do_stable_layer_norm=True, final_dropout=0.1)


def released_style_checkpoint(seed=0):
    """A state dict named as the released audeering checkpoint stores it (old weight_g/weight_v names)."""
    torch.manual_seed(seed)
    cfg = Wav2Vec2Config(**SMALL)
    backbone = Wav2Vec2Model(cfg).eval()
    state = {}
    for k, v in backbone.state_dict().items():
        k = re.sub(r"parametrizations\.weight\.original0$", "weight_g", k)
        k = re.sub(r"parametrizations\.weight\.original1$", "weight_v", k)
        state["wav2vec2." + k] = v.clone()
    dense, out = torch.nn.Linear(32, 32), torch.nn.Linear(32, 3)
    state.update({"classifier.dense.weight": dense.weight.data, "classifier.dense.bias": dense.bias.data,
                  "classifier.out_proj.weight": out.weight.data, "classifier.out_proj.bias": out.bias.data})
    return cfg, backbone, dense, out, state


def reference(backbone, dense, out, wav):
    """What the released model card computes: processor normalisation, mean over frames, tanh head."""
    x = (wav - wav.mean()) / np.sqrt(wav.var() + 1e-7)
    with torch.no_grad():
        h = backbone(torch.from_numpy(x)[None].float()).last_hidden_state.mean(1)
        return out(torch.tanh(dense(h)))[0].numpy()


def test_released_keys_map_onto_the_architecture_and_match_the_reference():
    cfg, backbone, dense, out, state = released_style_checkpoint()
    assert any(k.endswith("weight_g") for k in state)
    model = DawnRegressor(Wav2Vec2Model(cfg)).eval()
    load_released_state_dict(model, state)
    wav = np.random.default_rng(0).standard_normal(12000).astype(np.float32) * 0.3
    got = model(torch.from_numpy(wav)[None])[0].detach().numpy()
    np.testing.assert_allclose(got, reference(backbone, dense, out, wav), atol=1e-5)
    avd = model.avd(torch.from_numpy(wav)[None])[0].detach().numpy()
    assert list(avd) == [got[DAWN_OUTPUTS.index(n)] for n in ("arousal", "valence", "dominance")]


def test_checkpoint_dir_loads_without_remote_code(tmp_path):
    cfg, backbone, dense, out, state = released_style_checkpoint(1)
    d = cfg.to_dict()
    d["architectures"] = ["EmotionModel"]
    (tmp_path / "config.json").write_text(json.dumps(d))
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "model.safetensors"))
    model = load_released(tmp_path)
    wav = np.random.default_rng(1).standard_normal(9000).astype(np.float32)
    np.testing.assert_allclose(model(torch.from_numpy(wav)[None])[0].detach().numpy(),
                               reference(backbone, dense, out, wav), atol=1e-5)


def test_wrong_checkpoint_is_refused_naming_the_keys():
    cfg, _, _, _, state = released_style_checkpoint()
    state.pop("classifier.out_proj.weight")
    state["lm_head.weight"] = torch.zeros(3)
    with pytest.raises(ValueError, match="out_proj.weight.*lm_head"):
        load_released_state_dict(DawnRegressor(Wav2Vec2Model(cfg)), state, "ckpt.bin")
    assert released_key_map("a.conv.weight_v") == "a.conv.parametrizations.weight.original1"


def test_padding_does_not_change_outputs_and_ensemble_is_the_mean():
    torch.manual_seed(0)
    a = DawnRegressor.from_spec({"type": "wav2vec2", "config": SMALL}).eval()
    b = DawnRegressor.from_spec({"type": "wavlm", "config": {**SMALL, "num_buckets": 32}}).eval()
    wav = torch.randn(2, 16000)
    lengths = torch.tensor([16000, 11000])
    with torch.no_grad():
        batched = a(wav, lengths)
        alone = a(wav[1:, :11000])
        np.testing.assert_allclose(batched[1].numpy(), alone[0].numpy(), atol=1e-4)
        ens = EnsembleTeacher([a, b])(wav, lengths)
        np.testing.assert_allclose(ens.numpy(), ((a.avd(wav, lengths) + b.avd(wav, lengths)) / 2).numpy(), atol=1e-6)


def test_a_whisper_backbone_reads_the_waveform_as_it_is_and_ignores_padding():
    """Whisper's log-mel has its own normalisation: the release's waveform normalisation is skipped
    (a louder clip is another input), and padding still changes nothing."""
    from zoo_fixtures import TINY_WHISPER

    torch.manual_seed(0)
    model = DawnRegressor.from_spec({**TINY_WHISPER, "window": "clip", "dropout": 0.0}).eval()
    assert not model.normalizes_waveform and DawnRegressor.from_spec({"type": "wav2vec2", "config": SMALL}
                                                                     ).normalizes_waveform
    assert any(k.startswith("wav2vec2.encoder.layers.") for k in model.state_dict())  # one key layout
    wav = torch.randn(2, 16000) * 0.1
    lengths = torch.tensor([16000, 7000])
    with torch.no_grad():
        batched = model(wav, lengths)
        alone = model(wav[1:, :7000])
        np.testing.assert_allclose(batched[1].numpy(), alone[0].numpy(), atol=1e-5)
        hidden = model.wav2vec2(wav[1:, :7000]).last_hidden_state  # the raw waveform, mean over its frames
        np.testing.assert_allclose(alone[0].numpy(), model.classifier(hidden.mean(1))[0].numpy(), atol=1e-5)
        assert not torch.allclose(model(wav[1:, :7000] * 3), alone, atol=1e-3)


def test_a_checkpoint_backbone_loads_through_the_encoder_spec(tmp_path, whisper_tiny_en):
    """``backbone: {name_or_path: ...}``: a wav2vec 2.0 dir loads its weights under a fresh head; a Whisper
    checkpoint gives its encoder (with the checkpoint's log-mel) whatever class it was saved as."""
    torch.manual_seed(0)
    Wav2Vec2Model(Wav2Vec2Config(**SMALL)).save_pretrained(tmp_path / "w2v")
    dawn = DawnRegressor.from_spec({"name_or_path": str(tmp_path / "w2v"), "dropout": 0.2})
    saved = Wav2Vec2Model.from_pretrained(tmp_path / "w2v").state_dict()
    assert all(torch.equal(v, saved[k]) for k, v in dawn.wav2vec2.state_dict().items())
    assert dawn.classifier.dropout.p == 0.2 and dawn.normalizes_waveform
    whisper = DawnRegressor.from_spec({"name_or_path": str(whisper_tiny_en), "window": "clip"}).eval()
    assert type(whisper.wav2vec2).__name__ == "WhisperSpeechEncoder" and not whisper.normalizes_waveform
    assert whisper.classifier.dense.in_features == 384
    with torch.no_grad():
        assert torch.isfinite(whisper(torch.randn(2, 8000) * 0.1, torch.tensor([8000, 5000]))).all()
