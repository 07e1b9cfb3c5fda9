"""MS-CLAP 2023 loader: a small random model saved in MS-CLAP's layout (HTSAT ``audio_encoder.base.htsat.*``
with fused ``qkv``, GPT-2 ``caption_encoder.base.*``, MS-CLAP projections) gives the embeddings computed by
hand from the raw tensors."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import ClapAudioConfig, ClapAudioModel, GPT2Config, GPT2Model

from sertk.models.msclap_loader import feature_extractor, load_msclap

AUDIO = dict(spec_size=32, num_mel_bins=16, patch_size=4, patch_stride=[4, 4], window_size=4, depths=[2, 1],
             num_attention_heads=[1, 2], patch_embeds_hidden_size=8, hidden_size=16)
# HTSAT's names for transformers' (the original HTS-AT / LAION / MS-CLAP code names them so)
TO_HTSAT = [("attention.output.dense.", "attn.proj."), ("attention.self.relative_position_bias_table",
            "attn.relative_position_bias_table"), ("attention.self.relative_position_index",
            "attn.relative_position_index"), ("intermediate.dense.", "mlp.fc1."), ("output.dense.", "mlp.fc2."),
            ("layernorm_before.", "norm1."), ("layernorm_after.", "norm2."), ("batch_norm.", "bn0.")]


def _randomise(module):
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, t in module.state_dict().items():
            if t.is_floating_point() and "relative_position_index" not in name:
                t.copy_(0.2 * torch.randn(t.shape, generator=g) + (1.0 if name.endswith("running_var") else 0.0))
    return module


def _msclap_layout(audio: ClapAudioModel, text: GPT2Model, proj: dict) -> dict:
    """The state dict as msclap's ``CLAP`` module names it (plus the tensors the loader must skip)."""
    sd = {}
    qkv = {}
    for k, v in audio.audio_encoder.state_dict().items():
        for new, old in TO_HTSAT:
            k = k.replace(new, old)
        m = k.split(".attention.self.")
        if len(m) == 2 and m[1].split(".")[0] in ("query", "key", "value"):
            part, kind = m[1].split(".")
            qkv.setdefault((m[0], kind), {})[part] = v
            continue
        sd["audio_encoder.base.htsat." + k] = v.clone()
    for (block, kind), parts in qkv.items():
        sd[f"audio_encoder.base.htsat.{block}.attn.qkv.{kind}"] = torch.cat([parts[p] for p in
                                                                               ("query", "key", "value")])
    sd.update({"audio_encoder.base.htsat.spectrogram_extractor.stft.conv_real.weight": torch.zeros(3, 1, 4),
               "audio_encoder.base.htsat.logmel_extractor.melW": torch.zeros(5, 16),
               "audio_encoder.base.htsat.head.weight": torch.zeros(527, 16),
               "audio_encoder.base.htsat.tscam_conv.weight": torch.zeros(527, 16, 2, 3),
               "audio_encoder.base.htsat.layers.0.blocks.1.attn_mask": torch.zeros(4, 16, 16),
               "caption_encoder.base.h.0.attn.bias": torch.ones(1, 1, 40, 40),
               "logit_scale": torch.tensor(2.5)})
    sd.update({"caption_encoder.base." + k: v.clone() for k, v in text.state_dict().items()})
    sd.update({f"{side}_encoder.projection.{k}": v for side in ("audio", "caption") for k, v in proj[side].items()})
    return sd


def _project(x, p):
    h = x @ p["linear1.weight"].T
    h = h + torch.nn.functional.gelu(h) @ p["linear2.weight"].T
    h = torch.nn.functional.layer_norm(h, h.shape[-1:], p["layer_norm.weight"], p["layer_norm.bias"])
    return h / h.norm(dim=-1, keepdim=True)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    torch.manual_seed(0)
    audio = _randomise(ClapAudioModel(ClapAudioConfig(**AUDIO))).eval()
    text = _randomise(GPT2Model(GPT2Config(n_embd=16, n_layer=2, n_head=2, vocab_size=300, n_positions=40,
                                           bos_token_id=299, eos_token_id=299))).eval()
    g = torch.Generator().manual_seed(2)
    proj = {side: {"linear1.weight": torch.randn(12, 16, generator=g),
                   "linear2.weight": torch.randn(12, 12, generator=g),
                   "layer_norm.weight": torch.randn(12, generator=g), "layer_norm.bias": torch.randn(12, generator=g)}
            for side in ("audio", "caption")}
    path = tmp_path_factory.mktemp("msclap") / "CLAP_weights_2023.pth"
    sd = _msclap_layout(audio, text, proj)
    torch.save({"model": sd}, path)
    return path, audio, text, proj, sd


