"""eGeMAPSv02 functionals (openSMILE, 88 values per utterance) into a reusable store.

A data dir is extracted into ``OUT/feats.{ark,scp}`` with ``OUT/meta.json``
(a hash of what the features depend on) and ``OUT/feature_names.txt``. A
second call with the same audio list, audio files and extractor settings
reuses the store instead of recomputing; any change recomputes it.
Parallel runs extract ``DIR/split{N}/{JOB}`` into ``OUT/split{N}/{JOB}`` and
merge the per-job indexes, so a Slurm array (``--job JOB``) and the local
process pool produce the same store.
"""
from __future__ import annotations

import json
import logging
import multiprocessing
import os
import warnings
from concurrent.futures import ProcessPoolExecutor
from functools import lru_cache
from pathlib import Path

import numpy as np
import opensmile

from sertk.common.fileio import hash_obj, write_json_atomic, write_text_atomic
from sertk.data.audio import read_utterance
from sertk.data.datadir import DataDir
from sertk.data.split import split_into_parts
from sertk.features.store import FeatureStoreError, merge_scps, read_scp_index, write_ark_scp

log = logging.getLogger(__name__)

FEATURE_SET = "eGeMAPSv02"
FEATURE_LEVEL = "Functionals"
STORE_VERSION = 1  # bump when the stored layout or extraction changes meaning


class EgemapsError(RuntimeError):
    """Extraction failed for an utterance; the message names it."""


class EgemapsExtractor:
    """One openSMILE eGeMAPSv02 functionals extractor; audio is resampled to ``sample_rate`` first."""

    def __init__(self, sample_rate: int = 16000):
        self.sample_rate = int(sample_rate)
        self.smile = opensmile.Smile(feature_set=opensmile.FeatureSet.eGeMAPSv02,
                                     feature_level=opensmile.FeatureLevel.Functionals)

    def feature_names(self) -> list[str]:
        return list(self.smile.feature_names)

    def config(self) -> dict:
        """Everything the values depend on besides the audio (part of the reuse hash)."""
        return {"feature_set": FEATURE_SET, "feature_level": FEATURE_LEVEL, "sample_rate": self.sample_rate,
                "opensmile": opensmile.__version__, "store_version": STORE_VERSION}

    def extract(self, wav: np.ndarray, sr: int, utt: str = "<signal>") -> np.ndarray:
        """88 float32 functionals of a mono waveform; errors name ``utt``."""
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "segment too short" is reported below, with the utterance
                values = self.smile.process_signal(wav, sr).to_numpy()
        except Exception as e:
            raise EgemapsError(f"utterance {utt}: openSMILE failed: {e}") from e
        values = np.asarray(values, dtype=np.float32).reshape(-1)
        if values.size != len(self.smile.feature_names):
            raise EgemapsError(f"utterance {utt}: openSMILE returned {values.size} values, expected "
                               f"{len(self.smile.feature_names)}")
        if not np.all(np.isfinite(values)):
            raise EgemapsError(
                f"utterance {utt}: eGeMAPS functionals are not finite (audio {wav.size / sr:.3f}s is probably "
                f"too short for openSMILE's analysis windows); remove the utterance from the data dir")
        return values

    def extract_utterance(self, datadir: DataDir, utt: str) -> np.ndarray:
        wav, sr = read_utterance(datadir, utt, self.sample_rate)
        return self.extract(wav, sr, utt)


@lru_cache(maxsize=1)
def _names() -> tuple[str, ...]:
    return tuple(EgemapsExtractor().feature_names())


def feature_names() -> list[str]:
    """The 88 eGeMAPSv02 functional names, in stored column order."""
    return list(_names())


def read_feature_names(store_dir: str | Path) -> list[str]:
    """Column names of a store (its feature_names.txt), or the eGeMAPS names when absent."""
    p = Path(store_dir) / "feature_names.txt"
    if p.is_file():
        return p.read_text(encoding="utf-8").split()
    return feature_names()


