"""Whisper's audio encoder as a sertk speech encoder: waveform in, layer hidden states out.

Any Whisper checkpoint (``openai/whisper-tiny.en`` ... ``openai/whisper-large-v3``,
or a local dir such as the zoo's ``zoo/whisper_tiny_en``) loads here with its own
feature extractor, whose log-mel front end (n_fft, hop, mel filters, window) is
computed in torch on the model's device. Only the encoder's weights are kept.

Window policy (``window:`` in an encoder spec; docs/zoo.md, "Whisper"):

- ``clip`` (default): each clip's log-mel is computed as Whisper's own 30 s
  window computes it (the clip followed by silence; the dynamic-range floor
  taken from the frames the clip reaches), then cut to the clip's frames,
  rounded up to an even count (two mel frames per encoder frame). The encoder
  runs on those frames only: positions 0..T-1 of its table, and attention
  masked to each clip's own frames. An utterance's features are therefore
  the same alone or in any batch, and a 3 s clip costs a tenth of a window.
- ``full``: every clip is padded (or cut) to the checkpoint's window
  (30 s, 3,000 mel frames) and the encoder runs exactly as trained; the clip's
  frames of the output are returned. Batch-independent by construction, about
  16x slower than ``clip`` on 2-4 s clips.

Clips longer than the window are cut to it under either policy (Whisper's
positional table ends there). ``hidden_states`` follows transformers'
convention for Whisper: the embedding output, each layer's output, the last
one after the encoder's final layer norm (so ``hidden_states[-1]`` is
``last_hidden_state``, what CTranslate2's ``encode`` returns).
"""
from __future__ import annotations

import contextlib
import math

import torch
from torch import nn
from transformers.modeling_outputs import BaseModelOutput

WINDOWS = ("clip", "full")


def is_whisper(spec: dict) -> bool:
    """Whether an encoder spec names a Whisper model (local config type or a checkpoint's config)."""
    if spec.get("type"):
        return spec["type"] == "whisper"
    if not spec.get("name_or_path"):
        return False
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(spec["name_or_path"], revision=spec.get("revision")).model_type == "whisper"


