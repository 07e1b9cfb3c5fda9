"""Issue 22, item 6: an utterance's encoder outputs are its outputs alone, whatever it is batched with,
for group-norm encoders too (wav2vec2-base, HuBERT/WavLM base: ``feat_extract_norm: group``)."""
from __future__ import annotations

import pytest
import torch
from transformers import AutoConfig, AutoModel, Wav2Vec2FeatureExtractor

from fixtures_corpora import noise_dataset
from sertk.features import embedding_cache as ec
from sertk.models.dawn import DawnRegressor
from sertk.models.encoder import SpeechEncoder, pads_leak

SMALL = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
         "conv_dim": [16] * 7, "num_conv_pos_embeddings": 16, "num_conv_pos_embedding_groups": 4,
         "mask_time_prob": 0.0}
NO_DROPOUT = {k: 0.0 for k in ("hidden_dropout", "attention_dropout", "activation_dropout", "feat_proj_dropout",
                               "final_dropout", "layerdrop")}
GROUP = {"wav2vec2": {**SMALL, "feat_extract_norm": "group"},
         "wavlm": {**SMALL, "feat_extract_norm": "group", "num_buckets": 32},
         "hubert": {**SMALL, "feat_extract_norm": "group"}}
SHORT, LONG = 8000, 48000  # 0.5 s beside 3 s


def _pair(seed=0):
    """A short utterance alone, and the same utterance zero-padded in a batch beside a much longer one."""
    g = torch.Generator().manual_seed(seed)
    short, long = 0.1 * torch.randn(1, SHORT, generator=g), 0.3 * torch.randn(1, LONG, generator=g)
    batch = torch.zeros(2, LONG)
    batch[0, :SHORT], batch[1] = short[0], long[0]
    return short, batch, torch.tensor([SHORT, LONG])


def _encoder(typ, **spec):
    torch.manual_seed(0)
    return SpeechEncoder({"type": typ, "config": GROUP[typ], **spec})


