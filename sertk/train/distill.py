"""Teacher labelling with augmentation, its per-utterance cache, and distillation losses.

Students never see human labels: each training item is (utterance, augmentation
seed) -> the teacher's unclipped A/V/D on exactly that augmented audio. Seed 0 is
the clean audio; seeds >= 1 draw noise, gain, a crop and a speed change from
``numpy.random.default_rng([seed, crc32(utt)])``, so the student sees the very
waveform the teacher labelled, without storing audio. The cache is one text
table per seed (``key utt arousal valence dominance``) under a directory whose
name hashes the teacher checkpoint, the augmentation settings, the sample rate
and the crop; it is keyed by the audio's content (``sertk.data.audio.content_key``),
not by data dir, so every set and fold that shares an utterance shares its labels.
A label is a function of its waveform and its table alone, never of the job
that wrote it: the teacher runs on one utterance at a time (no padding, no
batch companions), and labels computed in another precision (device, autocast)
go to a table of their own (:func:`label_precision`).
"""
from __future__ import annotations

import logging
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from sertk.common.fileio import hash_obj, write_text_atomic
from sertk.data.audio import read_utterance, resample, utterance_sources
from sertk.data.datadir import DataDir, DataDirError
from sertk.data.dataset import source_durations
from sertk.train.inference import amp_dtype, model_device, resolve_device, run_model
from sertk.train.losses import ccc_loss

log = logging.getLogger(__name__)
LOSSES = ("ccc", "mse", "ccc+mse")


