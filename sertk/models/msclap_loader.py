"""MS-CLAP 2023 checkpoints (microsoft/CLAP, ``CLAP_weights_2023.pth``) as a model the zero-shot scorer can use.

MS-CLAP 2023 pairs an HTSAT audio encoder with a GPT-2 text encoder. Its
audio tower is the HTSAT that transformers' ``ClapAudioModel`` implements, so
those weights are mapped onto it key by key (``qkv`` split into query, key and
value; ``norm1``/``norm2``, ``mlp.fc1``/``fc2``, ``bn0`` renamed). Its text
tower (GPT-2, the last token's hidden state) and its projections (linear,
GELU, linear, residual, LayerNorm) are not ``ClapModel``'s (RoBERTa, a
two-layer ReLU MLP), so the whole checkpoint cannot become a ``ClapModel``:
:class:`MsClapModel` holds ``ClapAudioModel`` + ``GPT2Model`` + MS-CLAP's
projections and offers ``ClapModel``'s embedding interface
(``get_audio_features``/``get_text_features`` with a normalised
``pooler_output``, ``logit_scale_a``, ``config.projection_dim``).

Left out: MS-CLAP's waveform front end (torchlibrosa STFT and Slaney log-mel,
the same computation as ``ClapFeatureExtractor``'s ``rand_trunc`` path, built by
:func:`feature_extractor`) and the AudioSet head (``head``, ``tscam_conv``),
which no embedding uses.
"""
from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import torch
from torch import nn
# transformers is imported where it is used: the zsfuse task reads FRONT_END at config check

# MS-CLAP 2023 (msclap configs/config_2023.yml and its HTSAT's own config): 7 s at 44.1 kHz, 64 mels
FRONT_END = {"sampling_rate": 44100, "feature_size": 64, "hop_length": 320, "fft_window_size": 1024,
             "max_length_s": 7, "frequency_min": 50, "frequency_max": 14000}
HTSAT = {"spec_size": 256, "patch_stride": 4, "text_heads": 12, "text_len": 77}
IGNORED = re.compile(r"^audio_encoder\.base\.htsat\.(spectrogram_extractor|logmel_extractor|head|tscam_conv)\.|"
                     r"\.attn_mask$|\.relative_position_index$|"
                     r"^caption_encoder\.base\.h\.\d+\.attn\.(bias|masked_bias)$")
AUDIO_RENAMES = [("attn.proj.", "attention.output.dense."), ("attn.relative_position_bias_table",
                  "attention.self.relative_position_bias_table"), ("mlp.fc1.", "intermediate.dense."),
                 ("mlp.fc2.", "output.dense."), ("norm1.", "layernorm_before."), ("norm2.", "layernorm_after."),
                 ("bn0.", "batch_norm.")]


