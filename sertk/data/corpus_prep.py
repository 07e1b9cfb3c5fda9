"""Shared machinery of corpus preparation (``egs/<corpus>/local/prepare.py``).

A recipe's prepare script only parses its corpus's layout and annotation
files; everything else lives here, the same for every corpus:

* finding the corpus (``require_db``: a clear "set X in db.sh" error naming
  where to obtain it and its licence);
* scanning audio exactly as distributed (any rate, 16/24/32-bit or float,
  AIFF data behind a ``.wav`` name) while counting and naming every file that
  is left out and why (``PrepReport.skip``; nothing is dropped silently);
* collecting utterances into a data dir (``UttTable``) with corpus-prefixed,
  speaker-first ids and extra Kaldi-style per-utterance files
  (``utt2intensity``, ``utt2session``, ...);
* comparing what was found with the published counts of the full corpus
  (``check_counts``, ``check_items``), warning with what is missing;
* committed, versioned split list files (``read_split_list``,
  ``write_split_list``, ``assign_folds``, ``split_units``) from which the
  protocol data dirs are built (``build_protocol_sets``); results record the
  lists' sha256 (see sertk.common.protocol);
* ``run_prepare``: the command line every prepare script shares.

Split list format (one file per protocol, committed under ``conf/splits/``)::

    # sertk split list
    # version: 1
    # unit: speaker            (speaker -> utt2spk; utt -> the utterance ids; any other X -> utt2X)
    # <free text: how the list was made>
    fold1_train  ravdess-02 ravdess-03 ...
    fold1_test   ravdess-01 ...

Each line names a data dir and the units (speakers, sessions, schools,
partitions) whose utterances it holds.
"""
from __future__ import annotations

import argparse
import logging
import os
import random
import re
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np
import soundfile as sf

from sertk.common.config import ConfigError
from sertk.common.fileio import sha256_file, write_text_atomic
from sertk.common.protocol import load_protocols
from sertk.data.datadir import DataDir, byte_sorted
from sertk.data.labels import LabelMap

log = logging.getLogger("sertk.prepare")

# Operating-system litter found in copies of corpora (zip extraction, Finder, Explorer).
SYSTEM_FILES = {".ds_store", "thumbs.db", "desktop.ini", "icon\r"}
SYSTEM_DIRS = {"__macosx", ".git", ".svn"}
ID_SAFE = re.compile(r"[^A-Za-z0-9_.+-]")


class PrepError(RuntimeError):
    """Preparation cannot go on; the message names the file, line or setting to fix."""


# --------------------------------------------------------------- the corpus
@dataclass(frozen=True)
class CorpusInfo:
    """Where a corpus comes from, for messages and documentation."""

    name: str        # display name, e.g. "RAVDESS"
    var: str         # db.sh variable, e.g. "RAVDESS"
    domain: str      # utt2domain value and id prefix, e.g. "ravdess"
    obtain: str      # where to get it
    licence: str
    layout: str      # what the folder must contain
    expect: tuple[str, ...] = ()  # glob patterns; at least one must match under the root


def require_db(corpus: CorpusInfo, value: str | None) -> Path:
    """The corpus root, or a PrepError saying how to set it."""
    how = (f"set {corpus.var} in db.sh (or export {corpus.var}=/path) to the folder holding "
           f"{corpus.layout} — obtain {corpus.name} from {corpus.obtain} (licence: {corpus.licence})")
    if not value:
        raise PrepError(how)
    root = Path(value).expanduser()
    if not root.is_dir():
        raise PrepError(f"{corpus.var}={value}: not a directory; {how}")
    if corpus.expect and not any(next(iter(root.glob(p)), None) is not None for p in corpus.expect):
        raise PrepError(f"{corpus.var}={value}: found none of {', '.join(corpus.expect)} there; {how}")
    return root.resolve()


