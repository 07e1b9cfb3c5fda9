"""Utterance dataset over a data dir, padding collate, and length-bucketed batching.

Waveforms are read on demand (soundfile, mono, resampled to the model rate).
Batches group utterances of similar duration (SpeechBrain's
DynamicBatchSampler with buckets fitted to the data's durations), which cuts
the zero padding a random batch carries; ``benchmarks/bench_batching.py``
prints how much.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np
import soundfile as sf
import torch
from speechbrain.dataio.sampler import DynamicBatchSampler

from sertk.data.audio import AudioError, read_utterance
from sertk.data.datadir import DataDir, DataDirError
from sertk.data.labels import LabelError, LabelMap

TARGETS = ("emo", "avd")


class AudioDataset(torch.utils.data.Dataset):
    """Items ``{"utt", "wav": FloatTensor[T], "label": int, "avd": FloatTensor[3]}``.

    ``label`` is present when ``targets`` has ``"emo"`` (index in ``label_map``,
    aliases applied), ``avd`` when it has ``"avd"`` (utt2avd order: arousal,
    valence, dominance). Targets are checked when the dataset is built, so a
    bad label fails at once, naming the utterance, not mid-epoch.

    ``max_duration`` (seconds) crops longer utterances: the centre at
    evaluation, a random window when ``random_crop`` (training), drawn from
    (seed, epoch, index) so that it is reproducible whatever the worker count.
    """

    def __init__(self, datadir: str | Path | DataDir, sample_rate: int = 16000,
                 label_map: LabelMap | str | Path | None = None, targets: Sequence[str] | str = ("emo",),
                 min_duration: float = 0.0, max_duration: float | None = None,
                 random_crop: bool = False, seed: int = 0):
        self.datadir = datadir if isinstance(datadir, DataDir) else DataDir.read(datadir)
        where = self.datadir.path or "data dir"
        self.sample_rate = int(sample_rate)
        self.targets = (targets,) if isinstance(targets, str) else tuple(targets)
        bad = [t for t in self.targets if t not in TARGETS]
        if bad:
            raise ValueError(f"AudioDataset: unknown targets {bad}; choose from {TARGETS}")
        if isinstance(label_map, (str, Path)):
            label_map = LabelMap.load(label_map)
        self.label_map = label_map
        self.min_duration = float(min_duration)
        self.max_duration = max_duration
        if max_duration is not None and max_duration <= 0:
            raise ValueError("AudioDataset: max_duration must be positive")
        self.random_crop = random_crop
        self.seed = seed
        self.epoch = 0
        self.utts = self.datadir.utts
        self._labels: list[int] | None = None
        self._avd: torch.Tensor | None = None
        self._durations: list[float] | None = None
        if "emo" in self.targets:
            if label_map is None:
                raise ValueError("AudioDataset: targets include 'emo' but no label_map was given "
                                 "(pass the recipe's label map so class indices are fixed)")
            u2e = self.datadir.utt2emo
            missing = [u for u in self.utts if u not in u2e]
            if missing:
                raise DataDirError(f"{where}/utt2emo: no label for {len(missing)} utterance(s), e.g. {missing[:3]}")
            try:
                self._labels = [label_map.index(u2e[u]) for u in self.utts]
            except LabelError as e:
                bad_u = next(u for u in self.utts if u2e[u] not in label_map)
                raise DataDirError(f"{where}/utt2emo: utterance {bad_u!r}: {e}") from e
        if "avd" in self.targets:
            u2a = self.datadir.utt2avd
            rows = []
            for u in self.utts:
                v = u2a.get(u)
                if v is None or not all(math.isfinite(x) for x in v):
                    raise DataDirError(f"{where}/utt2avd: utterance {u!r}: "
                                       f"{'missing' if v is None else v} is not 3 finite numbers")
                rows.append(v)
            self._avd = torch.tensor(rows, dtype=torch.float32)

    def __len__(self) -> int:
        return len(self.utts)

    def set_epoch(self, epoch: int) -> None:
        """New random crops per epoch (the same ones again for the same epoch)."""
        self.epoch = int(epoch)

    @property
    def label_ids(self) -> list[int]:
        """Class index of every utterance (for class weights or balanced sampling)."""
        if self._labels is None:
            raise ValueError("AudioDataset: built without 'emo' targets")
        return list(self._labels)

    def __getitem__(self, i: int) -> dict:
        utt = self.utts[i]
        wav, _ = read_utterance(self.datadir, utt, self.sample_rate, self.min_duration)
        item = {"utt": utt, "wav": torch.from_numpy(self._crop(wav, i))}
        if self._labels is not None:
            item["label"] = self._labels[i]
        if self._avd is not None:
            item["avd"] = self._avd[i]
        return item

    def _crop(self, wav: np.ndarray, i: int) -> np.ndarray:
        if self.max_duration is None:
            return wav
        n = int(round(self.max_duration * self.sample_rate))
        if wav.size <= n:
            return wav
        if self.random_crop:
            rng = np.random.default_rng([self.seed, self.epoch, i])
            off = int(rng.integers(0, wav.size - n + 1))
        else:
            off = (wav.size - n) // 2
        return wav[off:off + n]

    def durations(self) -> list[float]:
        """Seconds per utterance (after cropping) from headers and segments, without decoding."""
        if self._durations is None:
            self._durations = [min(d, self.max_duration) if self.max_duration is not None else d
                               for d in source_durations(self.datadir, self.utts)]
        return list(self._durations)


def source_durations(datadir: DataDir, utts: Sequence[str]) -> list[float]:
    """Seconds of each utterance's audio from file headers and segments, without decoding."""
    out, cache = [], {}
    for u in utts:
        path, start, end = datadir.audio_source(u)
        if start is not None:
            out.append(end - start)
            continue
        if path not in cache:
            try:
                info = sf.info(path)
            except Exception as e:
                raise AudioError(f"utterance {u} ({path}): cannot read audio: {e}") from e
            cache[path] = info.frames / info.samplerate
        out.append(cache[path])
    return out