def test_msclap_checkpoint_gives_the_embeddings_of_its_raw_tensors(saved):
    path, audio, text, proj, _ = saved
    model = load_msclap(path, spec_size=32, patch_stride=4, text_heads=2)
    assert not model.training and model.config.projection_dim == 12
    assert float(model.logit_scale_a.detach()) == pytest.approx(2.5)
    feats = torch.randn(3, 1, 20, 16, generator=torch.Generator().manual_seed(3)) * 10
    ids = torch.tensor([[5, 9, 13, 59, 0, 0], [7, 3, 3, 8, 2, 59]])  # id 0 is MS-CLAP's pad ('!')
    mask = (ids != 0).long()
    with torch.no_grad():
        got_a = model.get_audio_features(input_features=feats).pooler_output
        want_a = _project(audio(input_features=feats).pooler_output, proj["audio"])
        got_t = model.get_text_features(input_ids=ids, attention_mask=mask).pooler_output
        hidden = text(input_ids=ids, attention_mask=mask).last_hidden_state
        want_t = _project(torch.stack([hidden[0, 3], hidden[1, 5]]), proj["caption"])
    np.testing.assert_allclose(got_a.numpy(), want_a.numpy(), atol=1e-5)
    np.testing.assert_allclose(got_t.numpy(), want_t.numpy(), atol=1e-5)
    fe = feature_extractor()
    assert fe.nb_max_samples == 7 * 44100 and fe.padding == "repeat" and fe.feature_size == 64


def test_msclap_loader_names_the_key_that_does_not_fit(saved, tmp_path):
    path, *_, sd = saved
    bad = tmp_path / "extra.pth"
    torch.save({"model": {**sd, "audio_encoder.base.htsat.extra_layer.weight": torch.zeros(2)}}, bad)
    with pytest.raises(ValueError, match="extra.pth.*unexpected.*extra_layer"):
        load_msclap(bad, spec_size=32, patch_stride=4, text_heads=2)
    torch.save({"model": {k: v for k, v in sd.items() if "norm2" not in k}}, tmp_path / "miss.pth")
    with pytest.raises(ValueError, match="miss.pth.*missing.*layernorm_after"):
        load_msclap(tmp_path / "miss.pth", spec_size=32, patch_stride=4, text_heads=2)
    torch.save({"weights": {}}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="other.pth: not an MS-CLAP checkpoint"):
        load_msclap(tmp_path / "other.pth")


def _gpt2_style_tokenizer(d):
    """A byte-level BPE saved as a GPT-2 tokenizer is ('!' id 0, the pad; '<|endoftext|>' its end token)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["!", "<|endoftext|>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(["the speaker sounds sad", "a sad voice", "an angry voice"] * 5, trainer)
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="!").save_pretrained(d)
    return d


def test_an_msclap_alm_scores_through_the_zero_shot_scorer(saved, tmp_path):
    from sertk.models.clap_zeroshot import ClapZeroShot
    from sertk.tasks import zsfuse
    path, audio, text, proj, _ = saved
    tok_dir = _gpt2_style_tokenizer(tmp_path / "tok")
    over = {"spec_size": 32, "patch_stride": 4, "text_heads": 2,
            "features": {"sampling_rate": 16000, "feature_size": 16, "hop_length": 512, "max_length_s": 1,
                         "frequency_max": 8000}}
    zs = ClapZeroShot(str(path), tokenizer=str(tok_dir), msclap=over, device="cpu")
    assert zs.front.padding == "repeat" and zs.logit_scale == pytest.approx(np.exp(2.5))
    wav = (0.1 * np.random.default_rng(0).standard_normal(9000)).astype(np.float32)
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(tok_dir)
    ids = torch.tensor([tok("a sad voice <|endoftext|>")["input_ids"]])
    with torch.no_grad():
        feats = zs.processor.feature_extractor([wav], sampling_rate=16000, return_tensors="pt")["input_features"]
        want_a = _project(audio(input_features=feats).pooler_output, proj["audio"])
        want_t = _project(text(input_ids=ids).last_hidden_state[:, -1], proj["caption"])
    np.testing.assert_allclose(zs.audio_embeddings([wav]), want_a.numpy(), atol=1e-4)
    np.testing.assert_allclose(zs.text_embeddings(["a sad voice"]), want_t.numpy(), atol=1e-5)
    cfg = {"task": "zsfuse", "prompts": {"templates": ["{}"], "classes": {"sad": ["sad"]}},
           "fms": {"f": {"encoder": {"type": "wav2vec2"}}}}
    zsfuse.check_config({**cfg, "alms": {"ms": {"name_or_path": str(path), "tokenizer": "gpt2", "msclap": over}}},
                        "t")
    with pytest.raises(ValueError, match="alms.ms: tokenizer and msclap apply to an MS-CLAP"):
        zsfuse.check_config({**cfg, "alms": {"ms": {"name_or_path": "laion/x", "tokenizer": "gpt2"}}}, "t")
    with pytest.raises(ValueError, match="alms.ms.msclap.features"):
        zsfuse.check_config({**cfg, "alms": {"ms": {"name_or_path": str(path), "msclap": {"features": {"x": 1}}}}},
                            "t")