# ------------------------------------------------------------------ report
@dataclass
class PrepReport:
    """What preparation left out (and why) and what looked wrong, for the log and data/local/."""

    skipped: list[tuple[str, str]] = field(default_factory=list)  # (what, reason)
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    missing: dict[str, list[str]] = field(default_factory=dict)  # what -> expected items not found

    def skip(self, what: str | Path, reason: str) -> None:
        self.skipped.append((str(what), reason))

    def warn(self, message: str) -> None:
        if message not in self.warnings:
            self.warnings.append(message)
            log.warning(message)

    def note(self, message: str) -> None:
        if message not in self.notes:
            self.notes.append(message)
            log.info(message)

    def skip_counts(self) -> Counter:
        return Counter(_reason_kind(r) for _, r in self.skipped)

    def skipped_for(self, kind: str) -> list[str]:
        return [w for w, r in self.skipped if _reason_kind(r) == kind]

    def summary(self, max_names: int = 5) -> str:
        if not self.skipped:
            return "skipped nothing"
        lines = [f"skipped {len(self.skipped)} file(s)/entries (all listed in local/skipped.txt):"]
        by_kind: dict[str, list[str]] = {}
        for what, reason in self.skipped:
            by_kind.setdefault(_reason_kind(reason), []).append(what)
        for kind, items in sorted(by_kind.items(), key=lambda kv: -len(kv[1])):
            lines.append(f"  {len(items)} {kind}: {_shorten(items, max_names)}")
        return "\n".join(lines)

    def write(self, local_dir: Path) -> None:
        local_dir = Path(local_dir)
        write_text_atomic(local_dir / "skipped.txt",
                          "".join(f"{what}\t{reason}\n" for what, reason in self.skipped))
        write_text_atomic(local_dir / "warnings.txt", "".join(f"{w}\n" for w in self.warnings))
        write_text_atomic(local_dir / "missing.txt",
                          "".join(f"{what}\t{item}\n" for what, items in self.missing.items() for item in items))

    def append_to_log(self, log_file: Path) -> None:
        """Name every skipped file in the log file (stderr shows the summary only)."""
        with open(log_file, "a", encoding="utf-8") as f:
            f.write(f"# {len(self.skipped)} skipped file(s)/entries:\n")
            f.writelines(f"skipped\t{what}\t{reason}\n" for what, reason in self.skipped)


def _shorten(items: Sequence[str], n: int) -> str:
    return ", ".join(items[:n]) + (f", ... (+{len(items) - n})" if len(items) > n else "")


def _reason_kind(reason: str) -> str:
    """The reason without its per-file detail ('unreadable audio: ...' -> 'unreadable audio')."""
    return reason.split(":", 1)[0].strip()


# ------------------------------------------------------------------- audio
@dataclass
class AudioFile:
    path: Path          # absolute
    rel: str            # relative to the corpus root, '/'-separated
    samplerate: int
    channels: int
    frames: int
    format: str         # soundfile's container name (WAV, AIFF, FLAC, ...)
    subtype: str        # PCM_16, PCM_24, FLOAT, ...

    @property
    def stem(self) -> str:
        return self.path.stem

    @property
    def duration(self) -> float:
        return self.frames / self.samplerate if self.samplerate else 0.0


def is_system_file(path: Path) -> bool:
    name = path.name.lower()
    return name in SYSTEM_FILES or name.startswith("._") or name.startswith("~$")