def collate_audio(items: list[dict]) -> dict:
    """Zero-pad to the longest waveform; ``attention_mask`` is 1 on real samples."""
    if not items:
        raise ValueError("collate_audio: empty batch")
    lengths = torch.tensor([it["wav"].shape[0] for it in items], dtype=torch.long)
    wav = torch.zeros(len(items), int(lengths.max()), dtype=torch.float32)
    for b, it in enumerate(items):
        wav[b, :lengths[b]] = it["wav"]
    mask = (torch.arange(wav.shape[1])[None, :] < lengths[:, None]).long()
    out = {"utts": [it["utt"] for it in items], "wav": wav, "lengths": lengths, "attention_mask": mask}
    for key, name in (("label", "labels"), ("avd", "avd")):
        have = [key in it for it in items]
        if any(have) and not all(have):
            raise ValueError(f"collate_audio: some items have {key!r} and some do not")
        if all(have):
            vals = [it[key] for it in items]
            out[name] = torch.stack(vals).float() if key == "avd" else torch.tensor(vals, dtype=torch.long)
    return out


class BucketBatchSampler(DynamicBatchSampler):
    """SpeechBrain's DynamicBatchSampler whose batches depend only on (seed, epoch).

    The parent re-draws batches after each pass; here a pass replays the
    batches of the current epoch, and ``set_epoch`` draws the next ones, so a
    resumed run sees exactly the batches it would have seen. For DDP wrap it in
    ``speechbrain.dataio.sampler.DistributedSamplerWrapper``.
    """

    def __iter__(self):
        return iter([list(b) for b in self._batches])

    @property
    def epoch(self) -> int:
        return self._epoch

    @property
    def batches(self) -> list[list[int]]:
        return [list(b) for b in self._batches]


def bucket_boundaries(lengths: Sequence[float], num_buckets: int) -> list[float]:
    """Upper edges of ``num_buckets`` buckets at the length quantiles (last = longest)."""
    qs = np.quantile(np.asarray(lengths, dtype=float), np.linspace(1.0 / num_buckets, 1.0, num_buckets))
    return [max(float(x), 1e-6) for x in np.unique(qs)]


def make_bucket_batch_sampler(dataset, max_batch_seconds: float | None = None, batch_size: int | None = None,
                              num_buckets: int = 10, shuffle: bool = True, seed: int = 0, epoch: int = 0,
                              max_batch_size: int | None = None, drop_last: bool = False,
                              lengths: Sequence[float] | None = None) -> BucketBatchSampler:
    """Batches of similar-length utterances, for ``DataLoader(batch_sampler=...)``.

    Give ``max_batch_seconds`` (padded seconds per batch: batch size adapts to
    the bucket, at most ``max_batch_size``) or a fixed ``batch_size``. Buckets
    sit at the quantiles of the data's durations (``dataset.durations()``
    unless ``lengths`` is given), so each holds about the same number of
    utterances whatever the duration distribution. ``shuffle`` draws the
    utterance and batch order from (seed, epoch); without it batches come
    longest first (out-of-memory shows in the first step, not the last).
    """
    if (max_batch_seconds is None) == (batch_size is None):
        raise ValueError("make_bucket_batch_sampler: give either max_batch_seconds or batch_size")
    lengths = list(dataset.durations() if lengths is None else lengths)
    if len(lengths) != len(dataset):
        raise ValueError(f"make_bucket_batch_sampler: {len(lengths)} lengths for {len(dataset)} items")
    if not lengths:
        raise ValueError("make_bucket_batch_sampler: empty dataset")
    if num_buckets < 1:
        raise ValueError("make_bucket_batch_sampler: num_buckets must be >= 1")
    if batch_size is not None:
        if batch_size < 1:
            raise ValueError("make_bucket_batch_sampler: batch_size must be >= 1")
        max_len, max_ex = batch_size * max(lengths) * 1.001, batch_size
    else:
        if max_batch_seconds <= 0:
            raise ValueError("make_bucket_batch_sampler: max_batch_seconds must be positive")
        max_len, max_ex = float(max_batch_seconds), max_batch_size
    return BucketBatchSampler(
        dataset, max_batch_length=max_len, max_batch_ex=max_ex, lengths_list=lengths,
        bucket_boundaries=bucket_boundaries(lengths, num_buckets), shuffle=shuffle,
        batch_ordering="random" if shuffle else "descending", seed=seed, epoch=epoch, drop_last=drop_last)


def padding_ratio(batches: Sequence[Sequence[int]], lengths: Sequence[float]) -> float:
    """Padded share of all batch slots: sum(max*B - sum) / sum(max*B)."""
    slots = pad = 0.0
    for b in batches:
        ls = [lengths[i] for i in b]
        slots += max(ls) * len(ls)
        pad += max(ls) * len(ls) - sum(ls)
    return pad / slots if slots else 0.0
