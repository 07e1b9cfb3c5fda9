"""Import a corpus that has no recipe: a CSV of files and labels, or a folder-layout pattern.

Both give the same data dir as a recipe's prepare script (corpus-prefixed,
speaker-first ids, utt2domain), and both record every file or row they leave
out, and why, in the PrepReport (nothing is dropped silently).

CSV: one row per utterance with columns for the audio path (relative to the
CSV's folder or ``audio_root``), the label and the speaker; optional arousal,
valence, dominance (all three, same scale), gender, text. Column names are
configurable (``columns={"path": "File", "label": "Emotion", ...}``).

Pattern: the path of each audio file relative to the corpus root, with
``{speaker}`` and ``{label}`` fields, ``{*}`` for any text within one folder
level, ``{**}`` for any text across levels, and any other ``{name}`` kept as
an extra per-utterance file ``utt2name``::

    {speaker}/{label}/{*}.wav          spk01/angry/take3.wav
    {**}/{speaker}_{word}_{label}.wav  TESS-like names, any folders above
"""
from __future__ import annotations

import csv
import math
import re
from pathlib import Path
from typing import Mapping

from sertk.data.corpus_prep import PrepError, PrepReport, UttTable, probe_audio, safe_id, scan_audio
from sertk.data.datadir import DataDir

ROLES = ("path", "label", "speaker", "arousal", "valence", "dominance", "gender", "text")
REQUIRED_ROLES = ("path", "label", "speaker")
GENDERS = {"m": "m", "male": "m", "man": "m", "f": "f", "female": "f", "woman": "f"}
_FIELD = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*|\*|\*\*)\}")


class LabelNormaliser:
    """Raw label -> data-dir label: optional lower-casing, then renames, then spaces -> '_'."""

    def __init__(self, aliases: Mapping[str, str] | None = None, lowercase: bool = False):
        self.aliases = {str(k): str(v) for k, v in (aliases or {}).items()}
        self.lowercase = lowercase

    def __call__(self, raw: str) -> str:
        label = raw.strip()
        if self.lowercase:
            label = label.lower()
        label = self.aliases.get(label, label)
        return re.sub(r"\s+", "_", label)


def _gender(raw: str) -> str:
    return GENDERS.get(raw.strip().lower(), safe_id(raw.strip().lower()) or "u")