# --------------------------------------------------------------- reuse check
def _audio_stats(datadir: DataDir) -> list:
    """Size and mtime of each audio file: a rewritten file changes the hash (cheap: no decoding)."""
    out = []
    for rec, path in sorted(datadir.tables["wav.scp"].items()):
        try:
            st = os.stat(path)
            out.append([rec, st.st_size, st.st_mtime_ns])
        except OSError:
            out.append([rec, "missing"])
    return out


def inputs_hash(datadir: DataDir, config: dict) -> str:
    """Hash of the utterance list, wav.scp, segments, audio file stats and extractor config."""
    return hash_obj({"utts": datadir.utts, "wav.scp": datadir.tables["wav.scp"],
                     "segments": datadir.tables.get("segments"), "audio": _audio_stats(datadir),
                     "config": config})


def is_up_to_date(datadir: DataDir, out_dir: str | Path, config: dict) -> bool:
    """True when ``out_dir`` holds a complete store made from exactly these inputs."""
    out_dir = Path(out_dir)
    scp, meta = out_dir / "feats.scp", out_dir / "meta.json"
    if not (scp.is_file() and meta.is_file()):
        return False
    try:
        stored = json.loads(meta.read_text(encoding="utf-8"))
        index = read_scp_index(scp)
    except (ValueError, FeatureStoreError):
        return False
    if stored.get("hash") != inputs_hash(datadir, config):
        return False
    if any(u not in index for u in datadir.utts):
        return False
    arks = {loc.rsplit(":", 1)[0] for loc in index.values()}
    return all(Path(a).is_file() for a in arks)


def _finish(datadir: DataDir, out_dir: Path, extractor_config: dict, names: list[str]) -> None:
    write_text_atomic(out_dir / "feature_names.txt", "\n".join(names) + "\n")
    write_json_atomic(out_dir / "meta.json", {"hash": inputs_hash(datadir, extractor_config),
                                              "num_utts": len(datadir), "config": extractor_config,
                                              "datadir": str(datadir.path)})


# --------------------------------------------------------------- extraction
def extract_datadir(datadir_path: str | Path, out_dir: str | Path, sample_rate: int = 16000,
                    force: bool = False) -> Path:
    """Extract every utterance of a data dir into ``out_dir``; returns the scp path.

    Reuses the store when it is up to date (see :func:`is_up_to_date`) unless ``force``.
    """
    datadir = DataDir.read(datadir_path)
    out_dir = Path(out_dir)
    ex = EgemapsExtractor(sample_rate)
    cfg = ex.config()
    if not force and is_up_to_date(datadir, out_dir, cfg):
        log.info("%s: eGeMAPS features up to date for %d utterances, reused", out_dir, len(datadir))
        return out_dir / "feats.scp"
    (out_dir / "meta.json").unlink(missing_ok=True)
    utts = datadir.utts
    log.info("extracting eGeMAPS functionals of %d utterances from %s into %s", len(utts), datadir_path, out_dir)
    feats = {}
    for i, utt in enumerate(utts, 1):
        feats[utt] = ex.extract_utterance(datadir, utt)
        if i % 500 == 0:
            log.info("%s: %d/%d utterances", out_dir, i, len(utts))
    out_dir.mkdir(parents=True, exist_ok=True)
    write_ark_scp(feats, out_dir / "feats.ark", out_dir / "feats.scp")
    _finish(datadir, out_dir, cfg, ex.feature_names())
    return out_dir / "feats.scp"


def part_dirs(datadir_path: str | Path, out_dir: str | Path, nj: int, job: int) -> tuple[Path, Path]:
    """(data part, output part) of job ``job`` of ``nj``: ``DIR/split{nj}/{job}``, ``OUT/split{nj}/{job}``."""
    if not 1 <= job <= nj:
        raise ValueError(f"job must be in 1..{nj}, got {job}")
    return Path(datadir_path) / f"split{nj}" / str(job), Path(out_dir) / f"split{nj}" / str(job)


def extract_job(datadir_path: str | Path, out_dir: str | Path, nj: int, job: int,
                sample_rate: int = 16000, force: bool = False) -> Path:
    """Extract one part of a split data dir (the unit a Slurm array task runs)."""
    part, out_part = part_dirs(datadir_path, out_dir, nj, job)
    if not part.is_dir():
        raise FeatureStoreError(f"{part}: data part not found; split first with "
                                f"'sertk split-data-dir {datadir_path} --nj {nj}'")
    return extract_datadir(part, out_part, sample_rate, force)


