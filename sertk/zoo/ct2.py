"""CTranslate2 Whisper checkpoints (``model.bin``) as transformers' ``WhisperForConditionalGeneration``.

faster-whisper models (Systran's conversions of OpenAI's Whisper) ship only
CTranslate2's ``model.bin``: a small versioned binary format (a header with
the format version, the model spec's name and revision, then named tensors
and aliases). :func:`read_model_bin` reads it without CTranslate2;
:func:`whisper_state_dict` maps the tensors onto transformers' Whisper names
(fused attention projections split; Whisper's key projections have no bias,
so the fused bias's key slice must be zero); :func:`whisper_from_ct2` builds
the float32 model. Anything this reader has not been written for (another
format version, spec or revision, quantised weights, an unexpected tensor or
setting) is refused with an error naming the file, never guessed.
"""
from __future__ import annotations

import re
import struct
from dataclasses import dataclass, field
from pathlib import Path

import torch

KNOWN_BINARY_VERSIONS = (6,)  # CTranslate2 >= 4 writes 6
KNOWN_SPECS = {"WhisperSpec": (3,)}
_DTYPES = {0: torch.float32, 1: torch.int8, 2: torch.int16, 3: torch.int32, 4: torch.float16, 5: torch.bfloat16}
_FLOATS = (torch.float32, torch.float16, torch.bfloat16)
# the decoder settings a Whisper spec must have for this mapping (CTranslate2's Activation enum: GELU = 3)
_WHISPER_FLAGS = {"decoder/activation": 3, "decoder/alibi": 0, "decoder/pre_norm": 1, "decoder/scale_embeddings": 0,
                  "decoder/start_from_zero_embedding": 0}


class CT2FormatError(ValueError):
    """A model.bin this reader does not know how to read or map; the message names the file."""


@dataclass
class CT2Model:
    path: Path
    binary_version: int
    spec: str
    revision: int
    variables: dict[str, torch.Tensor] = field(default_factory=dict)
    aliases: dict[str, str] = field(default_factory=dict)


def read_model_bin(path: str | Path) -> CT2Model:
    """Every tensor of a CTranslate2 ``model.bin`` (as stored: float16 stays float16), checked for format."""
    path = Path(path)
    data = path.read_bytes()
    pos = 0

    def take(fmt: str):
        nonlocal pos
        size = struct.calcsize(fmt)
        if pos + size > len(data):
            raise CT2FormatError(f"{path}: truncated at byte {pos} (file has {len(data)})")
        (value,) = struct.unpack_from(fmt, data, pos)
        pos += size
        return value

    def string() -> str:
        nonlocal pos
        n = take("<H")
        raw = data[pos:pos + n]
        pos += n
        if len(raw) != n or not raw.endswith(b"\0"):
            raise CT2FormatError(f"{path}: malformed string at byte {pos - n}")
        return raw[:-1].decode("utf-8")

    version = take("<I")
    if version not in KNOWN_BINARY_VERSIONS:
        raise CT2FormatError(f"{path}: CTranslate2 model format version {version}; this reader knows version(s) "
                             f"{', '.join(map(str, KNOWN_BINARY_VERSIONS))} (sertk.zoo.ct2)")
    spec, revision = string(), take("<I")
    if spec not in KNOWN_SPECS or revision not in KNOWN_SPECS[spec]:
        known = ", ".join(f"{s} revision {'/'.join(map(str, r))}" for s, r in KNOWN_SPECS.items())
        raise CT2FormatError(f"{path}: model spec {spec!r} revision {revision}; this reader maps only {known}")
    model = CT2Model(path, version, spec, revision)
    for _ in range(take("<I")):
        name = string()
        shape = [take("<I") for _ in range(take("<B"))]
        type_id, nbytes = take("<B"), take("<I")
        if type_id not in _DTYPES:
            raise CT2FormatError(f"{path}: variable {name!r} has unknown type id {type_id}")
        dtype = _DTYPES[type_id]
        raw = data[pos:pos + nbytes]
        pos += nbytes
        count = 1
        for d in shape:
            count *= d
        if len(raw) != nbytes or nbytes != count * torch.empty((), dtype=dtype).element_size():
            raise CT2FormatError(f"{path}: variable {name!r}: {nbytes} bytes for shape {shape} of {dtype}")
        model.variables[name] = torch.frombuffer(bytearray(raw), dtype=dtype).reshape(shape).clone()
    for _ in range(take("<I")):
        alias = string()
        model.aliases[alias] = string()
    if pos != len(data):
        raise CT2FormatError(f"{path}: {len(data) - pos} unread bytes after the last alias")
    return model


