"""Training losses shared by the models.

Both are computed in float32 whatever the autocast dtype: CCC divides by
variances and cross-entropy sums many log-probabilities, and bf16/fp16 lose
too many digits in either.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def ccc_loss(pred: torch.Tensor, gold: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """``1 - CCC`` averaged over dimensions; ``pred``/``gold`` are [N, D] (or [N]).

    CCC = 2 cov(x, y) / (var(x) + var(y) + (mean(x) - mean(y))^2) with
    population (biased) moments over the batch, per column. It is a batch
    statistic, so it is only meaningful for batches of several utterances.
    """
    if pred.shape != gold.shape:
        raise ValueError(f"ccc_loss: pred shape {tuple(pred.shape)} != gold shape {tuple(gold.shape)}")
    if pred.dim() == 1:
        pred, gold = pred[:, None], gold[:, None]
    if pred.dim() != 2:
        raise ValueError(f"ccc_loss: expected [N, D] or [N], got shape {tuple(pred.shape)}")
    if pred.shape[0] < 2:
        raise ValueError(f"ccc_loss: needs at least 2 items in the batch, got {pred.shape[0]}")
    x, y = pred.float(), gold.float()
    mx, my = x.mean(0), y.mean(0)
    vx, vy = ((x - mx) ** 2).mean(0), ((y - my) ** 2).mean(0)
    cov = ((x - mx) * (y - my)).mean(0)
    ccc = 2 * cov / (vx + vy + (mx - my) ** 2 + eps)
    return 1 - ccc.mean()


def masked_ce(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean token cross-entropy over positions where ``mask`` is true.

    ``logits`` [..., V], ``targets`` and ``mask`` [...]: for text targets that
    share a sequence with a prompt or audio prefix the loss must not see.
    """
    if logits.shape[:-1] != targets.shape or targets.shape != mask.shape:
        raise ValueError(f"masked_ce: logits {tuple(logits.shape)}, targets {tuple(targets.shape)} and "
                         f"mask {tuple(mask.shape)} do not line up")
    mask = mask.bool()
    n = int(mask.sum())
    if n == 0:
        raise ValueError("masked_ce: the mask selects no position")
    return F.cross_entropy(logits[mask].float(), targets[mask].long(), reduction="mean")