def merge_jobs(datadir_path: str | Path, out_dir: str | Path, nj: int, sample_rate: int = 16000) -> Path:
    """Merge the per-job indexes into ``OUT/feats.scp``, checking they cover the data dir exactly."""
    datadir = DataDir.read(datadir_path)
    out_dir = Path(out_dir)
    parts = [part_dirs(datadir_path, out_dir, nj, j)[1] / "feats.scp" for j in range(1, nj + 1)]
    missing = [str(p) for p in parts if not p.is_file()]
    if missing:
        raise FeatureStoreError(f"{out_dir}: {len(missing)} of {nj} job(s) have no features ({missing[:3]}); "
                                f"re-run those jobs")
    (out_dir / "meta.json").unlink(missing_ok=True)
    n = merge_scps(parts, out_dir / "feats.scp", expected=datadir.utts)
    (out_dir / "feats.ark").unlink(missing_ok=True)  # left by an earlier single-job run; no longer indexed
    ex = EgemapsExtractor(sample_rate)
    _finish(datadir, out_dir, ex.config(), ex.feature_names())
    log.info("%s: merged %d job(s), %d utterances", out_dir / "feats.scp", nj, n)
    return out_dir / "feats.scp"


def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)  # one process per job already uses the cores


MIN_UTTS_PER_JOB = 50  # below this a worker's start-up costs more than it saves


def extract_parallel(datadir_path: str | Path, out_dir: str | Path, nj: int, sample_rate: int = 16000,
                     force: bool = False, min_utts_per_job: int = MIN_UTTS_PER_JOB) -> Path:
    """Split the data dir into ``nj`` parts, extract them in a local process pool, merge."""
    return extract_many([(datadir_path, out_dir)], nj, sample_rate, force, min_utts_per_job)[0]


def extract_many(pairs: list[tuple[str | Path, str | Path]], nj: int, sample_rate: int = 16000,
                 force: bool = False, min_utts_per_job: int = MIN_UTTS_PER_JOB) -> list[Path]:
    """Extract several (data dir, store) pairs with one pool of ``nj`` workers.

    Every data dir that is not up to date is split into parts of at least
    ``min_utts_per_job`` utterances; all parts of all dirs share the pool, so the
    workers start once for a whole stage.
    """
    cfg = EgemapsExtractor(sample_rate).config()
    todo: list[tuple[str | Path, str | Path, int]] = []
    for data, out in pairs:
        datadir = DataDir.read(data)
        if not force and is_up_to_date(datadir, out, cfg):
            log.info("%s: eGeMAPS features up to date for %d utterances, reused", out, len(datadir))
            continue
        parts = max(1, min(nj, len(datadir) // max(1, min_utts_per_job)))
        if parts > 1:
            split_into_parts(data, parts)
        todo.append((data, out, parts))
    jobs = [(d, o, n, j) for d, o, n in todo for j in range(1, n + 1)]
    if len(jobs) == 1 or nj <= 1:
        for d, o, n, j in jobs:
            (extract_job(d, o, n, j, sample_rate, force) if n > 1 else extract_datadir(d, o, sample_rate, force))
    elif jobs:
        ctx = multiprocessing.get_context("spawn")  # fork after torch/openSMILE initialisation is unsafe
        with ProcessPoolExecutor(max_workers=nj, mp_context=ctx, initializer=_init_worker) as pool:
            futures = [pool.submit(extract_job, d, o, n, j, sample_rate, force) if n > 1 else
                       pool.submit(extract_datadir, d, o, sample_rate, force) for d, o, n, j in jobs]
            errors = []
            for f in futures:
                try:
                    f.result()
                except Exception as e:  # collect every failing job, then report them together
                    errors.append(e)
        if errors:
            if len(errors) == 1:
                raise errors[0]
            raise EgemapsError("; ".join(str(e) for e in errors))
    for d, o, n in todo:
        if n > 1:
            merge_jobs(d, o, n, sample_rate)
    return [Path(o) / "feats.scp" for _, o in pairs]
