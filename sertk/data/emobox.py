"""EmoBox's published folds as a sertk split list, so figures are comparable with the EmoBox benchmark.

EmoBox (Ma et al., Interspeech 2024) ships, per corpus, ``data/<corpus>/fold_N/
<corpus>_{train,test}_fold_N.jsonl`` (some corpora spell it ``foldN``): one JSON
object per utterance with ``key``, ``wav`` (a path under its download dir) and
``emo``. Its keys are not sertk's utterance ids, so utterances are matched by
the audio file's name (``wav``'s stem against ``wav.scp``'s), which both
importers keep. The folds become a split list of ``unit: utt`` that
``conf/protocols.yaml`` names like any other.
"""
from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Mapping

from sertk.data.datadir import DataDir

AUDIO_SUFFIX = re.compile(r"\.(wav|flac|mp3|ogg|m4a|opus|aac|sph)$", re.IGNORECASE)
FOLD_FILE = re.compile(r"^(?P<corpus>.+)_(?P<part>train|valid|test)_fold_?(?P<k>\d+)\.jsonl$")


class EmoBoxError(ValueError):
    """An EmoBox fold dir that cannot be read or matched; the message names the file and line."""


@dataclass
class EmoBoxFolds:
    """Per fold k: part ("train"/"valid"/"test") -> sertk utterance ids, plus what did not match."""

    folds: dict[int, dict[str, list[str]]]
    unmatched: dict[str, list[str]] = field(default_factory=dict)  # file name -> EmoBox keys with no utterance
    labels: Counter = field(default_factory=Counter)  # (EmoBox label, sertk label) pairs of matched utterances


def _stem(path: str) -> str:
    return PurePosixPath(path.replace("\\", "/")).stem


def _audio_stem(rx: str) -> str:
    """The audio file name of a wav.scp entry: its one path, or in a command the token naming an audio file."""
    tokens = rx.split()
    audio = [t for t in tokens if AUDIO_SUFFIX.search(t)]
    return _stem(audio[0] if audio else tokens[-1])


def _fold_files(root: Path) -> dict[int, dict[str, Path]]:
    if not root.is_dir():
        raise EmoBoxError(f"{root}: not a directory (give EmoBox's data/<corpus> dir, which holds fold_N/)")
    found: dict[int, dict[str, Path]] = {}
    for path in sorted(root.glob("fold*/*.jsonl")):
        m = FOLD_FILE.match(path.name)
        if not m:
            continue
        k, part = int(m["k"]), m["part"]
        if part in found.setdefault(k, {}):
            raise EmoBoxError(f"{path}: fold {k} has two {part} files ({found[k][part].name} and {path.name})")
        found[k][part] = path
    if not found:
        raise EmoBoxError(f"{root}: no fold_N/<corpus>_{{train,test}}_fold_N.jsonl files")
    for k, parts in found.items():
        for need in ("train", "test"):
            if need not in parts:
                raise EmoBoxError(f"{root}: fold {k} has no {need} file")
    return dict(sorted(found.items()))


def _read_jsonl(path: Path) -> list[dict]:
    rows = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise EmoBoxError(f"{path}:{lineno}: not JSON: {e}") from e
        if not isinstance(row, dict) or "key" not in row or "wav" not in row:
            raise EmoBoxError(f"{path}:{lineno}: an EmoBox row needs 'key' and 'wav'")
        rows.append(row)
    return rows


def read_emobox_folds(root: str | Path, corpus: DataDir) -> EmoBoxFolds:
    """Match every fold file's rows to ``corpus``'s utterances by audio file name.

    Errors (naming file and line): two sertk utterances with one file name
    (ambiguous), an utterance in both train and test of a fold. EmoBox rows
    with no utterance in this copy are collected per file, not errors (a copy
    may lack files), and the caller reports them.
    """
    root = Path(root)
    if "segments" in corpus.tables:  # segmented corpora: a recording is not an utterance
        raise EmoBoxError(f"{corpus.path}: segmented data dir; EmoBox folds match one file per utterance")
    by_stem: dict[str, str] = {}
    dup: dict[str, list[str]] = {}
    for utt, rx in corpus.tables.get("wav.scp", {}).items():
        stem = _audio_stem(rx)
        if stem in by_stem:
            dup.setdefault(stem, [by_stem[stem]]).append(utt)
        by_stem[stem] = utt
    out = EmoBoxFolds(folds={})
    for k, parts in _fold_files(root).items():
        fold: dict[str, list[str]] = {}
        for part, path in parts.items():
            utts = []
            for lineno, row in enumerate(_read_jsonl(path), 1):
                stem = _stem(str(row["wav"]))
                if stem in dup:
                    raise EmoBoxError(f"{path}:{lineno}: {row['wav']} matches utterances {dup[stem]} of {corpus.path} "
                                      "(same file name); cannot tell which")
                utt = by_stem.get(stem)
                if utt is None:
                    out.unmatched.setdefault(path.name, []).append(str(row["key"]))
                    continue
                utts.append(utt)
                out.labels[(str(row.get("emo")), corpus.utt2emo.get(utt, "<none>"))] += 1
            fold[part] = utts
        both = set(fold["train"]) & set(fold["test"])
        if both:
            raise EmoBoxError(f"{root}: fold {k}: {len(both)} utterance(s) in both train and test, "
                              f"e.g. {sorted(both)[:3]}")
        out.folds[k] = fold
    return out


def shared_speakers(folds: EmoBoxFolds, utt2spk: Mapping[str, str]) -> dict[int, list[str]]:
    """Per fold, the speakers found in both train and test (EmoBox folds are not always speaker-independent)."""
    out = {}
    for k, parts in folds.folds.items():
        both = {utt2spk[u] for u in parts["train"]} & {utt2spk[u] for u in parts["test"]}
        if both:
            out[k] = sorted(both)
    return out