def _scalar(model: CT2Model, name: str) -> int:
    if name not in model.variables:
        raise CT2FormatError(f"{model.path}: no {name!r}")
    return int(model.variables[name].reshape(-1)[0])


def whisper_dims(model: CT2Model) -> dict:
    """The ``WhisperConfig`` sizes a Whisper spec's tensors and settings imply."""
    v = model.variables
    for name, want in _WHISPER_FLAGS.items():
        if name in v and _scalar(model, name) != want:
            raise CT2FormatError(f"{model.path}: {name} = {_scalar(model, name)}; Whisper has {want}")
    layers = {side: len({m.group(1) for k in v if (m := re.match(rf"{side}/layer_(\d+)/", k))})
              for side in ("encoder", "decoder")}
    need = ["encoder/conv1/weight", "decoder/embeddings/weight", "encoder/layer_0/ffn/linear_0/weight",
            "decoder/layer_0/ffn/linear_0/weight", "encoder/position_encodings/encodings",
            "decoder/position_encodings/encodings"]
    missing = [k for k in need if k not in v]
    if missing:
        raise CT2FormatError(f"{model.path}: no {missing[0]!r} (not a complete Whisper spec)")
    d_model = v["encoder/conv1/weight"].shape[0]
    return {"vocab_size": v["decoder/embeddings/weight"].shape[0], "num_mel_bins": v["encoder/conv1/weight"].shape[1],
            "d_model": d_model, "encoder_layers": layers["encoder"], "decoder_layers": layers["decoder"],
            "encoder_attention_heads": _scalar(model, "encoder/num_heads"),
            "decoder_attention_heads": _scalar(model, "decoder/num_heads"),
            "encoder_ffn_dim": v["encoder/layer_0/ffn/linear_0/weight"].shape[0],
            "decoder_ffn_dim": v["decoder/layer_0/ffn/linear_0/weight"].shape[0],
            "max_source_positions": v["encoder/position_encodings/encodings"].shape[0],
            "max_target_positions": v["decoder/position_encodings/encodings"].shape[0]}


def _linear(src: str, dst: str) -> list[tuple[str, str]]:
    return [(f"{src}/weight", f"{dst}.weight"), (f"{src}/bias", f"{dst}.bias")]


def _norm(src: str, dst: str) -> list[tuple[str, str]]:
    return [(f"{src}/gamma", f"{dst}.weight"), (f"{src}/beta", f"{dst}.bias")]


