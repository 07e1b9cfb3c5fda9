"""Evaluation protocols: which data dirs train, select (dev) and test a model.

A recipe's ``conf/protocols.yaml`` names them; every result records the
protocol id and a digest of the exact utterance lists it used, so two figures
can be compared only when they were computed on the same split::

    corpus: mini_emo
    label_map: labels.yaml             # relative to this file
    protocols:
      studio:                        # train on one domain, test in and out of it
        scheme: speaker-independent
        train: studio_train
        dev: studio_dev
        test: [studio_test, phone_test]
      loso:                          # folds: one entry per fold
        scheme: leave-one-session-out
        lists: splits/loso.txt         # committed list file(s) the sets were built from
        lists_sha256: 9f2c...          # optional: refuse a list file that changed
        folds:
          - {train: fold1_train, dev: fold1_dev, test: [fold1_test]}

A set is validated (stage 1) against the label map of the protocol that uses
it (a protocol's own ``label_map:`` overrides the file's), and its utterances
must be at least ``min_duration`` seconds long (top level, default 0.25).

A protocol's ``lists`` name the committed, versioned split list files
(sertk.data.corpus_prep) that its data dirs are built from; every result then
also records their sha256 (``lists_hash``), so a figure names the exact split.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from sertk.common.config import ConfigError, load_yaml
from sertk.common.fileio import sha256_file
from sertk.data.datadir import byte_sorted


@dataclass
class Split:
    """One train/dev/test assignment (a protocol, or one fold of it)."""

    corpus: str
    protocol: str
    scheme: str
    train: str
    dev: str | None
    tests: list[str]
    label_map: str | None
    fold: int | None = None
    options: dict = field(default_factory=dict)
    lists: list[str] = field(default_factory=list)  # resolved paths of the committed split list files

    @property
    def tag(self) -> str:
        """Directory name under an experiment: ``studio`` or ``loso/fold3``."""
        return self.protocol if self.fold is None else f"{self.protocol}/fold{self.fold}"

    def record(self, test: str, data_root: str | Path) -> dict:
        """The protocol dict stored with every result (see sertk.eval.results)."""
        rec = {
            "corpus": self.corpus,
            "protocol": self.protocol,
            "fold": self.fold,
            "scheme": self.scheme,
            "train": self.train,
            "dev": self.dev,
            "test": test,
            "label_map": Path(self.label_map).stem if self.label_map else "none",
            "hash": split_digest(data_root, [self.train, self.dev, test]),
        }
        if self.lists:
            rec["lists"] = [Path(p).name for p in self.lists]
            rec["lists_hash"] = lists_digest(self.lists)
        return rec


def split_digest(data_root: str | Path, sets: list[str | None]) -> str:
    """Digest of the utterance and speaker lists of the given data dirs."""
    h = hashlib.sha256()
    for s in sets:
        if s is None:
            continue
        f = Path(data_root) / s / "utt2spk"
        h.update(s.encode())
        h.update(f.read_bytes() if f.exists() else b"missing")
    return h.hexdigest()[:12]


def lists_digest(paths: list[str | Path]) -> str:
    """sha256 of one list file, or of the concatenated per-file digests for several."""
    digests = [sha256_file(p) for p in paths]
    if len(digests) == 1:
        return digests[0]
    return hashlib.sha256("".join(digests).encode()).hexdigest()


def _resolve_lists(spec: dict, base: Path, where: str, check: bool) -> list[str]:
    """The protocol's ``lists`` as absolute paths; verify existence and ``lists_sha256``."""
    lists = [str(base / p) for p in _as_list(spec.get("lists"))]
    if not check:
        return lists
    for p in lists:
        if not Path(p).is_file():
            raise ConfigError(f"{where}: split list file {p} does not exist; restore the committed file "
                              "(git checkout) or, for an imported corpus, run stage 1 to create it")
    want = spec.get("lists_sha256")
    if want and lists:
        got = lists_digest(lists)
        if got != str(want):
            raise ConfigError(f"{where}: split list {', '.join(lists)} has sha256 {got}, but the protocol pins "
                              f"{want}; the split changed. If that is deliberate, bump the list's version "
                              "line and update lists_sha256")
    return lists


def _as_list(value) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


def load_protocols(path: str | Path, only: list[str] | None = None, check_lists: bool = True) -> list[Split]:
    """Every split of the protocols file; ``check_lists=False`` skips the list-file checks
    (data preparation creates an imported corpus's list on its first run)."""
    cfg = load_yaml(path)
    corpus = cfg.get("corpus")
    if not corpus:
        raise ConfigError(f"{path}: missing 'corpus'")
    protos = cfg.get("protocols")
    if not isinstance(protos, dict) or not protos:
        raise ConfigError(f"{path}: 'protocols' must map protocol names to their sets")
    base = Path(path).resolve().parent

    def resolve(p):  # relative paths in the file are relative to the file
        return str(base / p) if p else None

    label_map = resolve(cfg.get("label_map"))
    out: list[Split] = []
    for name, spec in protos.items():
        if only and name not in only:
            continue
        if not isinstance(spec, dict):
            raise ConfigError(f"{path}: protocol {name!r} must be a mapping")
        scheme = spec.get("scheme", "unspecified")
        lists = _resolve_lists(spec, base, f"{path}: protocol {name!r}", check_lists)
        folds = spec.get("folds")
        entries = folds if folds is not None else [spec]
        for k, entry in enumerate(entries, 1):
            where = f"{path}: protocol {name!r}" + (f" fold {k}" if folds is not None else "")
            if "train" not in entry or not _as_list(entry.get("test")):
                raise ConfigError(f"{where}: needs 'train' and at least one 'test' set")
            out.append(Split(
                corpus=corpus, protocol=name, scheme=scheme, train=entry["train"], dev=entry.get("dev"),
                tests=_as_list(entry.get("test")), label_map=resolve(spec["label_map"]) if spec.get("label_map") else label_map,
                fold=k if folds is not None else None,
                options={k2: v for k2, v in spec.items()
                         if k2 not in ("train", "dev", "test", "folds", "scheme", "lists", "lists_sha256")},
                lists=lists,
            ))
    if only and not out:
        raise ConfigError(f"{path}: none of the protocols {only} exist")
    return out


def all_sets(splits: list[Split]) -> list[str]:
    names = set()
    for s in splits:
        names.update([s.train, *s.tests] + ([s.dev] if s.dev else []))
    return byte_sorted(names)


def label_maps_by_set(splits: list[Split]) -> dict[str, list[str]]:
    """Each set -> the label map file(s) of the protocols that use it, in protocol order.

    A protocols file may give each protocol its own map (MSP-Podcast's 8 and
    10 classes, FAU-Aibo's 5 and 2): a set's labels are checked against the
    map(s) of its own protocol(s), never against another protocol's.
    """
    out: dict[str, list[str]] = {name: [] for name in all_sets(splits)}
    for s in splits:
        for name in [s.train, *s.tests] + ([s.dev] if s.dev else []):
            if s.label_map and s.label_map not in out[name]:
                out[name].append(s.label_map)
    return out


def min_duration_of(path: str | Path, default: float) -> float:
    """The protocols file's ``min_duration:`` (shortest usable utterance, seconds), else ``default``."""
    value = load_yaml(path).get("min_duration", default)
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{path}: min_duration must be a number of seconds, got {value!r}") from None
    if value < 0:
        raise ConfigError(f"{path}: min_duration must be >= 0, got {value}")
    return value
