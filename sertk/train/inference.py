"""The one way sertk runs a model over data for evaluation and prediction.

Training, dev selection, stage-4/8 evaluation, teacher labelling and feature
caching all go through :func:`run_model` / :func:`predict`: the batches move to
the model's device, run under ``no_grad`` (and autocast on CUDA, as training
did), and the outputs come back as float32 on the CPU in the dataset's order.
A model evaluates where it was trained (``train.device``), so a recipe that
trains on a GPU never feeds it CPU tensors.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Iterable, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader

from sertk.common.config import ConfigError
from sertk.data.dataset import collate_audio
from sertk.train import distributed as D


class DeviceError(ConfigError):
    """A device or precision setting this machine cannot honour."""


def resolve_device(spec: str = "auto") -> torch.device:
    """``auto``/``cuda`` mean this rank's GPU (LOCAL_RANK) when there is one, made current."""
    if spec == "cpu" or (spec == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise DeviceError(f"train.device={spec!r} but CUDA is not available")
    dev = torch.device(f"cuda:{D.env_info().local_rank}") if spec in ("auto", "cuda") else torch.device(spec)
    torch.cuda.set_device(dev)
    return dev


def amp_dtype(amp, device: torch.device) -> torch.dtype | None:
    """``auto``/true: bf16 (fp16 where bf16 is unsupported) on CUDA, none on CPU; bf16; fp16; false/off."""
    cuda = device.type == "cuda"
    if amp is False or amp == "off":
        return None
    if amp is True or amp == "auto":
        if not cuda:
            return None  # CPU autocast only when asked for by name (amp: bf16)
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if amp == "fp16":
        if not cuda:
            raise DeviceError("train.amp=fp16 needs a CUDA device; on CPU use amp: bf16 or false")
        return torch.float16
    return torch.bfloat16


def autocast(device: torch.device, dtype: torch.dtype | None):
    return contextlib.nullcontext() if dtype is None else torch.autocast(device_type=device.type, dtype=dtype)


def to_device(obj, device: torch.device, non_blocking: bool = False):
    """Tensors in (nested) dicts, lists and tuples moved to ``device``; everything else as is."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device, non_blocking=non_blocking)
    if isinstance(obj, dict):
        return {k: to_device(v, device, non_blocking) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)) and not isinstance(obj, str):
        moved = [to_device(v, device, non_blocking) for v in obj]
        return type(obj)(*moved) if hasattr(obj, "_fields") else type(obj)(moved)
    return obj


def model_device(model: torch.nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def place(model: torch.nn.Module, device: str = "auto") -> torch.nn.Module:
    """A trained model moved to where it trained (``train.device``; auto: the GPU when there is one), eval mode."""
    return model.to(resolve_device(device)).eval()


def wav_forward(model: torch.nn.Module, batch: dict) -> torch.Tensor:
    """The speech models' call: ``model(wav, lengths)``."""
    return model(batch["wav"], batch["lengths"])


def length_sorted_batches(lengths: Sequence[float], batch_size: int) -> list[list[int]]:
    """Indices in length order cut into batches: little padding, and deterministic."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    return [order[s:s + batch_size] for s in range(0, len(order), batch_size)]


@torch.no_grad()
def run_model(model: torch.nn.Module, batches: Iterable[dict],
              forward: Callable[[torch.nn.Module, dict], torch.Tensor] = wav_forward,
              amp="auto") -> tuple[list[str], np.ndarray]:
    """(utterance ids, stacked float32 outputs) of ``forward`` over CPU batches carrying ``utts``.

    Each batch goes to the model's device; ``amp`` as in ``train.amp`` (autocast on CUDA by default).
    """
    was_training = model.training
    model.eval()
    device = model_device(model)
    dtype = amp_dtype(amp, device)
    utts, outs = [], []
    try:
        for batch in batches:
            with autocast(device, dtype):
                out = forward(model, to_device(batch, device, non_blocking=True))
            outs.append(out.detach().float().cpu())
            utts.extend(batch["utts"])
    finally:
        model.train(was_training)
    if not outs:
        return [], np.zeros((0, 0), dtype=np.float32)
    return utts, torch.cat(outs).numpy()


def predict(model: torch.nn.Module, dataset, batch_size: int = 16, collate: Callable = collate_audio,
            forward: Callable[[torch.nn.Module, dict], torch.Tensor] = wav_forward, amp="auto",
            num_workers: int = 0) -> tuple[list[str], np.ndarray]:
    """``run_model`` over a dataset batched by length (``dataset.durations()``), outputs in dataset order."""
    n = len(dataset)
    lengths = dataset.durations() if hasattr(dataset, "durations") else [0.0] * n
    batches = length_sorted_batches(lengths, max(1, int(batch_size)))
    loader = DataLoader(dataset, batch_sampler=batches, collate_fn=collate, num_workers=num_workers,
                        pin_memory=model_device(model).type == "cuda")
    utts, out = run_model(model, loader, forward, amp)
    order = np.argsort(np.concatenate([np.asarray(b, dtype=np.int64) for b in batches])) if batches else []
    return [utts[i] for i in order], out[order] if len(utts) else out
