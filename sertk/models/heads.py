"""Pooling over time and output heads shared by classifiers and regressors."""
from __future__ import annotations

import torch
from torch import nn

from sertk.models.encoder import lengths_to_mask


class MeanPooling(nn.Module):
    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        mask = lengths_to_mask(lengths, x.shape[1]).unsqueeze(-1).to(x.dtype)
        return (x * mask).sum(1) / mask.sum(1).clamp(min=1)


class AttentionPooling(nn.Module):
    """Learned attention weights over frames (masked softmax), then a weighted mean."""

    def __init__(self, dim: int):
        super().__init__()
        self.score = nn.Linear(dim, 1)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        mask = lengths_to_mask(lengths, x.shape[1])
        scores = self.score(x).squeeze(-1).masked_fill(~mask, float("-inf"))
        w = torch.softmax(scores, dim=1).unsqueeze(-1)
        return (w * x).sum(1)


class MeanStdPooling(nn.Module):
    """Mean and standard deviation over frames (x-vector statistics pooling)."""

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        mask = lengths_to_mask(lengths, x.shape[1]).unsqueeze(-1).to(x.dtype)
        n = mask.sum(1).clamp(min=1)
        mean = (x * mask).sum(1) / n
        var = (((x - mean.unsqueeze(1)) * mask) ** 2).sum(1) / n
        return torch.cat([mean, torch.sqrt(var + 1e-6)], dim=-1)


def build_pooling(kind: str, dim: int) -> tuple[nn.Module, int]:
    if kind == "mean":
        return MeanPooling(), dim
    if kind == "attention":
        return AttentionPooling(dim), dim
    if kind == "meanstd":
        return MeanStdPooling(), 2 * dim
    raise ValueError(f"unknown pooling {kind!r}; use mean, attention or meanstd")


class MLPHead(nn.Module):
    """Dropout-Linear-tanh-Dropout-Linear (the head of the public A/D/V regressor)."""

    def __init__(self, dim: int, num_outputs: int, hidden: int | None = None, dropout: float = 0.1):
        super().__init__()
        hidden = hidden or dim
        self.net = nn.Sequential(nn.Dropout(dropout), nn.Linear(dim, hidden), nn.Tanh(),
                                 nn.Dropout(dropout), nn.Linear(hidden, num_outputs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
