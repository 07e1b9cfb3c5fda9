"""MobileNet-V3/V4 students on log-mel input with an A/V/D head (timm architectures).

The image network sees the log-mel spectrogram as a one-channel image
(n_mels x frames); padded frames are zeroed by the front-end. Built from
scratch (no ImageNet weights: the hub is not used), outputs in sertk's
utt2avd order (arousal, valence, dominance).
"""
from __future__ import annotations

import torch
from torch import nn

from sertk.models.logmel import LogMel

ARCHS = {  # sertk name -> timm name
    "mobilenetv3_small": "mobilenetv3_small_100",
    "mobilenetv3_large": "mobilenetv3_large_100",
    "mobilenetv4_conv_small": "mobilenetv4_conv_small",
    "mobilenetv4_conv_medium": "mobilenetv4_conv_medium",
}


class MobileNetStudent(nn.Module):
    """forward(wav (B, T), lengths (B,) or None) -> (B, 3) unclipped A/V/D."""

    def __init__(self, arch: str = "mobilenetv3_small", n_mels: int = 64, n_fft: int = 400, hop: int = 160,
                 sample_rate: int = 16000, num_outputs: int = 3, drop_rate: float = 0.0):
        super().__init__()
        if arch not in ARCHS:
            raise ValueError(f"MobileNetStudent: unknown arch {arch!r}; choose from {', '.join(ARCHS)}")
        self.arch = arch
        import timm  # only the MobileNet students need it (a second of import time)

        self.frontend = LogMel(sample_rate, n_fft, hop, n_mels)
        self.net = timm.create_model(ARCHS[arch], pretrained=False, in_chans=1, num_classes=num_outputs,
                                     drop_rate=drop_rate)

    def forward(self, wav: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        x, _ = self.frontend(wav, lengths)
        return self.net(x)