def scan_audio(root: Path, report: PrepReport, dirs: Iterable[Path] | None = None,
               suffixes: Sequence[str] = (".wav",), decode: bool = False,
               ignore: Iterable[Path] = ()) -> list[AudioFile]:
    """Every readable audio file under ``dirs`` (default: the root), recursively, sorted.

    Files are recognised by suffix (case-insensitive) and read by content, so
    AIFF or FLAC data behind a ``.wav`` name is fine. Everything else found —
    system litter, other suffixes, unreadable or empty audio (and with
    ``decode``, undecodable or all-zero audio) — is recorded in ``report``,
    except the annotation files in ``ignore``, which the recipe reads itself.
    """
    root = Path(root).resolve()
    ignored = {Path(p).resolve() for p in ignore}
    suffixes = tuple(s.lower() for s in suffixes)
    found: list[AudioFile] = []
    for top in (list(dirs) if dirs is not None else [root]):
        top = Path(top).resolve()
        for dirpath, dirnames, filenames in os.walk(top):
            here = Path(dirpath)
            for d in list(dirnames):
                if d.lower() in SYSTEM_DIRS:
                    for sub, _, files in os.walk(here / d):
                        for f in files:
                            report.skip(_rel(Path(sub) / f, root), f"system folder ({d})")
                    dirnames.remove(d)
            dirnames.sort()
            for name in sorted(filenames):
                p = here / name
                rel = _rel(p, root)
                if p.resolve() in ignored:
                    continue
                if is_system_file(p):
                    report.skip(rel, "system file")
                    continue
                if p.suffix.lower() not in suffixes:
                    report.skip(rel, f"not audio (suffix {p.suffix or 'none'})")
                    continue
                af = probe_audio(p, rel, report, decode)
                if af is not None:
                    found.append(af)
    _note_formats(found, report)
    return found


def _rel(p: Path, root: Path) -> str:
    try:
        return p.relative_to(root).as_posix()
    except ValueError:
        return str(p)


def probe_audio(p: Path, rel: str, report: PrepReport, decode: bool = False) -> AudioFile | None:
    """Header (and with ``decode`` the samples) of one file; None, with the reason recorded, when unusable."""
    try:
        info = sf.info(str(p))
    except Exception as e:  # soundfile raises several types for bad files
        report.skip(rel, f"unreadable audio: {e}")
        return None
    if info.frames <= 0 or info.samplerate <= 0:
        report.skip(rel, "empty audio: 0 samples")
        return None
    if decode:
        try:
            wav, _ = sf.read(str(p), dtype="float32", always_2d=True)
        except Exception as e:
            report.skip(rel, f"undecodable audio: {e}")
            return None
        if not np.all(np.isfinite(wav)):
            report.skip(rel, "undecodable audio: NaN or Inf samples")
            return None
        if not np.any(wav):
            report.skip(rel, "silent audio: every sample is 0")
            return None
    return AudioFile(p, rel, int(info.samplerate), int(info.channels), int(info.frames),
                     str(info.format), str(info.subtype))


def _note_formats(files: list[AudioFile], report: PrepReport) -> None:
    if not files:
        return
    kinds = Counter(f"{f.format}/{f.subtype}/{f.samplerate}Hz/{f.channels}ch" for f in files)
    report.note("audio as distributed: " + ", ".join(f"{k} x{n}" for k, n in kinds.most_common()))
    odd = [f.rel for f in files if f.path.suffix.lower() == ".wav" and f.format != "WAV"]
    if odd:
        report.note(f"{len(odd)} file(s) named .wav hold other containers (read by content), e.g. {odd[:3]}")


def index_by_stem(files: Iterable[AudioFile], report: PrepReport) -> dict[str, AudioFile]:
    """stem -> file; a second file with the same stem is skipped and named."""
    out: dict[str, AudioFile] = {}
    for f in files:
        if f.stem in out:
            report.skip(f.rel, f"duplicate file name: same stem as {out[f.stem].rel}")
            continue
        out[f.stem] = f
    return out


# -------------------------------------------------------------- utterances
def safe_id(text: str) -> str:
    """An id token: characters outside [A-Za-z0-9_.+-] become '_'."""
    return ID_SAFE.sub("_", text)


