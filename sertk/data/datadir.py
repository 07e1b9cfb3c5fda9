"""Kaldi-style data directories: one text file per field, one line per utterance.

Files are kept in byte order (what ``LC_ALL=C sort`` gives), independent of
the user's locale. Parsing errors name the file and the 1-based line number.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from sertk.common.fileio import atomic_dir

# Per-utterance files: name -> minimum number of value fields after the key.
UTT_FILES = {
    "wav.scp": 1,
    "segments": 3,
    "utt2spk": 1,
    "utt2emo": 1,
    "utt2avd": 3,
    "utt2gender": 1,
    "utt2domain": 1,
    "text": 0,
    "utt2caption": 0,
}
# wav.scp is keyed by recording id when a segments file is present.
REQUIRED = ("wav.scp", "utt2spk")
# Per-utterance targets. A multi-corpus dir may hold each for only some
# utterances (a corpus without A/V/D): combining keeps them where present.
LABEL_FILES = ("utt2emo", "utt2avd")


class DataDirError(ValueError):
    """A malformed data directory; the message names file and line."""


def byte_sorted(keys: Iterable[str]) -> list[str]:
    """Sort like ``LC_ALL=C sort``: by UTF-8 bytes, never by locale."""
    return sorted(keys, key=lambda s: s.encode("utf-8"))


def read_table(path: Path, min_fields: int = 1, check_order: bool = True) -> dict[str, str]:
    """Read ``key rest-of-line`` lines into an ordered dict, with precise errors."""
    out: dict[str, str] = {}
    prev: str | None = None
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError as e:
                raise DataDirError(f"{path}:{lineno}: not valid UTF-8 ({e}); re-encode the file as UTF-8") from e
            if not line.strip():
                raise DataDirError(f"{path}:{lineno}: empty line; delete it")
            parts = line.split(maxsplit=1)
            key = parts[0]
            rest = parts[1].strip() if len(parts) > 1 else ""
            if min_fields and len(rest.split()) < min_fields:
                raise DataDirError(
                    f"{path}:{lineno}: expected '{key}' followed by {min_fields} field(s), got {line!r}")
            if key in out:
                raise DataDirError(f"{path}:{lineno}: duplicate id {key!r}; ids must be unique")
            if check_order and prev is not None and key.encode() < prev.encode():
                raise DataDirError(
                    f"{path}:{lineno}: id {key!r} comes after {prev!r} but sorts before it; "
                    f"sort the file with 'LC_ALL=C sort' (or utils/fix_data_dir.sh)")
            out[key] = rest
            prev = key
    return out


def write_table(path: Path, table: dict[str, str]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for k in byte_sorted(table):
            f.write(f"{k} {table[k]}\n" if table[k] != "" else f"{k}\n")


@dataclass
class DataDir:
    """An in-memory data directory: per-utterance tables of raw strings.

    ``tables['wav.scp']`` is keyed by recording when ``segments`` exists, by
    utterance otherwise; every other table is keyed by utterance.
    """

    tables: dict[str, dict[str, str]] = field(default_factory=dict)
    path: Path | None = None

    # ----------------------------------------------------------------- I/O
    @classmethod
    def read(cls, path: str | Path, check_order: bool = True) -> "DataDir":
        path = Path(path)
        if not path.is_dir():
            raise DataDirError(f"{path}: not a data directory")
        tables = {}
        for name, nf in UTT_FILES.items():
            f = path / name
            if f.exists():
                tables[name] = read_table(f, nf, check_order)
        # corpus-specific per-utterance fields (utt2intensity, utt2session, ...) travel along
        for f in sorted(path.glob("utt2*")):
            if f.is_file() and f.name not in tables:
                tables[f.name] = read_table(f, 1, check_order)
        for name in REQUIRED:
            if name not in tables:
                raise DataDirError(f"{path}: missing required file {name}")
        return cls(tables, path)

    def write(self, path: str | Path) -> None:
        """Write atomically: the directory appears complete or not at all."""
        path = Path(path)
        with atomic_dir(path) as tmp:
            for name, table in self.tables.items():
                write_table(tmp / name, table)
            write_table(tmp / "spk2utt", {s: " ".join(u) for s, u in self.spk2utt.items()})
        self.path = path

    # -------------------------------------------------------------- access
    @property
    def utts(self) -> list[str]:
        return byte_sorted(self.tables["utt2spk"])

    def __len__(self) -> int:
        return len(self.tables["utt2spk"])

    def has(self, name: str) -> bool:
        return name in self.tables

    @property
    def utt2spk(self) -> dict[str, str]:
        return self.tables["utt2spk"]

    @property
    def spk2utt(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for u in self.utts:
            out.setdefault(self.utt2spk[u], []).append(u)
        return {s: out[s] for s in byte_sorted(out)}

    @property
    def utt2emo(self) -> dict[str, str]:
        return self.tables.get("utt2emo", {})

    @property
    def utt2avd(self) -> dict[str, tuple[float, float, float]]:
        """Arousal, valence, dominance as floats (order of the utt2avd file)."""
        out = {}
        for u, v in self.tables.get("utt2avd", {}).items():
            try:
                a, val, d = (float(x) for x in v.split()[:3])
            except ValueError as e:
                raise DataDirError(f"utt2avd: utterance {u}: non-numeric value {v!r}") from e
            out[u] = (a, val, d)
        return out

    def field(self, name: str) -> dict[str, str]:
        return self.tables.get(name, {})

    def audio_source(self, utt: str) -> tuple[str, float | None, float | None]:
        """(path, start, end) for an utterance, following ``segments`` if present."""
        if "segments" in self.tables:
            rec, start, end = self.tables["segments"][utt].split()[:3]
            return self.tables["wav.scp"][rec], float(start), float(end)
        return self.tables["wav.scp"][utt], None, None

    # ------------------------------------------------------------ editing
    def subset(self, utts: Iterable[str]) -> "DataDir":
        keep = set(utts)
        missing = keep - set(self.utt2spk)
        if missing:
            raise DataDirError(f"subset: {len(missing)} ids not in the data dir, e.g. {sorted(missing)[:3]}")
        tables = {}
        for name, table in self.tables.items():
            if name == "wav.scp" and "segments" in self.tables:
                recs = {self.tables["segments"][u].split()[0] for u in keep}
                tables[name] = {k: v for k, v in table.items() if k in recs}
            else:
                tables[name] = {k: v for k, v in table.items() if k in keep}
        return DataDir(tables)

    def with_prefix(self, prefix: str) -> "DataDir":
        """Utterance, speaker (and recording) ids prefixed ``prefix-``, so corpora can be combined."""
        def p(x: str) -> str:
            return f"{prefix}-{x}"
        tables: dict[str, dict[str, str]] = {}
        for name, table in self.tables.items():
            if name == "wav.scp" and "segments" in self.tables:
                tables[name] = {p(r): v for r, v in table.items()}
            elif name == "segments":
                tables[name] = {p(u): " ".join([p(v.split()[0]), *v.split()[1:]]) for u, v in table.items()}
            elif name == "utt2spk":
                tables[name] = {p(u): p(v) for u, v in table.items()}
            else:
                tables[name] = {p(u): v for u, v in table.items()}
        return DataDir(tables)

    @classmethod
    def combine(cls, dirs: list["DataDir"]) -> "DataDir":
        """Union of data dirs; ids must not collide (prefix them per corpus).

        Label tables (``LABEL_FILES``) are kept for the utterances that have
        them, so one corpus without A/V/D does not erase every other corpus's
        (SELM trains its dimensional view on those). ``wav.scp`` and ``utt2spk``
        must be in every dir; any other file present in only some dirs is
        dropped with a warning.
        """
        log = logging.getLogger(__name__)
        for i, d in enumerate(dirs, 1):
            for n in REQUIRED:
                if n not in d.tables:
                    raise DataDirError(f"combine: {d.path or f'data dir {i}'} has no {n}, which every dir needs")
        present = [set(d.tables) for d in dirs]
        common = set.intersection(*present)
        if any("segments" in p for p in present) and "segments" not in common:
            raise DataDirError("combine: either all or none of the dirs may have a segments file")
        labels = {n for n in LABEL_FILES if any(n in p for p in present)}
        names = [n for n in (*UTT_FILES, *sorted(set().union(*present))) if n in common | labels]
        tables: dict[str, dict[str, str]] = {n: {} for n in dict.fromkeys(names)}
        for d in dirs:
            for n in tables:
                for k, v in d.tables.get(n, {}).items():
                    if k in tables[n] and tables[n][k] != v:
                        raise DataDirError(f"combine: id {k!r} in {n} appears twice with different values")
                    tables[n][k] = v
        n_utts = len(tables["utt2spk"])
        for n in sorted(labels - common):
            log.info("combine: %s covers %d of %d utterances (only some dirs have it)", n, len(tables[n]), n_utts)
        dropped = set().union(*present) - set(tables)
        if dropped:
            log.warning("combine: fields not present in every dir were dropped: %s", ", ".join(sorted(dropped)))
        return cls(tables)


def is_finite_avd(values: tuple[float, ...]) -> bool:
    return all(math.isfinite(v) for v in values)