# --------------------------------------------------------------------- CSV
def import_csv(csv_path: str | Path, corpus: str, report: PrepReport, audio_root: str | Path | None = None,
               columns: Mapping[str, str] | None = None, delimiter: str | None = None,
               labels: LabelNormaliser | None = None, decode: bool = False) -> DataDir:
    """A data dir from a CSV (one row per utterance); bad rows are skipped and named ``file:line``."""
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise PrepError(f"{csv_path}: CSV file not found")
    root = Path(audio_root) if audio_root is not None else csv_path.parent
    cols = {role: role for role in ROLES}
    unknown = set(columns or {}) - set(ROLES)
    if unknown:
        raise PrepError(f"columns: unknown role(s) {sorted(unknown)}; roles are {', '.join(ROLES)}")
    cols.update(columns or {})
    labels = labels or LabelNormaliser()
    text = csv_path.read_text(encoding="utf-8-sig")
    if delimiter is None:
        try:
            delimiter = csv.Sniffer().sniff(text.splitlines()[0] if text else ",", delimiters=",;\t|").delimiter
        except csv.Error:
            delimiter = ","
    reader = csv.DictReader(text.splitlines(), delimiter=delimiter)
    header = reader.fieldnames or []
    missing = [f"{role} ({cols[role]!r})" for role in REQUIRED_ROLES if cols[role] not in header]
    if missing:
        raise PrepError(f"{csv_path}: missing column(s) {', '.join(missing)}; the header is {header}. "
                        "Name the columns with columns: {path: ..., label: ..., speaker: ...}")
    avd_cols = [cols[r] for r in ("arousal", "valence", "dominance")]
    has_avd = [c in header for c in avd_cols]
    if any(has_avd) and not all(has_avd):
        raise PrepError(f"{csv_path}: give all three of arousal, valence, dominance or none; "
                        f"found {[c for c, h in zip(avd_cols, has_avd) if h]}")
    table = UttTable(corpus)
    seen: dict[Path, str] = {}
    for row in reader:
        where = f"{csv_path.name}:{reader.line_num}"
        rel = (row.get(cols["path"]) or "").strip()
        label = labels(row.get(cols["label"]) or "")
        speaker = (row.get(cols["speaker"]) or "").strip()
        if not rel or not label or not speaker:
            report.skip(where, f"empty path, label or speaker: {row}")
            continue
        path = (root / rel) if not Path(rel).is_absolute() else Path(rel)
        if path.resolve() in seen:
            report.skip(f"{where} ({rel})", f"duplicate row: the file is already listed at {seen[path.resolve()]}")
            continue
        if not path.is_file():
            report.skip(f"{where} ({rel})", f"audio file not found: {path}")
            continue
        avd = None
        if all(has_avd):
            try:
                avd = tuple(float(row[c]) for c in avd_cols)
                if not all(math.isfinite(v) for v in avd):
                    raise ValueError
            except (TypeError, ValueError):
                report.skip(f"{where} ({rel})", f"non-numeric arousal/valence/dominance {[row[c] for c in avd_cols]}")
                continue
        if probe_audio(path, f"{where} ({rel})", report, decode) is None:
            continue
        seen[path.resolve()] = where
        spk = table.speaker(speaker)
        extra = {}
        if cols["gender"] in header:
            extra["gender"] = _gender(row.get(cols["gender"]) or "u")
        if cols["text"] in header and (row.get(cols["text"]) or "").strip():
            extra["text"] = row[cols["text"]]
        table.add(table.utt_id(spk, str(Path(rel).with_suffix("")).replace("/", "_")), wav=path.resolve(),
                  spk=spk, source=where, emo=label, avd=avd, **extra)
    if cols["text"] in header and "text" in table.tables and len(table.tables["text"]) != len(table):
        raise PrepError(f"{csv_path}: column {cols['text']!r} is empty for some rows; fill it or drop the column")
    return table.to_datadir()


# ----------------------------------------------------------------- pattern
def pattern_regex(pattern: str) -> tuple[re.Pattern, list[str]]:
    """Compile a layout pattern; returns the regex and its named fields (in order)."""
    fields = []
    parts, pos = [], 0
    for m in _FIELD.finditer(pattern):
        parts.append(re.escape(pattern[pos:m.start()]))
        name = m.group(1)
        if name == "*":
            parts.append(r"[^/]*?")
        elif name == "**":
            parts.append(r".*?")
        else:
            if name in fields:
                raise PrepError(f"pattern {pattern!r}: field {{{name}}} appears twice")
            fields.append(name)
            parts.append(rf"(?P<{name}>[^/]+?)")
        pos = m.end()
    parts.append(re.escape(pattern[pos:]))
    for need in ("speaker", "label"):
        if need not in fields:
            raise PrepError(f"pattern {pattern!r} needs a {{{need}}} field, e.g. '{{speaker}}/{{label}}/{{*}}.wav'")
    return re.compile("^" + "".join(parts) + "$"), fields


def import_pattern(root: str | Path, pattern: str, corpus: str, report: PrepReport,
                   labels: LabelNormaliser | None = None, suffixes: tuple[str, ...] = (".wav", ".flac"),
                   decode: bool = False) -> DataDir:
    """A data dir from the audio files under ``root`` whose relative path matches ``pattern``."""
    regex, fields = pattern_regex(pattern)
    labels = labels or LabelNormaliser()
    table = UttTable(corpus)
    for f in scan_audio(Path(root), report, suffixes=suffixes, decode=decode):
        m = regex.match(f.rel)
        if not m:
            report.skip(f.rel, f"path does not match the layout pattern {pattern}")
            continue
        values = m.groupdict()
        spk = table.speaker(values["speaker"])
        extra = {k: safe_id(v) for k, v in values.items() if k not in ("speaker", "label")}
        if "gender" in extra:
            extra["gender"] = _gender(values["gender"])
        table.add(table.utt_id(spk, str(Path(f.rel).with_suffix("")).replace("/", "_")), wav=f.path, spk=spk,
                  source=f.rel, emo=labels(values["label"]), **extra)
    return table.to_datadir()
