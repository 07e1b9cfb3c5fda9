"""Speech foundation-model encoders (Wav2Vec2, WavLM, HuBERT, Whisper) from one spec.

The same code path loads a hub checkpoint in a real recipe
(``name_or_path: microsoft/wavlm-large``, optional ``revision``) and builds a
small model from a local config in mini_emo and tests
(``type: wav2vec2, config: {hidden_size: 64, ...}``). Remote code is never run.
A Whisper checkpoint (``openai/whisper-*`` or a local dir) gives its encoder
with its own log-mel front end (sertk.models.whisper_encoder; ``window: clip``
or ``full``), behind the same interface as the waveform encoders.

An utterance's features do not depend on what it is batched with: padded
frames are masked in the transformer, and an encoder whose conv front end
normalises over time (group norm: wav2vec2-base, HuBERT/WavLM base) runs that
front end on each utterance's real samples (:func:`unpadded_front_end`).
"""
from __future__ import annotations

import contextlib

import torch
from torch import nn
from transformers import AutoConfig, AutoModel

from sertk.models.whisper_encoder import WhisperSpeechEncoder, is_whisper


# the keys that say which model an encoder spec builds (tasks add their own: layer, freeze, normalize, ...)
SPEC_KEYS = frozenset({"name_or_path", "revision", "kwargs", "type", "config", "window"})


def build_encoder(spec: dict) -> nn.Module:
    """Return a transformers audio encoder described by ``spec``: waveforms in, hidden states out."""
    if spec.get("window") is not None and not is_whisper(spec):
        raise ValueError(f"encoder {spec.get('name_or_path') or spec.get('type')}: 'window' applies to Whisper "
                         f"encoders only")
    if is_whisper(spec):
        window = spec.get("window") or "clip"
        if spec.get("name_or_path"):
            return WhisperSpeechEncoder.from_pretrained(spec["name_or_path"], spec.get("revision"), window,
                                                        **spec.get("kwargs", {}))
        return WhisperSpeechEncoder.from_config(spec.get("config", {}), window)
    if spec.get("name_or_path"):
        return AutoModel.from_pretrained(
            spec["name_or_path"], revision=spec.get("revision"), trust_remote_code=False,
            **spec.get("kwargs", {}))
    model_type = spec.get("type")
    if not model_type:
        raise ValueError("encoder spec needs 'name_or_path' (a checkpoint) or 'type' + 'config' (a local model)")
    config = AutoConfig.for_model(model_type, **spec.get("config", {}))
    return AutoModel.from_config(config)


def checkpoint_normalizes(spec: dict) -> bool:
    """Whether the checkpoint's own feature extractor normalises each waveform (``do_normalize``);
    True for local configs and checkpoints without one (wav2vec 2.0's default), False for Whisper
    (its extractor leaves the waveform as it is)."""
    if (spec.get("type") or spec.get("name_or_path")) and is_whisper(spec):
        return False
    if not spec.get("name_or_path"):
        return True
    from transformers import AutoFeatureExtractor
    try:
        fe = AutoFeatureExtractor.from_pretrained(spec["name_or_path"], revision=spec.get("revision"))
    except (OSError, ValueError):
        return True
    return bool(getattr(fe, "do_normalize", True))


def pads_leak(config) -> bool:
    """Whether zero padding moves an encoder's outputs on the real frames although they are masked: a
    group-norm conv front end (``feat_extract_norm: group``, e.g. wav2vec2-base) normalises each channel
    over the whole padded waveform (tiny WavLMs move by 0.8-3 next to a longer utterance)."""
    return getattr(config, "feat_extract_norm", None) == "group"


@contextlib.contextmanager
def unpadded_front_end(model: nn.Module, lengths: torch.Tensor):
    """While open, ``model.feature_extractor`` (the conv front end) of a :func:`pads_leak` encoder runs on
    each waveform's first ``lengths`` samples only, waveforms of one length sharing a call, and its
    frames are zero-padded to the batch's; the transformer after it stays batched (call the model with
    the attention mask, which masks those frames), so an utterance's outputs are its outputs alone.
    Does nothing for other encoders: per-frame norms already make them batch-independent."""
    fe = getattr(model, "feature_extractor", None)
    if fe is None or not pads_leak(model.config):
        yield
        return
    whole = fe.forward

    def forward(input_values: torch.Tensor) -> torch.Tensor:
        n = lengths.to(input_values.device).clamp(max=input_values.shape[1])
        pieces: list[torch.Tensor | None] = [None] * len(n)
        for m in n.unique().tolist():
            rows = (n == m).nonzero().flatten()
            for r, out in zip(rows.tolist(), whole(input_values[rows, :m])):
                pieces[r] = out
        width = input_values.shape[1]  # the conv stack's frames over the padded width (no adapter)
        for k, st in zip(model.config.conv_kernel, model.config.conv_stride):
            width = (width - k) // st + 1
        return torch.stack([nn.functional.pad(p, (0, width - p.shape[-1])) for p in pieces])

    fe.forward = forward  # an instance attribute for this call only: weights and state dict untouched
    try:
        yield
    finally:
        del fe.forward


