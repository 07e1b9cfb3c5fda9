"""eGeMAPSv02 functionals (openSMILE, 88 values per utterance), extracted once per utterance.

Features live in one shared store per extractor setting,
``ROOT/_store/<settings digest>/shard-*.{ark,scp,src}`` (ROOT: the parent of
the output dirs, e.g. ``dump/egemaps``), keyed by the utterance's audio
content: its audio file's real path, segment span, size and mtime. A data dir
gets a view of the store, ``OUT/feats.scp`` (its utterance ids pointing into
the shards) with ``OUT/meta.json`` and ``OUT/feature_names.txt``, the layout
every reader expects. So an utterance in six folds is extracted once, the same
id with other audio in another set gets a key of its own, a rewritten file is
extracted again, and a run that adds a set extracts only what the store lacks.
The missing utterances are cut into ``--nj`` parts (one shard each) for the
local process pool or a Slurm array of ``--job`` calls.
"""
from __future__ import annotations

import json
import logging
import multiprocessing
import os
import shutil
import warnings
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import opensmile

from sertk.common.fileio import hash_obj, write_json_atomic, write_text_atomic
from sertk.data.audio import Source, read_audio, read_utterance, utterance_sources
from sertk.data.datadir import DataDir
from sertk.features.store import (FeatureStoreError, read_scp_index, read_store_index, write_shard,
                                  write_view)

log = logging.getLogger(__name__)

FEATURE_SET = "eGeMAPSv02"
FEATURE_LEVEL = "Functionals"
STORE_VERSION = 1  # bump when the stored values change meaning (the settings digest follows it)
STORE_DIRNAME = "_store"


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


# --------------------------------------------------------------- the store
def settings_digest(config: dict) -> str:
    """Name of the store directory for one extractor setting: other settings never share vectors."""
    return hash_obj(config)[:16]


def default_store_root(out_dir: str | Path) -> Path:
    """``_store`` beside the output dir: ``dump/egemaps/<set>`` -> ``dump/egemaps/_store``."""
    return Path(out_dir).absolute().parent / STORE_DIRNAME


def store_for(store_root: str | Path | None, out_dir: str | Path, config: dict) -> Path:
    """The store a data dir extracted into ``out_dir`` uses (``store_root`` None: the default root)."""
    root = Path(store_root) if store_root is not None else default_store_root(out_dir)
    return root.absolute() / settings_digest(config)


def prepare_store(store: Path, ex: EgemapsExtractor) -> None:
    """Write the store's settings and column names once, so a store explains itself."""
    if not (store / "config.json").is_file():
        write_json_atomic(store / "config.json", ex.config())
    if not (store / "feature_names.txt").is_file():
        write_text_atomic(store / "feature_names.txt", "\n".join(ex.feature_names()) + "\n")


def missing_sources(sources: list[Source], index: dict[str, str]) -> list[Source]:
    """One source per key that the store lacks (first utterance wins), in order."""
    seen = set(index)
    out = []
    for s in sources:
        if s.key not in seen:
            seen.add(s.key)
            out.append(s)
    return out


@lru_cache(maxsize=2)
def _extractor(sample_rate: int) -> EgemapsExtractor:
    return EgemapsExtractor(sample_rate)  # one per process: openSMILE set-up is not free


def extract_sources(sources: list[Source], store: str | Path, sample_rate: int = 16000) -> dict[str, str]:
    """Extract ``sources`` into one new shard of ``store``; returns key -> 'ark:offset'.

    The unit of work of a pool worker or a Slurm array task.
    """
    ex = _extractor(int(sample_rate))
    store = Path(store)
    prepare_store(store, ex)
    feats = {}
    for i, s in enumerate(sources, 1):
        wav, sr = read_audio(s.path, ex.sample_rate, s.start, s.end, utt=s.utt)
        feats[s.key] = ex.extract(wav, sr, s.utt)
        if i % 500 == 0:
            log.info("%s: %d/%d utterances", store, i, len(sources))
    return write_shard(store, feats, {s.key: s.describe() for s in sources}) if feats else {}


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
    """True when ``out_dir`` holds a complete view made from exactly these inputs, its arks present."""
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


