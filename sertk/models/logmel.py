"""Fixed log-mel front-end shared by the students (Wav2Small, MobileNets).

The STFT is a frozen Conv1d whose kernels are the windowed cosine/sine bases,
so the whole front-end is plain Conv/MatMul in an ONNX graph (no STFT op
needed on the device) and the exported model takes raw 16 kHz audio.
"""
from __future__ import annotations

import math
import warnings

import torch
import torchaudio.functional as AF
from torch import nn

from sertk.models.encoder import lengths_to_mask, normalize_waveform


class LogMel(nn.Module):
    """Waveform (B, T) -> log-mel (B, 1, n_mels, frames), with frame counts.

    Per-utterance waveform normalisation (zero mean, unit variance over the real
    samples) makes the students gain-invariant, as the Dawn teacher's processor is;
    ``standardize`` then scales the log-mel of each utterance to zero mean and unit
    variance (one scalar pair over its real frames), so the first conv sees unit-range
    input from the first step (no input BatchNorm whose running statistics lag).
    No centre padding: frames = (T - n_fft) // hop + 1.
    """

    def __init__(self, sample_rate: int = 16000, n_fft: int = 64, hop: int = 32, n_mels: int = 26,
                 f_min: float = 0.0, f_max: float | None = None, eps: float = 1e-6, standardize: bool = True):
        super().__init__()
        self.standardize = standardize
        self.sample_rate, self.n_fft, self.hop, self.n_mels, self.eps = sample_rate, n_fft, hop, n_mels, eps
        n_freq = n_fft // 2 + 1
        window = torch.hann_window(n_fft, periodic=True, dtype=torch.float64)
        t = torch.arange(n_fft, dtype=torch.float64)
        k = torch.arange(n_freq, dtype=torch.float64)[:, None]
        cos = torch.cos(2 * math.pi * k * t / n_fft) * window
        sin = -torch.sin(2 * math.pi * k * t / n_fft) * window
        self.register_buffer("basis", torch.cat([cos, sin]).float()[:, None, :])  # (2F, 1, n_fft)
        with warnings.catch_warnings():  # 26 mels on 33 bins leaves the lowest filters empty, by design
            warnings.simplefilter("ignore", UserWarning)
            fb = AF.melscale_fbanks(n_freq, f_min, f_max or sample_rate / 2, n_mels, sample_rate,
                                    norm="slaney", mel_scale="slaney")
        self.register_buffer("mel_fb", fb.T.contiguous().float())  # (n_mels, F)

    def frames(self, lengths: torch.Tensor) -> torch.Tensor:
        return ((lengths - self.n_fft).div(self.hop, rounding_mode="floor") + 1).clamp(min=0)

    def forward(self, wav: torch.Tensor, lengths: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if wav.dim() != 2:
            raise ValueError(f"LogMel expects (batch, samples), got shape {tuple(wav.shape)}")
        if not torch.jit.is_tracing() and wav.shape[1] < self.n_fft:
            raise ValueError(f"LogMel: input of {wav.shape[1]} samples is shorter than one {self.n_fft}-point frame")
        # float32 even under autocast: a bf16 STFT and log would only add error, and cost little
        with torch.autocast(wav.device.type, enabled=False):
            return self._logmel(wav, lengths)

    def _logmel(self, wav: torch.Tensor, lengths: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        if lengths is None:
            wav = _normalize_full(wav)
        else:
            wav = normalize_waveform(wav, lengths)
        spec = nn.functional.conv1d(wav[:, None, :], self.basis, stride=self.hop)  # (B, 2F, frames)
        re, im = spec.chunk(2, dim=1)
        power = re * re + im * im
        mel = torch.matmul(self.mel_fb, power)  # (B, n_mels, frames)
        logmel = torch.log(mel + self.eps)
        if lengths is None:
            n_frames, mask = None, torch.ones_like(logmel[:, :1])
        else:
            n_frames = self.frames(lengths).clamp(max=logmel.shape[-1])
            mask = lengths_to_mask(n_frames, logmel.shape[-1])[:, None, :].to(logmel.dtype)
        if self.standardize:
            n = (mask.sum((1, 2)) * self.n_mels).clamp(min=1)[:, None, None]
            mean = (logmel * mask).sum((1, 2), keepdim=True) / n
            var = (((logmel - mean) * mask) ** 2).sum((1, 2), keepdim=True) / n
            logmel = (logmel - mean) / torch.sqrt(var + 1e-5)
        return (logmel * mask)[:, None], n_frames


def _normalize_full(wav: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Per-utterance normalisation when every row is a whole utterance (the exported path)."""
    mean = wav.mean(1, keepdim=True)
    var = ((wav - mean) ** 2).mean(1, keepdim=True)
    return (wav - mean) / torch.sqrt(var + eps)
