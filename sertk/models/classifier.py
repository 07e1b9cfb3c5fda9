"""Speech-encoder classifier / regressor: encoder -> layer -> pooling -> head.

The SER baseline of SELM (classification head) and the A/V/D regressor
(regression head) share this one module; only ``num_outputs`` and the loss
differ.
"""
from __future__ import annotations

import torch
from torch import nn

from sertk.models.encoder import SpeechEncoder
from sertk.models.heads import MLPHead, build_pooling


class SpeechClassifier(nn.Module):
    def __init__(self, encoder: dict, num_outputs: int, pooling: str = "mean",
                 head_hidden: int | None = None, dropout: float = 0.1):
        super().__init__()
        self.encoder = SpeechEncoder(encoder)
        self.pool, dim = build_pooling(pooling, self.encoder.hidden_size)
        self.head = MLPHead(dim, num_outputs, head_hidden, dropout)

    def embed(self, wav: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        feats, flen = self.encoder(wav, lengths)
        return self.pool(feats, flen)

    def forward(self, wav: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(wav, lengths))