# --------------------------------------------------------------- views
def write_set_view(datadir: DataDir, sources: list[Source], index: dict[str, str], out_dir: str | Path,
                   store: Path, ex: EgemapsExtractor) -> Path:
    """Point ``OUT/feats.scp`` at the store for every utterance; error names those the store lacks."""
    out_dir = Path(out_dir)
    missing = [s.utt for s in sources if s.key not in index]
    if missing:
        raise FeatureStoreError(
            f"{out_dir}: {len(missing)} of {len(sources)} utterance(s) of {datadir.path} have no features in "
            f"{store}, e.g. {missing[:5]}; a job failed or did not run: re-run the extraction")
    (out_dir / "meta.json").unlink(missing_ok=True)  # a view is up to date only once meta.json is back
    write_view({s.utt: index[s.key] for s in sources}, out_dir / "feats.scp")
    _remove_old_layout(out_dir)
    write_text_atomic(out_dir / "feature_names.txt", "\n".join(ex.feature_names()) + "\n")
    write_json_atomic(out_dir / "meta.json", {"hash": inputs_hash(datadir, ex.config()), "num_utts": len(datadir),
                                              "config": ex.config(), "datadir": str(datadir.path),
                                              "store": str(store)})
    return out_dir / "feats.scp"


def _remove_old_layout(out_dir: Path) -> None:
    """Drop a per-set ark and per-job parts of the old layout: no view points into them any more."""
    (out_dir / "feats.ark").unlink(missing_ok=True)
    for part in out_dir.glob("split*"):
        if part.is_dir() and any(part.glob("*/feats.ark")):
            shutil.rmtree(part)


# --------------------------------------------------------------- extraction
@dataclass
class SetTask:
    """One data dir to give a view: where it goes, which store it reads, its sources."""

    datadir: DataDir
    out: Path
    store: Path
    sources: list[Source]


def plan_sets(pairs: list[tuple[str | Path, str | Path]], ex: EgemapsExtractor, force: bool,
              store_root: str | Path | None) -> list[SetTask]:
    """The (data dir, output dir) pairs whose view is not up to date, with their sources."""
    tasks = []
    for data, out in pairs:
        datadir = DataDir.read(data)
        if not force and is_up_to_date(datadir, out, ex.config()):
            log.info("%s: eGeMAPS features up to date for %d utterances, reused", out, len(datadir))
            continue
        tasks.append(SetTask(datadir, Path(out), store_for(store_root, out, ex.config()),
                             utterance_sources(datadir)))
    return tasks


def split_evenly(items: list, parts: int) -> list[list]:
    """``parts`` contiguous blocks of (nearly) equal size."""
    bounds = np.linspace(0, len(items), parts + 1).round().astype(int)
    return [items[a:b] for a, b in zip(bounds[:-1], bounds[1:]) if b > a]