@dataclass
class AugmentConfig:
    """Ranges of the random perturbations applied for seeds >= 1."""
    snr_db: tuple[float, float] = (5.0, 30.0)   # white noise SNR; prob noise_p
    noise_p: float = 0.5
    gain_db: tuple[float, float] = (-12.0, 6.0)
    crop: tuple[float, float] = (0.6, 1.0)      # kept fraction of the utterance; prob crop_p
    crop_p: float = 0.5
    speed: tuple[float, float] = (0.9, 1.1)     # resampling factor; prob speed_p
    speed_p: float = 0.3

    @classmethod
    def from_dict(cls, d: dict | None) -> "AugmentConfig":
        d = dict(d or {})
        known = set(cls.__dataclass_fields__)
        bad = sorted(set(d) - known)
        if bad:
            raise ValueError(f"distill.augment: unknown key(s) {bad}; known: {sorted(known)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


def augment(wav: np.ndarray, sr: int, utt: str, seed: int, cfg: AugmentConfig) -> np.ndarray:
    """The deterministic augmented copy ``seed`` of an utterance (seed 0 = unchanged)."""
    if seed == 0:
        return wav
    rng = np.random.default_rng([int(seed), zlib.crc32(utt.encode())])
    x = wav.astype(np.float32)
    if rng.random() < cfg.crop_p and x.size > sr // 2:
        keep = max(sr // 2, int(x.size * rng.uniform(*cfg.crop)))
        off = int(rng.integers(0, x.size - keep + 1))
        x = x[off:off + keep]
    if rng.random() < cfg.speed_p:
        factor = rng.uniform(*cfg.speed)
        new_sr = int(round(sr / factor / 100)) * 100  # speed factors on a 100 Hz grid
        if new_sr != sr:
            x = resample(x, sr, new_sr)
    x = x * np.float32(10 ** (rng.uniform(*cfg.gain_db) / 20))
    if rng.random() < cfg.noise_p:
        p = float(np.mean(x ** 2)) + 1e-12
        snr = rng.uniform(*cfg.snr_db)
        x = x + rng.standard_normal(x.size).astype(np.float32) * np.float32(np.sqrt(p / 10 ** (snr / 10)))
    return x.astype(np.float32)


def cache_dir(root: Path, teacher_digest: str, aug: AugmentConfig, sample_rate: int = 16000,
              max_duration: float | None = None) -> Path:
    """Where labels of this teacher live for these augmentation settings, sample rate and crop.

    Inside, ``seed<k>.txt`` holds one line per labelled waveform, keyed by the
    audio's content (:func:`label_key`), so a replaced file or a changed crop
    never serves another waveform's labels and every set shares them.
    """
    settings = {"augment": asdict(aug), "sample_rate": int(sample_rate),
                "max_duration": None if max_duration is None else float(max_duration)}
    return Path(root) / f"{teacher_digest[:12]}-{hash_obj(settings)[:8]}"


def label_key(content: str, utt: str, seed: int) -> str:
    """A teacher label's key: the audio's content key; for seeds >= 1 also the utterance id, which
    seeds the augmentation (:func:`augment`), so two ids of the same audio get different copies."""
    return content if int(seed) == 0 else f"{content}/{utt}"


def label_precision(teacher, amp="auto") -> str:
    """What the teacher computes in, e.g. ``cpu-float32`` or ``cuda-bfloat16``: its device and the
    autocast ``amp`` gives there. Another precision gives other values, so it has its own table. A
    loader names where it will place the teacher in its ``device`` attribute (``train.device``),
    without loading it; a loader without one (or no teacher) means the CPU."""
    if isinstance(teacher, torch.nn.Module):
        device = model_device(teacher)
    else:
        device = resolve_device(str(getattr(teacher, "device", None) or "cpu"))
    dtype = amp_dtype(amp, device) or torch.float32
    return f"{device.type}-{str(dtype).removeprefix('torch.')}"


def table_path(cache: Path, seed: int, precision: str = "cpu-float32") -> Path:
    """The label table of one seed and precision: ``seed<k>.txt`` for CPU float32 labels (every table
    before precisions had names), ``seed<k>.<precision>.txt`` for the others."""
    suffix = "" if precision == "cpu-float32" else f".{precision}"
    return Path(cache) / f"seed{int(seed)}{suffix}.txt"


def read_cache(path: Path) -> dict[str, np.ndarray]:
    """key -> float32 A/V/D of a ``key utt arousal valence dominance`` table (values as stored)."""
    return {k: v for k, (_, v) in read_table(path).items()}


def read_table(path: Path) -> dict[str, tuple[str, np.ndarray]]:
    """key -> (utterance that was labelled, float32 A/V/D); a key written twice keeps its first line."""
    return _parse_table(Path(path).read_text(), path) if Path(path).exists() else {}


def _parse_table(text: str, path) -> dict[str, tuple[str, np.ndarray]]:
    out: dict[str, tuple[str, np.ndarray]] = {}
    for n, line in enumerate(text.splitlines(), 1):
        parts = line.split()
        if len(parts) != 5:
            raise ValueError(f"{path}:{n}: expected 'key utt arousal valence dominance', got {line!r}")
        if parts[0] not in out:
            out[parts[0]] = (parts[1], np.array([float(v) for v in parts[2:]], dtype=np.float32))
    return out


def _label_line(key: str, utt: str, avd) -> str:
    return f"{key} {utt} {' '.join(f'{v:.6f}' for v in avd)}\n"


def label_with_teacher(teacher: torch.nn.Module | Callable[[], torch.nn.Module] | None, datadir: str | Path,
                       cache: Path, seeds: list[int], aug: AugmentConfig, sample_rate: int = 16000,
                       max_duration: float | None = None, amp="auto") -> dict[tuple[str, int], np.ndarray]:
    """Teacher A/V/D (sertk order, unclipped) for every (utterance, seed), computed once and cached.

    ``datadir`` needs only wav.scp (unlabelled audio is fine). Labels live in
    ``<cache>/seed<k>[.<precision>].txt`` (:func:`table_path`) keyed by
    :func:`label_key` (content key, plus the utterance id for augmented seeds),
    shared by every data dir: only the waveforms no set labelled before are
    computed, and their lines are added to the table (a new version of the file
    written atomically). ``teacher`` may be a zero-argument function that loads
    it: it is called only when some labels are missing, so a fully cached run
    never loads the teacher. The teacher runs where it lies (``place`` it on the
    GPU first), one utterance at a time: no padding and no batch companions, so
    a label does not depend on which set or job computed it (and as the student
    is exported).
    """
    dd = DataDir.read(datadir)
    content = {s.utt: s.key for s in utterance_sources(dd)}
    out: dict[tuple[str, int], np.ndarray] = {}
    precision = label_precision(teacher, amp)
    for seed in seeds:
        path = table_path(cache, seed, precision)
        keys = {u: label_key(content[u], u, seed) for u in dd.utts}
        table = read_cache(path)
        missing: dict[str, str] = {}  # key -> the first utterance that has it
        for u in dd.utts:
            if keys[u] not in table:
                missing.setdefault(keys[u], u)
        todo = list(missing.values())
        if todo:
            if callable(teacher) and not isinstance(teacher, torch.nn.Module):
                teacher = teacher()
                got = label_precision(teacher, amp) if teacher is not None else precision
                if got != precision:  # its labels would land in another precision's table
                    raise RuntimeError(f"{cache}: the teacher loader's 'device' names {precision}, but the teacher "
                                       f"it loaded computes in {got}")
            if teacher is None:
                raise RuntimeError(f"{path}: teacher labels of {len(todo)} utterance(s) of {datadir} are not "
                                   f"cached (e.g. {todo[:3]}) and no teacher was given")
            batches = ({"utts": [u], "wav": torch.from_numpy(w)[None], "lengths": torch.tensor([w.size])}
                       for u in todo for w in [teacher_input(dd, u, seed, aug, sample_rate, max_duration)])
            utts, outs = run_model(teacher, batches, amp=amp)
            new = "".join(_label_line(keys[u], u, o) for u, o in zip(utts, outs))
            old = path.read_text() if path.exists() else ""  # re-read: another run may have added lines
            write_text_atomic(path, old + ("" if not old or old.endswith("\n") else "\n") + new)
            log.info("teacher labels: %s seed %d: %d of %d utterances labelled -> %s", Path(datadir).name, seed,
                     len(todo), len(dd.utts), path)
            # the values as stored: a first run and a cached rerun see the same labels (and a concurrent
            # writer that replaced the file without these lines only costs a relabelling next time)
            table = {**{k: v for k, (_, v) in _parse_table(new, path).items()}, **read_cache(path)}
        out.update({(u, seed): table[keys[u]] for u in dd.utts})
    return out


def teacher_input(dd: DataDir, utt: str, seed: int, aug: AugmentConfig, sample_rate: int,
                  max_duration: float | None) -> np.ndarray:
    """The waveform the teacher labels and the student trains on (centre crop, then augmentation)."""
    wav, _ = read_utterance(dd, utt, sample_rate)
    if max_duration is not None and wav.size > int(max_duration * sample_rate):
        n = int(max_duration * sample_rate)
        off = (wav.size - n) // 2
        wav = wav[off:off + n]
    return augment(wav, sample_rate, utt, seed, aug)


class DistillDataset(torch.utils.data.Dataset):
    """Items ``{"utt", "wav", "avd"}`` for every (utterance, seed) with a teacher label.

    ``crop`` (seconds): each epoch a training item is a random window of at most this length of
    the waveform the teacher labelled, drawn from (``seed``, epoch, item), so a resumed run draws the
    same ones; its target stays the teacher's label of the whole waveform. Short windows cost the
    student less per step, and a new window each epoch shows it more distinct inputs.
    """

    def __init__(self, datadirs: list[Path], labels: dict[tuple[str, int], np.ndarray], seeds: list[int],
                 aug: AugmentConfig, sample_rate: int = 16000, max_duration: float | None = None,
                 crop: float | None = None, seed: int = 0):
        self.dirs = [DataDir.read(d) for d in datadirs]
        self.items = [(i, u, s) for i, dd in enumerate(self.dirs) for u in dd.utts for s in seeds]
        missing = [(u, s) for _, u, s in self.items if (u, s) not in labels]
        if missing:
            raise DataDirError(f"DistillDataset: no teacher label for {missing[:3]} ({len(missing)} in all)")
        self.labels, self.aug, self.sample_rate, self.max_duration = labels, aug, sample_rate, max_duration
        self.crop, self.seed, self.epoch = crop, int(seed), 0

    def __len__(self) -> int:
        return len(self.items)

    def set_epoch(self, epoch: int) -> None:
        """New random windows per epoch (the same ones again for the same epoch)."""
        self.epoch = int(epoch)

    def durations(self) -> list[float]:
        """Seconds per item for length bucketing: the source audio after the crops (a speed-perturbed
        copy is a few percent off, which only moves it within its bucket)."""
        src = [dict(zip(dd.utts, source_durations(dd, dd.utts))) for dd in self.dirs]
        cap = min(v for v in (self.max_duration, self.crop, float("inf")) if v is not None)
        return [min(src[d][u], cap) for d, u, _ in self.items]

    def __getitem__(self, i: int) -> dict:
        d, utt, seed = self.items[i]
        wav = teacher_input(self.dirs[d], utt, seed, self.aug, self.sample_rate, self.max_duration)
        return {"utt": f"{utt}#s{seed}", "wav": torch.from_numpy(self._window(wav, i)),
                "avd": torch.from_numpy(self.labels[(utt, seed)])}

    def _window(self, wav: np.ndarray, i: int) -> np.ndarray:
        if self.crop is None or wav.size <= (n := int(round(self.crop * self.sample_rate))):
            return wav
        off = int(np.random.default_rng([self.seed, self.epoch, i]).integers(0, wav.size - n + 1))
        return wav[off:off + n]


def distill_loss(pred: torch.Tensor, target: torch.Tensor, kind: str = "ccc", mse_weight: float = 1.0) -> torch.Tensor:
    """Student vs teacher: 1 - mean CCC ('ccc'), mean squared error ('mse'), or their sum ('ccc+mse')."""
    if kind not in LOSSES:
        raise ValueError(f"distill loss must be one of {LOSSES}, got {kind!r}")
    loss = pred.new_zeros(())
    if "ccc" in kind:
        loss = loss + ccc_loss(pred, target)
    if "mse" in kind:
        loss = loss + mse_weight * torch.nn.functional.mse_loss(pred, target)
    return loss
