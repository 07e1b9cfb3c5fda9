"""Wav2Small: a ~72K (or ~17K) parameter A/V/D regressor distilled from a Wav2Vec2 teacher.

raw 16 kHz -> per-utterance normalisation -> fixed 64-point STFT (hop 32) ->
26 log-mel -> 7 x (conv3x3 + BN + ReLU) with one 2x2 max-pool (after the first by default:
half the compute of pooling after the third, same parameters) ->
per-frame channel Gram matrix (C x C, frequency summed out) -> attention pooling
over time -> linear A/V/D. Outputs follow sertk's utt2avd order
(arousal, valence, dominance).

Widths: ``channels: 13`` is the released layout (~17K parameters with a C-wide
value projection;
sertk's head makes it ~12K), ``channels: 29`` (``"paper"``) gives ~72K parameters.
"""
from __future__ import annotations

import torch
from torch import nn

from sertk.models.encoder import lengths_to_mask
from sertk.models.logmel import LogMel

OUTPUT_NAMES = ("arousal", "valence", "dominance")
WIDTHS = {"paper": 29, "released": 13}  # 29 -> ~72K parameters; 13 -> ~12K


def _block(cin: int, cout: int) -> nn.Sequential:
    conv = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")  # keeps the scale through 7 ReLUs
    return nn.Sequential(conv, nn.BatchNorm2d(cout), nn.ReLU())


class Wav2Small(nn.Module):
    """forward(wav (B, T), lengths (B,) or None) -> (B, 3) unclipped A/V/D."""

    def __init__(self, channels: int | str = 13, n_mels: int = 26, n_fft: int = 64, hop: int = 32,
                 num_layers: int = 7, pool_after: int = 1, sample_rate: int = 16000, num_outputs: int = 3):
        super().__init__()
        c = WIDTHS.get(channels, channels) if isinstance(channels, str) else int(channels)
        if not isinstance(c, int) or c < 1:
            raise ValueError(f"Wav2Small: channels must be a positive int or one of {sorted(WIDTHS)}, got {channels!r}")
        if not 1 <= pool_after <= num_layers:
            raise ValueError(f"Wav2Small: pool_after={pool_after} must lie in 1..num_layers={num_layers}")
        self.channels, self.pool_after = c, pool_after
        self.frontend = LogMel(sample_rate, n_fft, hop, n_mels)
        self.convs = nn.ModuleList([_block(1 if i == 0 else c, c) for i in range(num_layers)])
        # NHWC: oneDNN's kernels for these narrow (13-29 channel) convs run ~1.3x faster, in training
        # and inference; the weights' values and names are unchanged (checkpoints load either way)
        self.convs.to(memory_format=torch.channels_last)
        self.pool = nn.MaxPool2d(2)
        g = c * c
        self.attn = nn.Linear(g, 1)        # attention score of each frame
        self.value = nn.Linear(g, c)       # pooled Gram -> C-dim value
        self.out = nn.Linear(c, num_outputs)

    def forward(self, wav: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        x, n = self.frontend(wav, lengths)  # (B, 1, M, T)
        x, n = self._conv_stack(x, n)
        gram = self._frame_gram(x)  # (B, T, C*C)
        # the value projection is linear and the weights sum to 1: projecting the pooled Gram equals
        # pooling the projected frames, at 1/T of the cost
        return self.out(self.value(self._attention_pool(gram, n)))

    def _conv_stack(self, x: torch.Tensor, n: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        for i, conv in enumerate(self.convs):
            x = conv(x)
            if i + 1 == self.pool_after:
                x = self.pool(x)
                n = None if n is None else n.div(2, rounding_mode="floor")
        return x, n

    @staticmethod
    def _frame_gram(x: torch.Tensor) -> torch.Tensor:
        """(B, C, M, T) -> per-frame channel Gram matrices, frequency summed out, flattened: (B, T, C*C)."""
        b, c, m, t = x.shape
        frames = x.permute(0, 3, 1, 2)  # (B, T, C, M)
        return (torch.matmul(frames, frames.transpose(2, 3)) / m).reshape(b, t, c * c)

    def _attention_pool(self, gram: torch.Tensor, n: torch.Tensor | None) -> torch.Tensor:
        """Attention-weighted mean of the frames' Grams over the real frames: (B, C*C)."""
        score = self.attn(gram).squeeze(-1)  # (B, T)
        if n is not None:
            score = score.masked_fill(~lengths_to_mask(n.clamp(min=1), gram.shape[1]), float("-inf"))
        w = torch.softmax(score, dim=1)
        return torch.einsum("bt,btd->bd", w.to(gram.dtype), gram)  # softmax is float32 under autocast


def min_samples(model: Wav2Small) -> int:
    """Shortest input that leaves one frame after the max-pool."""
    return model.frontend.n_fft + model.frontend.hop