def whisper_state_dict(model: CT2Model) -> dict[str, torch.Tensor]:
    """transformers' ``WhisperForConditionalGeneration`` state dict (float32) of a CTranslate2 Whisper model.

    Every stored tensor is used exactly once; settings (``num_heads``, flags)
    are checked in :func:`whisper_dims`; the output projection is the alias of
    the token embedding (tied), as in Whisper.
    """
    v = model.variables
    bad = sorted(k for k, t in v.items() if t.dtype not in _FLOATS and t.dim() > 0)
    if bad:
        raise CT2FormatError(f"{model.path}: quantised weights ({bad[0]}: {v[bad[0]].dtype}); only float16/bfloat16/"
                             f"float32 conversions map onto float weights exactly")
    dims = whisper_dims(model)
    pairs: list[tuple[str, str]] = [
        *_linear("encoder/conv1", "model.encoder.conv1"), *_linear("encoder/conv2", "model.encoder.conv2"),
        ("encoder/position_encodings/encodings", "model.encoder.embed_positions.weight"),
        *_norm("encoder/layer_norm", "model.encoder.layer_norm"),
        ("decoder/embeddings/weight", "model.decoder.embed_tokens.weight"),
        ("decoder/position_encodings/encodings", "model.decoder.embed_positions.weight"),
        *_norm("decoder/layer_norm", "model.decoder.layer_norm")]
    fused: list[tuple[str, list[str]]] = []  # (ct2 linear, [hf projections in stored order])
    for i in range(dims["encoder_layers"]):
        src, dst = f"encoder/layer_{i}", f"model.encoder.layers.{i}"
        pairs += [*_norm(f"{src}/self_attention/layer_norm", f"{dst}.self_attn_layer_norm"),
                  *_linear(f"{src}/self_attention/linear_1", f"{dst}.self_attn.out_proj"),
                  *_norm(f"{src}/ffn/layer_norm", f"{dst}.final_layer_norm"),
                  *_linear(f"{src}/ffn/linear_0", f"{dst}.fc1"), *_linear(f"{src}/ffn/linear_1", f"{dst}.fc2")]
        fused.append((f"{src}/self_attention/linear_0", [f"{dst}.self_attn.{p}_proj" for p in "qkv"]))
    for i in range(dims["decoder_layers"]):
        src, dst = f"decoder/layer_{i}", f"model.decoder.layers.{i}"
        pairs += [*_norm(f"{src}/self_attention/layer_norm", f"{dst}.self_attn_layer_norm"),
                  *_linear(f"{src}/self_attention/linear_1", f"{dst}.self_attn.out_proj"),
                  *_norm(f"{src}/attention/layer_norm", f"{dst}.encoder_attn_layer_norm"),
                  *_linear(f"{src}/attention/linear_0", f"{dst}.encoder_attn.q_proj"),
                  *_linear(f"{src}/attention/linear_2", f"{dst}.encoder_attn.out_proj"),
                  *_norm(f"{src}/ffn/layer_norm", f"{dst}.final_layer_norm"),
                  *_linear(f"{src}/ffn/linear_0", f"{dst}.fc1"), *_linear(f"{src}/ffn/linear_1", f"{dst}.fc2")]
        fused.append((f"{src}/self_attention/linear_0", [f"{dst}.self_attn.{p}_proj" for p in "qkv"]))
        fused.append((f"{src}/attention/linear_1", [f"{dst}.encoder_attn.{p}_proj" for p in "kv"]))
    used = {name for name, _ in pairs} | set(_WHISPER_FLAGS) | {"encoder/num_heads", "decoder/num_heads",
                                                                 "decoder/alignment_heads", "decoder/alignment_layer"}
    out = {}
    for src, dst in pairs:
        if src not in v:
            raise CT2FormatError(f"{model.path}: no {src!r} (not a complete Whisper spec)")
        out[dst] = v[src].float()
    for src, projections in fused:
        w, b = v[f"{src}/weight"].float(), v[f"{src}/bias"].float()
        used |= {f"{src}/weight", f"{src}/bias"}
        for proj, wp, bp in zip(projections, w.chunk(len(projections)), b.chunk(len(projections))):
            out[f"{proj}.weight"] = wp.clone()
            if proj.endswith("k_proj"):  # Whisper's keys have no bias: CTranslate2 stores zeros there
                if bp.abs().max() > 0:
                    raise CT2FormatError(f"{model.path}: {src}/bias has a non-zero key slice; Whisper's key "
                                         f"projection has no bias")
            else:
                out[f"{proj}.bias"] = bp.clone()
    if model.aliases.get("decoder/projection/weight", "decoder/embeddings/weight") != "decoder/embeddings/weight":
        raise CT2FormatError(f"{model.path}: the output projection is not tied to the token embedding")
    if "decoder/projection/weight" in v:  # stored instead of aliased: it must equal the embedding
        used.add("decoder/projection/weight")
        if not torch.equal(v["decoder/projection/weight"], v["decoder/embeddings/weight"]):
            raise CT2FormatError(f"{model.path}: decoder/projection/weight differs from the token embedding")
    unused = sorted(set(v) - used)
    if unused:
        raise CT2FormatError(f"{model.path}: {len(unused)} tensor(s) this mapping does not know, e.g. {unused[:3]}")
    return out


def whisper_from_ct2(model: CT2Model, token_ids: dict[str, int]):
    """A float32 ``WhisperForConditionalGeneration`` holding the CTranslate2 model's weights.

    ``token_ids``: ``eos`` (``<|endoftext|>``) and ``sot`` (``<|startoftranscript|>``), from the tokenizer.
    """
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    dims = whisper_dims(model)
    config = WhisperConfig(**dims, activation_function="gelu", scale_embedding=False, tie_word_embeddings=True,
                           bos_token_id=token_ids["eos"], eos_token_id=token_ids["eos"],
                           pad_token_id=token_ids["eos"], decoder_start_token_id=token_ids["sot"])
    with torch.device("meta"):  # no random init: every weight comes from the file
        hf = WhisperForConditionalGeneration(config)
    state = whisper_state_dict(model)
    missing, unexpected = hf.load_state_dict(state, strict=False, assign=True)
    missing = [k for k in missing if k != "proj_out.weight"]  # tied to the token embedding
    if missing or unexpected:
        raise CT2FormatError(f"{model.path}: the mapped weights do not fit WhisperForConditionalGeneration: "
                             f"missing {missing[:3]}, unexpected {unexpected[:3]}")
    hf.tie_weights()
    return hf.eval()