@pytest.mark.parametrize("typ", sorted(GROUP))
def test_group_norm_encoder_features_do_not_depend_on_the_batch(typ):
    enc = _encoder(typ, freeze=True, layer="weighted").eval()
    assert pads_leak(enc.model.config)
    short, batch, lengths = _pair()
    with torch.no_grad():
        alone, n_alone = enc(short, torch.tensor([SHORT]))
        both, n_both = enc(batch, lengths)
        long_alone, _ = enc(batch[1:], lengths[1:])
        wider, _ = enc(torch.nn.functional.pad(batch, (0, 3000)), lengths)  # padding beyond every utterance
    n = int(n_alone[0])
    torch.testing.assert_close(wider[:, :both.shape[1]], both, atol=1e-5, rtol=0)
    assert int(n_both[0]) == n and both.shape[1] == long_alone.shape[1] > n
    torch.testing.assert_close(both[0, :n], alone[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(both[1], long_alone[0], atol=1e-5, rtol=0)  # the long one is unchanged too
    for layer in range(enc.model.config.num_hidden_layers + 1):  # every layer a probe may read
        one = SpeechEncoder({"type": typ, "config": GROUP[typ], "freeze": True, "layer": layer}).eval()
        one.model.load_state_dict(enc.model.state_dict())
        with torch.no_grad():
            torch.testing.assert_close(one(batch, lengths)[0][0, :n], one(short, torch.tensor([SHORT]))[0][0],
                                       atol=1e-5, rtol=0)


def test_fine_tuning_forward_and_gradients_do_not_depend_on_the_batch():
    """The classifier fine-tunes on padded batches: in training mode (no dropout) the padded batch's
    outputs and its gradients, conv front end included, are the sum of the utterances' alone."""
    torch.manual_seed(0)
    spec = {"type": "wavlm", "config": {**GROUP["wavlm"], **NO_DROPOUT}, "freeze_feature_encoder": False}
    enc = SpeechEncoder(spec).train()
    short, batch, lengths = _pair(1)

    def grads(wavs, lens):
        enc.zero_grad()
        feats, flen = enc(wavs, lens)
        mask = (torch.arange(feats.shape[1])[None] < flen[:, None]).unsqueeze(-1)
        (feats * mask).pow(2).sum().backward()
        return feats, {k: p.grad.clone() for k, p in enc.named_parameters() if p.grad is not None}

    both, g_both = grads(batch, lengths)
    alone, g_short = grads(short, lengths[:1])
    _, g_long = grads(batch[1:], lengths[1:])
    torch.testing.assert_close(both[0, :alone.shape[1]], alone[0], atol=1e-5, rtol=0)
    conv = "model.feature_extractor.conv_layers.0.layer_norm.weight"  # the group norm itself
    assert conv in g_both
    for k, g in g_both.items():
        torch.testing.assert_close(g, g_short[k] + g_long[k], atol=1e-3, rtol=1e-4, msg=k)


def test_a_wav2vec2_base_style_checkpoint_matches_the_model_card_on_each_utterance(tmp_path):
    """A checkpoint shaped like facebook/wav2vec2-base (group norm; its processor normalises and returns
    no attention mask): batched features equal what the processor + model compute on the utterance alone."""
    torch.manual_seed(0)
    cfg = AutoConfig.for_model("wav2vec2", **GROUP["wav2vec2"])
    AutoModel.from_config(cfg).save_pretrained(tmp_path)
    Wav2Vec2FeatureExtractor(do_normalize=True, return_attention_mask=False).save_pretrained(tmp_path)
    enc = SpeechEncoder({"name_or_path": str(tmp_path), "freeze": True}).eval()
    assert enc.normalize  # the checkpoint's do_normalize
    short, batch, lengths = _pair(2)
    proc = Wav2Vec2FeatureExtractor.from_pretrained(tmp_path)
    ref_model = AutoModel.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        feats, flen = enc(batch, lengths)
        for b, n in enumerate(lengths.tolist()):
            x = proc(batch[b, :n].numpy(), sampling_rate=16000, return_tensors="pt")
            assert "attention_mask" not in x
            want = ref_model(**x).last_hidden_state[0]
            assert int(flen[b]) == want.shape[0]
            torch.testing.assert_close(feats[b, :want.shape[0]], want, atol=1e-5, rtol=0)


def test_a_group_norm_teacher_scores_an_utterance_as_alone():
    torch.manual_seed(0)
    model = DawnRegressor.from_spec({"type": "wav2vec2", "config": GROUP["wav2vec2"]}).eval()
    short, batch, lengths = _pair(3)
    with torch.no_grad():
        torch.testing.assert_close(model(batch, lengths)[0], model(short)[0], atol=1e-5, rtol=0)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return noise_dataset(tmp_path_factory.mktemp("gn_corpus"), [0.5, 3.0, 0.7, 2.2], 2)


def _devices():
    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", _devices())
def test_cache_batches_of_a_group_norm_encoder_hold_each_utterance_alone(device, dataset, monkeypatch):
    """``cache_batch_size`` batches utterances on a GPU (here on every device): every stored tensor is
    still the utterance's alone."""
    monkeypatch.setattr(ec, "encoder_batch", lambda batch_size, device: batch_size)
    spec = {"type": "wavlm", "config": GROUP["wavlm"], "layer": 1}
    enc, _ = ec.frozen_encoder(spec, seed=0)
    enc = enc.to(device)
    batched = {}
    for feats in ec.compute_features(enc, dataset, batch_size=4, device=device):
        batched.update(feats)
    with torch.no_grad():
        for i, u in enumerate(dataset.utts):
            wav = dataset[i]["wav"][None].to(device)
            f, n = enc(wav, torch.tensor([wav.shape[1]], device=device))
            torch.testing.assert_close(batched[u], f[0, :int(n[0])].float().cpu(), atol=1e-5, rtol=0, msg=u)


def test_group_norm_stores_are_not_the_padded_ones_of_before(tmp_path, dataset):
    """A store that a group-norm encoder filled before this fix (batched on a GPU: padded values) is never
    reused; stores of other encoders keep their names (their values did not change)."""
    names = {}
    for norm in ("group", "layer"):
        spec = {"type": "wav2vec2", "config": {**SMALL, "feat_extract_norm": norm, "do_stable_layer_norm": True},
                "layer": 1}
        enc, digest = ec.frozen_encoder(spec, seed=0)
        ec.encoder_features(tmp_path / norm, enc, spec, digest, dataset, "set", device="cpu")
        (store,) = [p.name for p in (tmp_path / norm).iterdir()]
        names[norm] = (store, ec.cache_key(spec, digest, dataset.sample_rate, dataset.max_duration))
    assert names["group"][0] != names["group"][1]
    assert names["layer"][0] == names["layer"][1]