def plan_parts(tasks: list[SetTask], nj: int, force: bool, min_utts_per_job: int) -> list[tuple[Path, list[Source]]]:
    """(store, sources) parts: each store's unique missing utterances cut into at most ``nj`` parts."""
    by_store: dict[Path, list[Source]] = {}
    for t in tasks:
        by_store.setdefault(t.store, []).extend(t.sources)
    parts = []
    for store, sources in by_store.items():
        todo = missing_sources(sources, {} if force else read_store_index(store))
        n = max(1, min(nj, len(todo) // max(1, min_utts_per_job)))
        log.info("%s: %d utterance(s), %d unique, %d to extract in %d part(s)", store, len(sources),
                 len({s.key for s in sources}), len(todo), n if todo else 0)
        parts += [(store, block) for block in split_evenly(todo, n)]
    return parts


def _init_worker() -> None:
    from sertk.common.threads import set_threads

    set_threads(1)  # one process per job already uses the cores


def run_parts(parts: list[tuple[Path, list[Source]]], nj: int, sample_rate: int) -> dict[Path, dict[str, str]]:
    """Extract every part (in this process, or a pool of ``nj``); returns store -> new key -> location."""
    new: dict[Path, dict[str, str]] = {}
    if len(parts) <= 1 or nj <= 1:
        for store, sources in parts:
            new.setdefault(store, {}).update(extract_sources(sources, store, sample_rate))
        return new
    ctx = multiprocessing.get_context("spawn")  # fork after torch/openSMILE initialisation is unsafe
    errors = []
    with ProcessPoolExecutor(max_workers=nj, mp_context=ctx, initializer=_init_worker) as pool:
        futures = [(store, pool.submit(extract_sources, sources, store, sample_rate)) for store, sources in parts]
        for store, f in futures:
            try:
                new.setdefault(store, {}).update(f.result())
            except Exception as e:  # collect every failing part, then report them together
                errors.append(e)
    if len(errors) == 1:
        raise errors[0]
    if errors:
        raise EgemapsError("; ".join(str(e) for e in errors))
    return new


MIN_UTTS_PER_JOB = 50  # below this a worker's start-up costs more than it saves


def extract_many(pairs: list[tuple[str | Path, str | Path]], nj: int, sample_rate: int = 16000,
                 force: bool = False, min_utts_per_job: int = MIN_UTTS_PER_JOB,
                 store_root: str | Path | None = None) -> list[Path]:
    """Give each (data dir, output dir) pair a view of the shared store, extracting what it lacks.

    Utterances of all pairs are pooled per store and each one missing is
    extracted once, in at most ``nj`` parts of at least ``min_utts_per_job``
    (one process pool for the whole stage). ``force`` re-extracts every
    utterance of the pairs that are given. Returns each pair's ``feats.scp``.
    """
    ex = _extractor(int(sample_rate))
    tasks = plan_sets(pairs, ex, force, store_root)
    new = run_parts(plan_parts(tasks, nj, force, min_utts_per_job), nj, sample_rate)
    indexes: dict[Path, dict[str, str]] = {}
    for t in tasks:
        if t.store not in indexes:
            indexes[t.store] = {**read_store_index(t.store), **new.get(t.store, {})}
        write_set_view(t.datadir, t.sources, indexes[t.store], t.out, t.store, ex)
    return [Path(o) / "feats.scp" for _, o in pairs]


def extract_datadir(datadir_path: str | Path, out_dir: str | Path, sample_rate: int = 16000,
                    force: bool = False, store_root: str | Path | None = None) -> Path:
    """Give one data dir a view of the store in this process; returns its scp path."""
    return extract_many([(datadir_path, out_dir)], 1, sample_rate, force, store_root=store_root)[0]


def extract_parallel(datadir_path: str | Path, out_dir: str | Path, nj: int, sample_rate: int = 16000,
                     force: bool = False, min_utts_per_job: int = MIN_UTTS_PER_JOB,
                     store_root: str | Path | None = None) -> Path:
    """One data dir, its missing utterances extracted in a local pool of ``nj`` workers."""
    return extract_many([(datadir_path, out_dir)], nj, sample_rate, force, min_utts_per_job, store_root)[0]


# --------------------------------------------------------------- job arrays (Slurm, by hand)
def part_dirs(datadir_path: str | Path, out_dir: str | Path, nj: int, job: int) -> tuple[Path, Path]:
    """(data part, log/output part) of job ``job`` of ``nj``: ``DIR/split{nj}/{job}``, ``OUT/split{nj}/{job}``."""
    if not 1 <= job <= nj:
        raise ValueError(f"job must be in 1..{nj}, got {job}")
    return Path(datadir_path) / f"split{nj}" / str(job), Path(out_dir) / f"split{nj}" / str(job)


def extract_job(datadir_path: str | Path, out_dir: str | Path, nj: int, job: int, sample_rate: int = 16000,
                force: bool = False, store_root: str | Path | None = None) -> Path:
    """Extract the utterances of part ``job`` that the store lacks (a Slurm array task); returns the store."""
    part, _ = part_dirs(datadir_path, out_dir, nj, job)
    if not part.is_dir():
        raise FeatureStoreError(f"{part}: data part not found; split first with "
                                f"'sertk split-data-dir {datadir_path} --nj {nj}'")
    store = store_for(store_root, out_dir, _extractor(int(sample_rate)).config())
    sources = utterance_sources(DataDir.read(part))
    todo = missing_sources(sources, {} if force else read_store_index(store))
    log.info("%s: part %d/%d: %d utterance(s), %d to extract", store, job, nj, len(sources), len(todo))
    if todo:
        extract_sources(todo, store, sample_rate)
    return store


def merge_jobs(datadir_path: str | Path, out_dir: str | Path, nj: int, sample_rate: int = 16000,
               store_root: str | Path | None = None) -> Path:
    """Write ``OUT/feats.scp`` once the ``nj`` jobs are done; error names utterances the store lacks."""
    datadir = DataDir.read(datadir_path)
    ex = _extractor(int(sample_rate))
    store = store_for(store_root, out_dir, ex.config())
    scp = write_set_view(datadir, utterance_sources(datadir), read_store_index(store), out_dir, store, ex)
    log.info("%s: view of %d utterances after %d job(s)", scp, len(datadir), nj)
    return scp


def missing_datadir(datadir: DataDir, store: Path, force: bool = False) -> DataDir | None:
    """The part of a data dir whose audio the store lacks (one utterance per key), or None."""
    todo = missing_sources(utterance_sources(datadir), {} if force else read_store_index(store))
    return datadir.subset([s.utt for s in todo]) if todo else None