class UttTable:
    """Utterances of one corpus, collected into a DataDir.

    Speaker ids are prefixed with the corpus domain (``ravdess-01``) so corpora
    can be combined; utterance ids start with their speaker id, so a
    speaker's utterances are contiguous (Kaldi convention).
    """

    def __init__(self, domain: str):
        self.domain = domain
        self.tables: dict[str, dict[str, str]] = {"wav.scp": {}, "utt2spk": {}, "utt2domain": {}}
        self.sources: dict[str, str] = {}

    def speaker(self, raw: str) -> str:
        return f"{self.domain}-{safe_id(raw)}"

    def utt_id(self, spk: str, name: str) -> str:
        return f"{spk}-{safe_id(name)}"

    def __contains__(self, utt: str) -> bool:
        return utt in self.tables["utt2spk"]

    def __len__(self) -> int:
        return len(self.tables["utt2spk"])

    def add(self, utt: str, *, wav: str | Path, spk: str, source: str, emo: str | None = None,
            avd: tuple[float, float, float] | None = None, gender: str | None = None,
            text: str | None = None, **extra: str) -> None:
        """One utterance; ``avd`` is (arousal, valence, dominance); ``extra`` becomes utt2<key> files."""
        if utt in self.sources:
            raise PrepError(f"utterance id {utt!r} from {source} was already made from {self.sources[utt]}")
        for what, tok in (("utterance id", utt), ("speaker id", spk), ("label", emo)):
            if tok is not None and (not tok or any(c.isspace() for c in tok)):
                raise PrepError(f"{source}: {what} {tok!r} is empty or contains white space")
        self.sources[utt] = source
        self._put("wav.scp", utt, str(wav))
        self._put("utt2spk", utt, spk)
        self._put("utt2domain", utt, self.domain)
        if emo is not None:
            self._put("utt2emo", utt, emo)
        if avd is not None:
            self._put("utt2avd", utt, " ".join(format(float(v), ".6g") for v in avd))
        if gender is not None:
            self._put("utt2gender", utt, gender)
        if text is not None:
            self._put("text", utt, " ".join(text.split()))
        for key, value in extra.items():
            value = str(value)
            if not value.strip():
                raise PrepError(f"{source}: empty value for utt2{key}")
            self._put(f"utt2{key}", utt, " ".join(value.split()))

    def _put(self, table: str, utt: str, value: str) -> None:
        self.tables.setdefault(table, {})[utt] = value

    def to_datadir(self) -> DataDir:
        """The data dir; every per-utterance file must cover every utterance."""
        utts = set(self.tables["utt2spk"])
        if not utts:
            raise PrepError("no utterance was found; check the corpus path and layout (see the skipped files above)")
        for name, table in self.tables.items():
            lacking = utts - set(table)
            if lacking:
                ex = byte_sorted(lacking)[:3]
                raise PrepError(f"{name}: {len(lacking)} utterance(s) have no value, e.g. "
                                f"{[f'{u} ({self.sources[u]})' for u in ex]}")
        return DataDir({k: dict(v) for k, v in self.tables.items()})


# ----------------------------------------------------------- count checks
def check_counts(report: PrepReport, what: str, observed: Mapping[str, int], expected: Mapping[str, int]) -> bool:
    """Warn (naming each difference) when counts differ from the full corpus's; True when equal."""
    diffs = [f"{k}: {observed.get(k, 0)} (expected {n})" for k, n in expected.items() if observed.get(k, 0) != n]
    diffs += [f"{k}: {n} (not expected at all)" for k, n in observed.items() if k not in expected]
    if diffs:
        total, want = sum(observed.values()), sum(expected.values())
        report.warn(f"{what}: found {total}, the full corpus has {want}; differences: " + "; ".join(diffs)
                    + ". A partial or modified copy? Skipped files are listed in local/skipped.txt")
        return False
    log.info("%s: %d, as in the full corpus", what, sum(observed.values()))
    return True


def check_items(report: PrepReport, what: str, found: Iterable[str], expected: Iterable[str],
                max_names: int = 20) -> list[str]:
    """Warn naming the expected items (e.g. file names) that were not found; return them all."""
    missing = byte_sorted(set(expected) - set(found))
    report.missing[what] = missing
    if missing:
        report.warn(f"{what}: {len(missing)} missing from this copy (all in local/missing.txt): "
                    f"{_shorten(missing, max_names)}")
    return missing