def encode(model: nn.Module, wav: torch.Tensor, lengths: torch.Tensor, **kwargs):
    """``model(wav, attention_mask=...)`` with each waveform's outputs independent of its batch."""
    mask = lengths_to_mask(lengths, wav.shape[1]).long()
    with unpadded_front_end(model, lengths):
        return model(wav, attention_mask=mask, **kwargs)


def disable_layerdrop(model: nn.Module) -> None:
    """Turn LayerDrop off: transformers 5 records hidden states from the layers that ran, so a
    dropped layer would shift every later index and break layer selection in training mode."""
    if getattr(model.config, "layerdrop", 0.0):
        model.config.layerdrop = 0.0


def frame_lengths(encoder: nn.Module, sample_lengths: torch.Tensor) -> torch.Tensor:
    """Number of encoder frames produced for each waveform length."""
    return encoder._get_feat_extract_output_lengths(sample_lengths).long()


def lengths_to_mask(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    return torch.arange(max_len, device=lengths.device)[None, :] < lengths[:, None]


def normalize_waveform(wav: torch.Tensor, lengths: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Zero-mean, unit-variance per utterance over its real samples (padding stays 0).

    This is what Wav2Vec2FeatureExtractor(do_normalize=True) does, done on the
    tensor so batched and single-utterance inputs give the same result.
    """
    mask = lengths_to_mask(lengths, wav.shape[1]).to(wav.dtype)
    n = mask.sum(1, keepdim=True).clamp(min=1)
    mean = (wav * mask).sum(1, keepdim=True) / n
    var = (((wav - mean) * mask) ** 2).sum(1, keepdim=True) / n
    return (wav - mean) / torch.sqrt(var + eps) * mask


class LayerSelector(nn.Module):
    """Picks the hidden states of one layer, or a learned softmax-weighted sum (SUPERB)."""

    def __init__(self, num_layers: int, layer: int | str = "last"):
        super().__init__()
        self.layer = layer
        self.weights = nn.Parameter(torch.zeros(num_layers)) if layer == "weighted" else None

    def forward(self, hidden_states: tuple[torch.Tensor, ...]) -> torch.Tensor:
        if self.layer == "last":
            return hidden_states[-1]
        if self.layer == "weighted":
            stacked = torch.stack(hidden_states, 0)
            w = torch.softmax(self.weights, 0).view(-1, 1, 1, 1)
            return (w * stacked).sum(0)
        return hidden_states[int(self.layer)]


class SpeechEncoder(nn.Module):
    """Waveform -> frame features of a chosen layer, with frame lengths.

    ``freeze: true`` keeps every encoder weight fixed (and in eval mode) so
    that its features can be cached and the weights stay bit-identical.
    """

    def __init__(self, spec: dict):
        super().__init__()
        self.model = build_encoder(spec)
        disable_layerdrop(self.model)
        self.normalize = spec["normalize"] if spec.get("normalize") is not None else checkpoint_normalizes(spec)
        self.frozen = spec.get("freeze", False)
        n_layers = self.model.config.num_hidden_layers + 1  # + the CNN/embedding output
        layer = spec.get("layer", "last")
        if layer not in ("last", "weighted") and not 0 <= int(layer) < n_layers:
            raise ValueError(f"encoder {spec.get('name_or_path') or spec.get('type')}: layer {layer} does not exist "
                             f"(it has layers 0..{n_layers - 1}; 0 is the CNN/embedding output)")
        self.selector = LayerSelector(n_layers, layer)
        self.hidden_size = self.model.config.hidden_size
        if self.frozen:
            for p in self.model.parameters():
                p.requires_grad_(False)
        elif spec.get("freeze_feature_encoder", True) and hasattr(self.model, "freeze_feature_encoder"):
            self.model.freeze_feature_encoder()

    def train(self, mode: bool = True):
        super().train(mode)
        if self.frozen:
            self.model.eval()
        return self

    def forward(self, wav: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.normalize:
            wav = normalize_waveform(wav, lengths)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            out = encode(self.model, wav, lengths, output_hidden_states=True)
        feats = self.selector(out.hidden_states)
        return feats, frame_lengths(self.model, lengths).clamp(max=feats.shape[1])