class WhisperLogMel(nn.Module):
    """Waveforms (B, T) at the extractor's rate -> Whisper log-mel (B, n_mels, frames), with frame counts.

    Built from a ``WhisperFeatureExtractor``: the same STFT, mel filters and
    normalisation as its ``__call__`` (tested against it), without its numpy
    round trip, so it runs batched on any device.
    """

    def __init__(self, feature_extractor, window: str = "clip"):
        super().__init__()
        if window not in WINDOWS:
            raise ValueError(f"whisper window {window!r}: use one of {', '.join(WINDOWS)}")
        fe = feature_extractor
        self.window = window
        self.n_fft, self.hop = int(fe.n_fft), int(fe.hop_length)
        self.sampling_rate = int(fe.sampling_rate)
        self.n_samples = int(fe.n_samples)
        self.max_frames = self.n_samples // self.hop
        self.n_mels = int(fe.feature_size)
        self.register_buffer("hann", torch.hann_window(self.n_fft), persistent=False)
        self.register_buffer("mel_filters", torch.as_tensor(fe.mel_filters, dtype=torch.float32).T.contiguous(),
                             persistent=False)  # (n_mels, n_fft // 2 + 1)

    def clip_frames(self, lengths: torch.Tensor) -> torch.Tensor:
        """Mel frames a clip starts (at most the window's), rounded up to even: two per encoder frame."""
        n = torch.div(lengths.clamp(min=1, max=self.n_samples) + 2 * self.hop - 1, 2 * self.hop,
                      rounding_mode="floor") * 2
        return n.clamp(max=self.max_frames)

    def frames(self, lengths: torch.Tensor) -> torch.Tensor:
        """Mel frames computed per clip: its own (``clip``) or the whole window (``full``)."""
        return torch.full_like(lengths, self.max_frames) if self.window == "full" else self.clip_frames(lengths)

    def forward(self, wav: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # float32 under AMP too, as the extractor computes it: an fp16 mel product floors a silent
        # clip's 1e-10 to 0 (log -inf, then NaN) and bf16 moves values by up to ~4e-3
        with torch.autocast(device_type=wav.device.type, enabled=False):
            return self._log_mel(wav, lengths)

    def _log_mel(self, wav: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        lengths = lengths.clamp(max=self.n_samples)
        n_keep = self.frames(lengths)
        # every kept frame sees silence after its clip; at the window's end the STFT's reflection, as Whisper's
        width = min(int(n_keep.max()) * self.hop + self.n_fft, self.n_samples)
        wav = wav[:, :min(wav.shape[1], self.n_samples)].float()
        real = torch.arange(wav.shape[1], device=wav.device)[None, :] < lengths[:, None]
        wav = nn.functional.pad(wav * real, (0, max(0, width - wav.shape[1])))
        stft = torch.stft(wav, self.n_fft, self.hop, window=self.hann, return_complex=True)
        # the floor (max - 8) over the frames whose window reaches the clip, as over Whisper's whole window
        touch = torch.div(lengths + self.n_fft // 2 - 1, self.hop, rounding_mode="floor") + 1
        n_all = min(max(int(n_keep.max()), int(touch.max())), self.max_frames, stft.shape[-1])
        power = (stft[..., :n_all].abs() ** 2).contiguous()
        log_spec = torch.clamp(self.mel_filters @ power, min=1e-10).log10()  # (B, n_mels, F)
        f = torch.arange(n_all, device=wav.device)
        reach = (f[None, :] < touch[:, None])[:, None, :]
        peak = log_spec.masked_fill(~reach, -math.inf).amax(dim=(1, 2), keepdim=True)
        log_spec = (torch.maximum(log_spec, peak - 8.0) + 4.0) / 4.0
        log_spec = log_spec[..., :int(n_keep.max())]
        keep = (f[None, :int(n_keep.max())] < n_keep[:, None])[:, None, :]
        return log_spec * keep, n_keep


class WhisperSpeechEncoder(nn.Module):
    """A Whisper encoder that takes waveforms, with the interface sertk's speech encoders share.

    ``forward(wav, attention_mask=None, output_hidden_states=False)`` (a
    ``BaseModelOutput``), ``config``, ``_get_feat_extract_output_lengths`` and
    ``freeze_feature_encoder`` (the two input convolutions) behave as
    transformers' Wav2Vec2/WavLM models do, so :class:`sertk.models.encoder.SpeechEncoder`,
    the Dawn teacher and the feature cache use either without a special case.
    """

    normalizes_waveform = False  # Whisper's extractor applies no waveform normalisation; its log-mel has its own

    def __init__(self, encoder: nn.Module, front: WhisperLogMel):
        super().__init__()
        self.encoder = encoder
        self.front = front
        self.config = encoder.config

    @property
    def window(self) -> str:
        return self.front.window

    @classmethod
    def from_pretrained(cls, name_or_path: str, revision: str | None = None, window: str = "clip",
                        **kwargs) -> "WhisperSpeechEncoder":
        """The encoder weights and the feature extractor of a Whisper checkpoint (hub name or local dir)."""
        from transformers import WhisperFeatureExtractor, WhisperForAudioClassification
        from transformers.utils import logging as hf_logging

        with _quiet(hf_logging):  # the classification head it adds is not used (and said to be new)
            model = WhisperForAudioClassification.from_pretrained(name_or_path, revision=revision, **kwargs)
        try:
            fe = WhisperFeatureExtractor.from_pretrained(name_or_path, revision=revision)
        except OSError as e:
            raise OSError(f"{name_or_path}: a Whisper checkpoint needs its preprocessor_config.json "
                          f"(WhisperFeatureExtractor): {e}") from e
        return cls(model.encoder, WhisperLogMel(fe, window))

    @classmethod
    def from_config(cls, config: dict, window: str = "clip") -> "WhisperSpeechEncoder":
        """A randomly initialised encoder from a local config (tests, smoke runs); default 16 kHz front end."""
        from transformers import WhisperConfig, WhisperFeatureExtractor
        from transformers.models.whisper.modeling_whisper import WhisperEncoder

        cfg = WhisperConfig(**config)
        return cls(WhisperEncoder(cfg), WhisperLogMel(WhisperFeatureExtractor(feature_size=cfg.num_mel_bins), window))

    def _get_feat_extract_output_lengths(self, sample_lengths: torch.Tensor) -> torch.Tensor:
        """Encoder frames of each clip (two mel frames each), under either window policy."""
        return torch.div(self.front.clip_frames(torch.as_tensor(sample_lengths)), 2, rounding_mode="floor")

    def freeze_feature_encoder(self) -> None:
        """Freeze the two input convolutions (the analogue of wav2vec 2.0's CNN feature encoder)."""
        for conv in (self.encoder.conv1, self.encoder.conv2):
            for p in conv.parameters():
                p.requires_grad_(False)

    def forward(self, wav: torch.Tensor, attention_mask: torch.Tensor | None = None,
                output_hidden_states: bool = False) -> BaseModelOutput:
        lengths = (attention_mask.sum(1) if attention_mask is not None
                   else torch.full((wav.shape[0],), wav.shape[1], device=wav.device, dtype=torch.long))
        mel, _ = self.front(wav, lengths)
        enc = self.encoder
        mel = mel.to(enc.conv1.weight.dtype)
        x = nn.functional.gelu(enc.conv1(mel))
        x = nn.functional.gelu(enc.conv2(x)).transpose(1, 2).contiguous()  # (B, T, D): safetensors stores it
        width = x.shape[1]
        if width > enc.embed_positions.num_embeddings:
            raise ValueError(f"whisper encoder: {width} frames exceed its {enc.embed_positions.num_embeddings} positions")
        x = x + enc.embed_positions.weight[:width].to(x.dtype)
        x = nn.functional.dropout(x, p=enc.dropout, training=self.training)
        n_frames = self._get_feat_extract_output_lengths(lengths).clamp(max=width)
        mask = None
        if self.window == "clip" and bool((n_frames < width).any()):  # attend to each clip's own frames only
            keep = torch.arange(width, device=x.device)[None, :] < n_frames[:, None]
            mask = torch.zeros(keep.shape, dtype=x.dtype, device=x.device).masked_fill(~keep, torch.finfo(x.dtype).min)
            mask = mask[:, None, None, :]
        states = [x]
        for layer in enc.layers:
            x = layer(x, mask)
            states.append(x)
        x = enc.layer_norm(x)
        states[-1] = x
        return BaseModelOutput(last_hidden_state=x, hidden_states=tuple(states) if output_hidden_states else None)


@contextlib.contextmanager
def _quiet(hf_logging):
    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