# ---------------------------------------------------------- split lists
@dataclass
class SplitList:
    """A committed split list: data-dir name -> units (speakers, sessions, ...)."""

    path: Path
    unit: str
    version: str
    sets: dict[str, list[str]]
    sha256: str

    @property
    def unit_table(self) -> str:
        return "utt2spk" if self.unit == "speaker" else UTT_UNIT if self.unit == UTT_UNIT else f"utt2{self.unit}"


UTT_UNIT = "utt"  # a list of utterance ids (e.g. imported EmoBox folds): every utterance is its own unit


def _utt2unit(corpus: DataDir, table: str) -> dict[str, str] | None:
    """utt -> the unit a split list names (None when the corpus lacks that table)."""
    if table == UTT_UNIT:
        return {u: u for u in corpus.utts}
    if table not in corpus.tables:
        return None
    return {u: v.split()[0] for u, v in corpus.tables[table].items()}


def read_split_list(path: str | Path) -> SplitList:
    path = Path(path)
    if not path.is_file():
        raise PrepError(f"{path}: split list not found; restore the committed file")
    meta: dict[str, str] = {}
    sets: dict[str, list[str]] = {}
    for lineno, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.strip()
        if not line:
            continue
        if line.startswith("#"):
            m = re.match(r"#\s*(unit|version)\s*:\s*(\S+)\s*$", line)
            if m:
                meta[m.group(1)] = m.group(2)
            continue
        parts = line.split()
        if len(parts) < 2:
            raise PrepError(f"{path}:{lineno}: expected 'set-name unit1 unit2 ...', got {raw!r}")
        name, units = parts[0], parts[1:]
        if name in sets:
            raise PrepError(f"{path}:{lineno}: set {name!r} is listed twice")
        if len(set(units)) != len(units):
            raise PrepError(f"{path}:{lineno}: set {name!r} lists a unit twice")
        sets[name] = units  # a unit may be in several sets (every fold's train set)
    for key in ("unit", "version"):
        if key not in meta:
            raise PrepError(f"{path}: missing '# {key}: ...' header line")
    if not sets:
        raise PrepError(f"{path}: no sets listed")
    return SplitList(path, meta["unit"], meta["version"], sets, sha256_file(path))


def write_split_list(path: str | Path, sets: Mapping[str, Sequence[str]], unit: str, version: int | str,
                     description: Sequence[str] = ()) -> Path:
    """Write a list file (atomic); sets keep their given order, units are byte-sorted."""
    lines = ["# sertk split list", f"# version: {version}", f"# unit: {unit}"]
    lines += [f"# {d}" for d in description]
    for name, units in sets.items():
        if not units:
            raise PrepError(f"split list {path}: set {name!r} has no units")
        lines.append(" ".join([name, *byte_sorted(units)]))
    write_text_atomic(path, "\n".join(lines) + "\n")
    return Path(path)


def assign_folds(units: Iterable[str], n_folds: int, seed: int,
                 strata: Mapping[str, str] | None = None) -> list[list[str]]:
    """Deal units into ``n_folds`` folds at random (seeded), balanced within each stratum.

    Units of each stratum (e.g. gender) are shuffled and dealt round-robin,
    continuing where the previous stratum stopped, so fold sizes differ by at
    most one and every stratum is spread evenly. Same seed, same folds.
    """
    units = byte_sorted(set(units))
    if len(units) < n_folds:
        raise PrepError(f"{len(units)} unit(s) cannot fill {n_folds} folds")
    rng = random.Random(seed)
    groups: dict[str, list[str]] = {}
    for u in units:
        groups.setdefault(strata[u] if strata else "", []).append(u)
    folds: list[list[str]] = [[] for _ in range(n_folds)]
    k = 0
    for g in byte_sorted(groups):
        members = groups[g]
        rng.shuffle(members)
        for u in members:
            folds[k % n_folds].append(u)
            k += 1
    return [byte_sorted(f) for f in folds]


