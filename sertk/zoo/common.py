"""Pieces every zoo trainer shares: in-memory audio items, parameter counts, smoke-size configs."""
from __future__ import annotations

import copy

import numpy as np
import torch


class MemoryAudioSet(torch.utils.data.Dataset):
    """Pool utterances held in memory, with a random crop per (seed, epoch, item).

    Crops start at a multiple of ``hop`` samples, so frame-level targets computed
    once on the whole utterance stay aligned with the encoder frames of the crop.
    ``extra(utt)`` adds per-utterance fields (labels, targets) to each item;
    those named in ``frame_fields`` are per-frame arrays, cropped with the audio.
    """

    def __init__(self, utts: list[str], audio: dict[str, np.ndarray], sample_rate: int,
                 max_duration: float | None, hop: int = 1, seed: int = 0, random_crop: bool = True, extra=None,
                 frame_fields: tuple[str, ...] = ()):
        self.utts, self.audio, self.sample_rate = list(utts), audio, sample_rate
        self.max_samples = int(max_duration * sample_rate) if max_duration else None
        self.hop, self.seed, self.random_crop, self.epoch = hop, seed, random_crop, 0
        self.extra = extra or (lambda utt: {})
        self.frame_fields = frame_fields

    def __len__(self) -> int:
        return len(self.utts)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def durations(self) -> list[float]:
        n = [len(self.audio[u]) for u in self.utts]
        if self.max_samples:
            n = [min(x, self.max_samples) for x in n]
        return [x / self.sample_rate for x in n]

    def crop_offset(self, i: int) -> int:
        wav = self.audio[self.utts[i]]
        if not self.max_samples or len(wav) <= self.max_samples:
            return 0
        slots = (len(wav) - self.max_samples) // self.hop
        if not self.random_crop:
            return slots // 2 * self.hop
        return int(np.random.default_rng([self.seed, self.epoch, i]).integers(0, slots + 1)) * self.hop

    def __getitem__(self, i: int) -> dict:
        utt = self.utts[i]
        off = self.crop_offset(i)
        wav = self.audio[utt]
        end = off + self.max_samples if self.max_samples else len(wav)
        item = {"utt": utt, "wav": torch.from_numpy(wav[off:end]), **self.extra(utt)}
        for k in self.frame_fields:
            item[k] = item[k][off // self.hop:]
        return item


def count_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def shrink_zoo_config(cfg: dict) -> dict:
    """A copy of a zoo config with the same models, classes and objectives, trained for seconds.

    For smoke runs and tests that check structure, not quality: each trainer
    module's ``shrink(entry)`` narrows its own entries (one epoch, narrow
    layers; layer counts stay, since recipe configs read encoder layers by number).
    """
    from sertk.zoo import get_trainer

    cfg = copy.deepcopy(cfg)
    for e in cfg["models"].values():
        if "train" in e:  # an imported model trains nothing
            e["train"].update(epochs=1, batch_size=4, warmup_steps=0, progress=False)
        get_trainer(e["trainer"]).shrink(e)
    return cfg
