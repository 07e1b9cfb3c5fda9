"""Whisper wherever sertk takes a speech encoder: its log-mel is the checkpoint's own, an utterance's
features do not depend on its batch (nor on the feature cache), configs name it like any encoder, and a
bad layer or window is named. Each task's training with a Whisper encoder is tested beside that task
(test_probe, test_selm, test_icl, test_dawn, test_zsfuse, test_predict)."""
from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from transformers import WhisperFeatureExtractor

from sertk.data.audio import write_audio
from sertk.data.datadir import DataDir
from sertk.data.dataset import AudioDataset
from sertk.features.embedding_cache import encoder_features, frozen_encoder
from sertk.models.encoder import SpeechEncoder
from sertk.models.whisper_encoder import WhisperLogMel
from sertk.tasks import check_config

from zoo_fixtures import TINY_WAV2VEC2, TINY_WHISPER, on_whisper, without_zoo

SR = 16000
CONF = Path(__file__).resolve().parent.parent / "egs/mini_emo/conf"
WHISPER = {**copy.deepcopy(TINY_WHISPER), "window": "clip"}


def _clips(seconds=(0.25, 1.1, 0.6, 0.4), seed=0) -> list[np.ndarray]:
    """Tones in noise, one pitch and loudness per clip, of different lengths (padding differs per batch)."""
    rng = np.random.default_rng(seed)
    out = []
    for i, s in enumerate(seconds):
        t = np.arange(int(s * SR)) / SR
        out.append((0.1 * (i + 1) * np.sin(2 * np.pi * (120 + 90 * i) * t)
                    + 0.02 * rng.standard_normal(t.size)).astype(np.float32))
    return out