def split_units(units: Iterable[str], fractions: Mapping[str, float], seed: int,
                strata: Mapping[str, str] | None = None) -> dict[str, list[str]]:
    """Disjoint parts with about the given fractions of units, within each stratum (seeded)."""
    units = byte_sorted(set(units))
    if any(f <= 0 for f in fractions.values()):
        raise PrepError(f"fractions must be positive, got {dict(fractions)}")
    total = sum(fractions.values())
    names = list(fractions)
    rng = random.Random(seed)
    groups: dict[str, list[str]] = {}
    for u in units:
        groups.setdefault(strata[u] if strata else "", []).append(u)
    out: dict[str, list[str]] = {n: [] for n in names}
    for g in byte_sorted(groups):
        members = groups[g]
        rng.shuffle(members)
        want = [fractions[n] / total * len(members) for n in names]
        count = [int(w) for w in want]
        # largest remainder, ties in the order the parts were given
        for i in sorted(range(len(names)), key=lambda i: -(want[i] - count[i]))[: len(members) - sum(count)]:
            count[i] += 1
        start = 0
        for n, c in zip(names, count):
            out[n] += members[start:start + c]
            start += c
    empty = [n for n, us in out.items() if not us]
    if empty:
        raise PrepError(f"parts {empty} came out empty: {len(units)} unit(s) are too few for {dict(fractions)}")
    return {n: byte_sorted(us) for n, us in out.items()}


def fold_sets(folds: Sequence[Sequence[str]], dev: str | None = None, prefix: str = "fold") -> dict[str, list[str]]:
    """Set name -> units for cross-validation: fold k tests on folds[k-1].

    ``dev=None``: train on every other fold. ``dev="next"``: the next fold
    (cyclically) is the dev set and the remaining folds train.
    """
    n = len(folds)
    out: dict[str, list[str]] = {}
    for k in range(n):
        dev_k = (k + 1) % n if dev == "next" else None
        if dev not in (None, "next"):
            raise ValueError(f"fold_sets: dev must be None or 'next', got {dev!r}")
        train = [u for j in range(n) if j not in (k, dev_k) for u in folds[j]]
        out[f"{prefix}{k + 1}_train"] = list(train)
        if dev_k is not None:
            out[f"{prefix}{k + 1}_dev"] = list(folds[dev_k])
        out[f"{prefix}{k + 1}_test"] = list(folds[k])
    return out


# ------------------------------------------------- protocol data dirs
@dataclass
class _SetPlan:
    name: str
    units: list[str]
    unit: str
    unit_table: str
    list_path: Path
    label_map: str | None
    label_from: str | None
    protocols: list[str]


def plan_protocol_sets(protocols_path: str | Path) -> dict[str, _SetPlan]:
    """Which data dirs the protocols need, from which list units, filtered by which label map."""
    splits = load_protocols(protocols_path)
    plans: dict[str, _SetPlan] = {}
    by_protocol: dict[str, list] = {}
    for s in splits:
        by_protocol.setdefault(s.protocol, []).append(s)
    for proto, ss in by_protocol.items():
        lists = [read_split_list(p) for p in ss[0].lists]
        defined: dict[str, SplitList] = {}
        for sl in lists:
            for name in sl.sets:
                if name in defined:
                    raise PrepError(f"{protocols_path}: protocol {proto!r}: set {name!r} is defined by both "
                                    f"{defined[name].path} and {sl.path}")
                defined[name] = sl
        used = []
        for s in ss:
            used += [s.train, *( [s.dev] if s.dev else []), *s.tests]
        label_from = ss[0].options.get("label_from")
        for name in dict.fromkeys(used):
            if name == "all":
                continue
            if name not in defined:
                raise PrepError(f"{protocols_path}: protocol {proto!r} uses set {name!r}, which none of its lists "
                                f"({', '.join(str(p) for p in ss[0].lists) or 'none given'}) defines")
            sl = defined[name]
            plan = _SetPlan(name, sl.sets[name], sl.unit, sl.unit_table, sl.path, ss[0].label_map, label_from, [proto])
            old = plans.get(name)
            if old is not None:
                if (old.units, old.unit_table, old.label_map, old.label_from) != \
                        (plan.units, plan.unit_table, plan.label_map, plan.label_from):
                    raise PrepError(f"{protocols_path}: set {name!r} is used by protocols {old.protocols + [proto]} "
                                    "with different units or label maps; give the sets distinct names")
                old.protocols.append(proto)
            else:
                plans[name] = plan
    return plans