class MsClapProjection(nn.Module):
    """MS-CLAP's projection: ``LayerNorm(h + linear2(gelu(h)))`` with ``h = linear1(x)`` (dropout off)."""

    def __init__(self, d_in: int, d_out: int):
        super().__init__()
        self.linear1 = nn.Linear(d_in, d_out, bias=False)
        self.linear2 = nn.Linear(d_out, d_out, bias=False)
        self.layer_norm = nn.LayerNorm(d_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.linear1(x)
        return self.layer_norm(h + self.linear2(nn.functional.gelu(h)))


class MsClapModel(nn.Module):
    """HTSAT (``ClapAudioModel``) + GPT-2 with MS-CLAP's projections, behind ``ClapModel``'s embedding calls."""

    def __init__(self, audio_config, text_config, projection_dim: int):
        from transformers import ClapAudioModel, GPT2Model
        super().__init__()
        self.audio_model = ClapAudioModel(audio_config)
        self.audio_projection = MsClapProjection(audio_config.hidden_size, projection_dim)
        self.text_model = GPT2Model(text_config)
        self.text_projection = MsClapProjection(text_config.n_embd, projection_dim)
        self.logit_scale = nn.Parameter(torch.zeros([]))
        self.config = SimpleNamespace(projection_dim=projection_dim, audio_config=audio_config,
                                      text_config=text_config)

    @property
    def logit_scale_a(self) -> torch.Tensor:
        """MS-CLAP's one learnt scale (``exp`` of it multiplies the cosine), under ``ClapModel``'s name."""
        return self.logit_scale

    def get_audio_features(self, input_features: torch.Tensor, is_longer=None):
        from transformers.modeling_outputs import BaseModelOutputWithPooling
        pooled = self.audio_model(input_features=input_features).pooler_output
        return BaseModelOutputWithPooling(pooler_output=nn.functional.normalize(self.audio_projection(pooled), dim=-1))

    def get_text_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None):
        """MS-CLAP's text embedding: the hidden state at the last token that is not id 0 (its pad, '!')."""
        from transformers.modeling_outputs import BaseModelOutputWithPooling
        hidden = self.text_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        last = torch.ne(input_ids, 0).sum(-1) - 1
        out = self.text_projection(hidden[torch.arange(len(hidden), device=hidden.device), last])
        return BaseModelOutputWithPooling(pooler_output=nn.functional.normalize(out, dim=-1))


def text_inputs(tokenizer, texts: list[str], max_length: int = HTSAT["text_len"]) -> dict:
    """Token ids as MS-CLAP makes them for GPT-2: ' <|endoftext|>' appended, cut to ``max_length``."""
    return tokenizer([t + " <|endoftext|>" for t in texts], truncation=True, max_length=max_length,
                     padding=True, return_tensors="pt")