def _batch(wavs: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    lengths = torch.tensor([len(w) for w in wavs])
    x = torch.zeros(len(wavs), int(lengths.max()))
    for i, w in enumerate(wavs):
        x[i, :len(w)] = torch.from_numpy(w)
    return x, lengths


# ------------------------------------------------------------------ front end --


@pytest.mark.parametrize("window", ["clip", "full"])
def test_log_mel_is_the_checkpoints_feature_extractor_output(whisper_tiny_en, window):
    """Silence, short clips and one longer than Whisper's 30 s window (cut to it), batched; under AMP too."""
    fe = WhisperFeatureExtractor.from_pretrained(whisper_tiny_en)
    wavs = _clips() + [np.zeros(5000, np.float32), _clips((31.0,), seed=1)[0]]
    want = fe(wavs, sampling_rate=SR, return_tensors="np")["input_features"]  # (B, 80, 3000): the 30 s window
    front = WhisperLogMel(fe, window)
    got, frames = front(*_batch(wavs))
    assert int(frames[-1]) == 3000 and (window == "full") == bool((frames == 3000).all())
    for i, n in enumerate(frames.tolist()):
        np.testing.assert_allclose(got[i, :, :n].numpy(), want[i, :, :n], atol=1e-5, err_msg=f"clip {i}")
        assert not got[i, :, n:].any()  # frames past a clip's own are left empty, not filled with the window's
    with torch.autocast("cpu", dtype=torch.bfloat16):  # train.amp: the front end stays float32
        amp, _ = front(*_batch(wavs))
    assert amp.dtype == torch.float32 and torch.equal(amp, got)


# ------------------------------------------------------------------ batch independence --


def _alone_equals_batched(model, wavs, atol):
    """Every hidden state of each utterance, alone and inside a padded batch, over its own frames."""
    x, lengths = _batch(wavs)
    mask = (torch.arange(x.shape[1])[None] < lengths[:, None]).long()
    n = model._get_feat_extract_output_lengths(lengths)
    with torch.no_grad():
        batched = model(x, attention_mask=mask, output_hidden_states=True).hidden_states
        for i, w in enumerate(wavs):
            alone = model(torch.from_numpy(w)[None], output_hidden_states=True).hidden_states
            for layer, (a, b) in enumerate(zip(alone, batched)):
                assert a.shape[1] >= n[i]
                np.testing.assert_allclose(b[i, :n[i]].numpy(), a[0, :n[i]].numpy(), atol=atol,
                                           err_msg=f"utterance {i}, layer {layer}")


def test_real_whisper_features_are_the_same_alone_and_in_a_padded_batch(whisper_tiny_en):
    encoder = SpeechEncoder({"name_or_path": str(whisper_tiny_en), "window": "clip", "freeze": True}).eval()
    assert encoder.normalize is False and not encoder.model.normalizes_waveform
    _alone_equals_batched(encoder.model, _clips(), atol=2e-4)


def test_full_window_features_are_the_same_alone_and_in_a_padded_batch():
    torch.manual_seed(0)
    encoder = SpeechEncoder({**WHISPER, "window": "full", "freeze": True}).eval()
    _alone_equals_batched(encoder.model, _clips((0.3, 0.7)), atol=1e-5)


def _datadir(root: Path, wavs: list[np.ndarray]) -> Path:
    tables = {"wav.scp": {}, "utt2spk": {}}
    for i, w in enumerate(wavs):
        utt = f"u{i:02d}"
        write_audio(root / f"{utt}.wav", w, SR)
        tables["wav.scp"][utt], tables["utt2spk"][utt] = str(root / f"{utt}.wav"), "s"
    DataDir(tables=tables).write(root / "set")
    return root / "set"


def test_cached_features_equal_a_direct_call_and_each_window_has_its_own_store(tmp_path):
    ds = AudioDataset(_datadir(tmp_path, _clips((0.25, 1.1, 0.6, 0.4, 0.9))), SR, targets=())
    stores = set()
    for window in ("clip", "full"):
        spec = {**WHISPER, "window": window, "layer": 2, "freeze": True}
        encoder, digest = frozen_encoder(spec)
        feats = encoder_features(tmp_path / "feats", encoder, spec, digest, ds, "set", batch_size=3)
        with torch.no_grad():
            for i, u in enumerate(ds.utts):
                wav = ds[i]["wav"]
                direct, n = encoder(wav[None], torch.tensor([len(wav)]))
                assert feats[u].shape == (int(n[0]), 32)
                np.testing.assert_allclose(feats[u].numpy(), direct[0, :int(n[0])].numpy(), atol=1e-5, err_msg=u)
        stores |= {p.parent.name for p in (tmp_path / "feats").glob("*/set")}
    assert len(stores) == 2  # the window is part of the store's key: clip and full features never mix


# ------------------------------------------------------------------ specs and configs --


def test_a_layer_out_of_range_is_named_with_the_layers_there_are():
    with pytest.raises(ValueError, match=r"layer 5 does not exist \(it has layers 0\.\.4"):
        SpeechEncoder({**WHISPER, "layer": 5})
    probe = {"task": "probe", "model": {"encoder": {**WHISPER, "layer": 9}}}
    with pytest.raises(ValueError, match=r"probe\.yaml: model\.encoder: .*layer 9 .*layers 0\.\.4"):
        check_config(probe, "probe.yaml")
    probe["model"]["encoder"]["layer"] = "third"
    with pytest.raises(ValueError, match=r"model\.encoder\.layer 'third'"):
        check_config(probe, "probe.yaml")


def test_a_window_is_for_whisper_only_and_is_clip_or_full():
    classifier = {"task": "classifier", "model": {"encoder": {**copy.deepcopy(TINY_WAV2VEC2), "window": "clip"}}}
    with pytest.raises(ValueError, match="'window' applies to Whisper encoders only"):
        check_config(classifier, "classifier.yaml")
    probe = {"task": "probe", "model": {"encoder": {**copy.deepcopy(TINY_WAV2VEC2), "window": "full"}}}
    with pytest.raises(ValueError, match="probe.yaml: model.encoder: .*'window' applies to Whisper"):
        check_config(probe, "probe.yaml")
    with pytest.raises(ValueError, match="whisper window 'half': use one of clip, full"):
        check_config({"task": "probe", "model": {"encoder": {**WHISPER, "window": "half"}}}, "probe.yaml")
    teacher = {"task": "teacher", "members": [{"name": "w", "backbone": {**WHISPER, "layers": 2}}]}
    with pytest.raises(ValueError, match=r"members\.w: backbone: unknown key\(s\) \['layers'\]"):
        check_config(teacher, "teacher.yaml")


SPEECH_CONFIGS = sorted(p.name for p in CONF.glob("*.yaml")
                        if "zoo/w2v" in p.read_text() or "zoo/wavlm" in p.read_text())


@pytest.mark.parametrize("name", SPEECH_CONFIGS)
def test_every_speech_encoder_config_takes_a_whisper_encoder(name):
    """What the mini_emo configs become on zoo/whisper_tiny_en: the test stand-in is a local Whisper,
    built for real by each task's dry run (probes, classifier, regressor, teacher, ZS-Fuse; SELM and ICL
    name zoo/gpt2 too, so their dry run builds nothing: test_selm and test_icl train them on Whisper)."""
    cfg = on_whisper(yaml.safe_load((CONF / name).read_text()))
    local = without_zoo(cfg, "zoo/whisper")  # other zoo models (zoo/gpt2, CLAPs) are not built by a dry run
    specs = [s for s in _specs(local) if s.get("type") == "whisper"]
    assert specs and all(s["window"] == "clip" and s["config"] == TINY_WHISPER["config"] for s in specs)
    check_config(local, name)
    check_config(cfg, name)  # a zoo or hub Whisper is never fetched by the dry run


def _specs(node):
    if isinstance(node, dict):
        return ([node] if "type" in node and "config" in node else []) + [s for v in node.values() for s in _specs(v)]
    return [s for v in node for s in _specs(v)] if isinstance(node, list) else []


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_on_cuda_features_equal_the_cpu_ones_and_fp16_amp_stays_finite():
    """train.amp on CUDA: the log-mel stays float32 (fp16 would floor a silent clip's energies to 0: NaN)."""
    torch.manual_seed(0)
    encoder = SpeechEncoder({**WHISPER, "freeze": True}).eval()
    x, lengths = _batch(_clips() + [np.zeros(4000, np.float32)])
    with torch.no_grad():
        cpu, n = encoder(x, lengths)
        encoder.cuda()
        gpu, n_gpu = encoder(x.cuda(), lengths.cuda())
        with torch.autocast("cuda", dtype=torch.float16):
            half, _ = encoder(x.cuda(), lengths.cuda())
    assert torch.equal(n, n_gpu.cpu()) and torch.isfinite(half).all()
    np.testing.assert_allclose(gpu.cpu().numpy(), cpu.numpy(), atol=5e-3)  # cuDNN's TF32 convolutions