def build_protocol_sets(corpus: DataDir, protocols_path: str | Path, out: str | Path, report: PrepReport,
                        optional: bool = False) -> dict[str, DataDir]:
    """Write every data dir the protocols file uses, from the corpus's ``all`` data dir.

    A set holds the utterances whose unit its list names and, when its
    protocol has a label map, whose label the map knows (aliases included).
    ``label_from: utt2X`` in a protocol takes the labels from utt2X instead.
    Listed units absent from this copy are warnings; a set left empty is an
    error, or (``optional``, e.g. a test partition of a later release) skipped.
    """
    out = Path(out)
    written: dict[str, DataDir] = {}
    plans = plan_protocol_sets(protocols_path)
    maps: dict[str, LabelMap] = {}
    for name, plan in plans.items():
        utt2unit = _utt2unit(corpus, plan.unit_table)
        if utt2unit is None:
            raise PrepError(f"{plan.list_path}: unit '{plan.unit}' needs {plan.unit_table}, "
                            "which this corpus's data does not have")
        want = set(plan.units)
        utts = [u for u in corpus.utts if utt2unit.get(u) in want]
        sub = corpus.subset(utts) if utts else None
        if sub is not None and plan.label_from:
            if plan.label_from not in sub.tables:
                raise PrepError(f"{protocols_path}: set {name} takes its labels from {plan.label_from} (label_from), "
                                f"which the prepared data lacks; see the warnings above (an annotation file missing?)")
            sub.tables["utt2emo"] = dict(sub.tables[plan.label_from])
        if sub is not None and plan.label_map:
            lm = maps.setdefault(plan.label_map, LabelMap.load(plan.label_map))
            labels = sub.utt2emo
            keep = [u for u in sub.utts if labels.get(u) in lm]
            dropped = Counter(labels.get(u, "<none>") for u in sub.utts if labels.get(u) not in lm)
            if dropped:
                log.info("%s: %d utterance(s) outside label map %s left out: %s", name, sum(dropped.values()),
                         Path(plan.label_map).name, ", ".join(f"{k} {v}" for k, v in sorted(dropped.items())))
            sub = sub.subset(keep) if keep else None
        if sub is None:
            msg = (f"set {name}: none of the {plan.unit}s {plan.units[:10]} that {plan.list_path.name} assigns to it"
                   f" has utterances{' in label map ' + Path(plan.label_map).name if plan.label_map else ''}")
            if optional:
                report.note(f"{msg}; skipped (optional)")
                continue
            raise PrepError(msg + " in this copy; is the corpus complete?")
        sub.write(out / name)
        written[name] = sub
        log.info("wrote %s: %d utterances, %d speakers", out / name, len(sub), len(sub.spk2utt))
    _report_list_coverage(corpus, plans, report, optional)
    return written