def feature_extractor(**overrides):
    """MS-CLAP 2023's log-mel front end as a ``ClapFeatureExtractor`` (``repeat`` padding, as msclap's loader)."""
    from transformers import ClapFeatureExtractor
    f = {**FRONT_END, **overrides}
    return ClapFeatureExtractor(**f, truncation="rand_trunc", padding="repeat")


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of an MS-CLAP checkpoint (``{'model': state_dict}``, as msclap saves it, or a bare one)."""
    obj = torch.load(Path(path), map_location="cpu", weights_only=True)
    sd = obj.get("model", obj) if isinstance(obj, dict) else None
    if not isinstance(sd, dict) or not any(k.startswith("audio_encoder.") for k in sd):
        raise ValueError(f"{path}: not an MS-CLAP checkpoint (no 'model' state dict with audio_encoder.* keys)")
    return sd


def map_state_dict(sd: dict[str, torch.Tensor], where: str = "checkpoint") -> dict[str, torch.Tensor]:
    """MS-CLAP key -> :class:`MsClapModel` key (qkv split in three); unknown keys are an error."""
    out = {}
    for key, value in sd.items():
        if IGNORED.search(key):
            continue
        if key == "logit_scale":
            out[key] = value
        elif key.startswith("caption_encoder.base."):
            out["text_model." + key[len("caption_encoder.base."):]] = value
        elif key.startswith("caption_encoder.projection."):
            out["text_projection." + key[len("caption_encoder.projection."):]] = value
        elif key.startswith("audio_encoder.projection."):
            out["audio_projection." + key[len("audio_encoder.projection."):]] = value
        elif key.startswith("audio_encoder.base.htsat."):
            k = key[len("audio_encoder.base.htsat."):]
            for old, new in AUDIO_RENAMES:
                k = k.replace(old, new)
            k = "audio_model.audio_encoder." + k
            if ".attn.qkv." in k:
                for part, chunk in zip(("query", "key", "value"), value.chunk(3, dim=0)):
                    out[k.replace("attn.qkv", f"attention.self.{part}")] = chunk
            else:
                out[k] = value
        else:
            raise ValueError(f"{where}: unexpected key {key!r} for an MS-CLAP 2023 checkpoint (HTSAT + GPT-2)")
    return out


def configs_from(sd: dict[str, torch.Tensor], spec_size: int, patch_stride: int, text_heads: int) -> tuple:
    """(ClapAudioConfig, GPT2Config, projection size): the towers' sizes read from the tensors; what tensors
    do not show (input size, stride, GPT-2 heads) comes from the arguments."""
    from transformers import ClapAudioConfig, GPT2Config
    a = "audio_encoder.base.htsat."
    blocks = sorted({tuple(map(int, m.groups())) for k in sd
                     if (m := re.match(re.escape(a) + r"layers\.(\d+)\.blocks\.(\d+)\.", k))})
    layers = sorted({i for i, _ in blocks})
    heads = [sd[f"{a}layers.{i}.blocks.0.attn.relative_position_bias_table"].shape[1] for i in layers]
    table = sd[f"{a}layers.0.blocks.0.attn.relative_position_bias_table"].shape[0]
    proj = sd[f"{a}patch_embed.proj.weight"]
    fc1 = sd[f"{a}layers.0.blocks.0.mlp.fc1.weight"]
    audio = ClapAudioConfig(
        spec_size=spec_size, num_mel_bins=sd[f"{a}bn0.weight"].shape[0], patch_size=proj.shape[-1],
        patch_stride=[patch_stride, patch_stride], patch_embeds_hidden_size=proj.shape[0],
        depths=[sum(1 for i, _ in blocks if i == layer) for layer in layers], num_attention_heads=heads,
        window_size=int(round((table ** 0.5 + 1) / 2)), mlp_ratio=fc1.shape[0] / fc1.shape[1],
        hidden_size=sd[f"{a}norm.weight"].shape[0], enable_fusion=False)
    t = "caption_encoder.base."
    n_layer = len({int(m.group(1)) for k in sd if (m := re.match(re.escape(t) + r"h\.(\d+)\.", k))})
    wte, wpe = sd[f"{t}wte.weight"], sd[f"{t}wpe.weight"]
    text = GPT2Config(vocab_size=wte.shape[0], n_positions=wpe.shape[0], n_embd=wte.shape[1], n_layer=n_layer,
                      n_head=text_heads, n_inner=sd[f"{t}h.0.mlp.c_fc.weight"].shape[1],
                      bos_token_id=wte.shape[0] - 1, eos_token_id=wte.shape[0] - 1)
    return audio, text, sd["audio_encoder.projection.linear1.weight"].shape[0]


def load_msclap(path: str | Path, spec_size: int = HTSAT["spec_size"], patch_stride: int = HTSAT["patch_stride"],
                text_heads: int = HTSAT["text_heads"]) -> MsClapModel:
    """An MS-CLAP 2023 checkpoint as an eval-mode :class:`MsClapModel`; every model tensor must be filled."""
    sd = read_state_dict(path)
    try:
        audio, text, dim = configs_from(sd, spec_size, patch_stride, text_heads)
    except KeyError as e:
        raise ValueError(f"{path}: MS-CLAP checkpoint without {e.args[0]!r}") from None
    model = MsClapModel(audio, text, dim)
    mapped = map_state_dict(sd, str(path))
    own = model.state_dict()
    computed = {k for k in own if k.endswith("relative_position_index")}  # buffers the model builds itself
    missing = sorted(set(own) - set(mapped) - computed)
    extra = sorted(set(mapped) - set(own))
    if missing or extra:
        raise ValueError(f"{path}: MS-CLAP tensors do not fit the model: missing {missing[:5]}, "
                         f"unexpected {extra[:5]}")
    bad = [k for k, v in mapped.items() if v.shape != own[k].shape]
    if bad:
        raise ValueError(f"{path}: shape mismatch for {bad[:5]} (spec_size, patch_stride or text_heads wrong?)")
    model.load_state_dict(mapped, strict=False)
    return model.eval()