def _report_list_coverage(corpus: DataDir, plans: Mapping[str, _SetPlan], report: PrepReport,
                          optional: bool = False) -> None:
    """One line per list file: listed units absent from this copy, and units of the copy it leaves out."""
    by_list: dict[Path, list[_SetPlan]] = {}
    for p in plans.values():
        by_list.setdefault(p.list_path, []).append(p)
    for path, ps in by_list.items():
        utt2unit = _utt2unit(corpus, ps[0].unit_table)
        if utt2unit is None:
            continue
        present = set(utt2unit.values())
        listed = {u for p in ps for u in p.units}
        absent = byte_sorted(listed - present)
        spare = byte_sorted(present - listed)
        if absent:
            (report.note if optional else report.warn)(
                f"{path.name}: {len(absent)} listed {ps[0].unit}(s) have no utterance in this copy: "
                f"{', '.join(absent[:30])}{' ...' if len(absent) > 30 else ''}")
        if spare:
            report.note(f"{path.name}: {len(spare)} {ps[0].unit}(s) of this copy are in none of the sets used: "
                        f"{', '.join(spare[:30])}{' ...' if len(spare) > 30 else ''}")


# ------------------------------------------------------ the command line
BuildFn = Callable[[Path, argparse.Namespace, PrepReport], DataDir]


def prepare_parser(corpus: CorpusInfo, doc: str | None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=doc,
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=f"{corpus.name}: {corpus.layout}. Obtain it from {corpus.obtain}; "
                                       f"licence: {corpus.licence}.")
    p.add_argument("--db", default=os.environ.get(corpus.var), help=f"corpus root (db.sh: {corpus.var})")
    p.add_argument("--out", default="data", help="root of the data dirs to write")
    p.add_argument("--protocols", nargs="+", default=["conf/protocols.yaml"],
                   help="protocols files whose sets to build (their list files must exist)")
    p.add_argument("--optional-protocols", nargs="*", default=[],
                   help="protocols files whose sets are built only when their units are present")
    p.add_argument("--decode-audio", action="store_true",
                   help="decode every file (slower): also skips undecodable and all-zero audio")
    p.add_argument("--write-splits", action="store_true",
                   help="(re)generate the committed split list files of this recipe and exit")
    return p


def run_prepare(corpus: CorpusInfo, build: BuildFn, argv: list[str] | None = None, doc: str | None = None,
                add_args: Callable[[argparse.ArgumentParser], None] | None = None,
                write_splits: Callable[[argparse.Namespace], list[Path]] | None = None,
                finish: Callable[[argparse.Namespace], int] | None = None) -> int:
    """Parse the shared options, build the corpus, write ``all`` and every protocol set.

    ``finish(args)`` runs after a successful preparation; its return value is the exit status.
    """
    from sertk.common.logging import setup_logging

    p = prepare_parser(corpus, doc)
    if add_args:
        add_args(p)
    args = p.parse_args(argv)
    if args.write_splits:
        setup_logging()
        if write_splits is None:
            print(f"{corpus.name}: this recipe has no generated split lists", file=sys.stderr)
            return 1
        for path in write_splits(args):
            print(f"wrote {path} (sha256 {sha256_file(path)})")
        return 0
    out = Path(args.out)
    setup_logging(out / "local" / "prepare.log")
    report = PrepReport()
    try:
        db = require_db(corpus, args.db)
        log.info("preparing %s from %s into %s", corpus.name, db, out)
        corpus_dd = build(db, args, report)
        corpus_dd.write(out / "all")
        log.info("wrote %s: %d utterances, %d speakers", out / "all", len(corpus_dd), len(corpus_dd.spk2utt))
        for proto in args.protocols:
            build_protocol_sets(corpus_dd, proto, out, report)
        for proto in args.optional_protocols:
            build_protocol_sets(corpus_dd, proto, out, report, optional=True)
    except (PrepError, ConfigError) as e:
        report.write(out / "local")
        log.info("%s", report.summary())  # what was left out is no error; the failure below is
        report.append_to_log(out / "local" / "prepare.log")
        log.error("%s preparation failed: %s", corpus.name, e)
        return 1
    report.write(out / "local")
    log.info("%s", report.summary())
    report.append_to_log(out / "local" / "prepare.log")
    if report.warnings:
        log.warning("%d warning(s); see above and %s", len(report.warnings), out / "local" / "warnings.txt")
    return finish(args) if finish else 0
