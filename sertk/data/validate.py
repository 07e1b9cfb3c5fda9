"""Check a data directory the way Kaldi's validate_data_dir.sh does, plus SER checks.

Every problem is collected (not just the first), names the file and line or
the utterance, and says how to fix it. ``fix=True`` plays the role of Kaldi's
fix_data_dir.sh: it drops the utterances that cannot be used, sorts and
de-duplicates every file, regenerates ``spk2utt`` and writes the cleaned
directory atomically (originals kept in ``DIR/.backup``), then reports how
many utterances it dropped and why.

Ordering is byte order (``LC_ALL=C sort``) whatever the user's locale.
"""
from __future__ import annotations

import math
import os
import shutil
from collections import Counter
from dataclasses import dataclass, field
from itertools import combinations, groupby
from pathlib import Path
from typing import Iterable, Mapping

import soundfile as sf

from sertk.common.fileio import atomic_dir
from sertk.data.audio import AudioError, read_audio
from sertk.data.datadir import LABEL_FILES, REQUIRED, UTT_FILES, DataDir, DataDirError, byte_sorted, write_table
from sertk.data.labels import LabelError, LabelMap

FIX_HINT = "run utils/fix_data_dir.sh DIR to drop them"
SORT_HINT = "sort it with 'LC_ALL=C sort -k1,1 -u' or run utils/fix_data_dir.sh DIR"
# Kaldi files a fixed dir keeps filtered to the surviving utterances / speakers / recordings.
EXTRA_UTT_FILES = ("utt2dur", "utt2num_frames", "feats.scp", "vad.scp", "utt2lang", "utt2uniq")
EXTRA_SPK_FILES = ("spk2gender", "cmvn.scp")
EXTRA_RECO_FILES = ("reco2dur", "reco2file_and_channel")
SEGMENT_END_SLACK = 0.05  # seconds a segment may run past its recording's end (rounding in data prep)
# Shortest usable utterance, seconds: openSMILE's eGeMAPS windows give non-finite functionals on
# shorter clips, which would otherwise pass stage 1 and abort stage 2. A recipe lowers it with
# ``min_duration:`` in its protocols file (sertk protocols) or --min-duration (validate-data-dir).
DEFAULT_MIN_DURATION = 0.25
MIN_DURATION_HINT = "lower the minimum (--min-duration, or min_duration: in the protocols file)"


@dataclass
class Issue:
    """One finding. ``utts`` are the utterances ``--fix`` drops because of it."""

    where: str
    message: str
    fix: str = ""
    reason: str = "other"
    utts: frozenset = frozenset()

    def __str__(self) -> str:
        return f"{self.where}: {self.message}" + (f"; {self.fix}" if self.fix else "")


@dataclass
class ValidationReport:
    path: Path
    errors: list[Issue] = field(default_factory=list)
    warnings: list[Issue] = field(default_factory=list)
    num_utts: int = 0
    num_speakers: int = 0
    class_counts: dict[str, int] = field(default_factory=dict)
    labels: list[str] | None = None  # the label map's order, when one was given
    durations: dict[str, float] = field(default_factory=dict)
    sample_rates: dict[int, int] = field(default_factory=dict)
    channels: dict[int, int] = field(default_factory=dict)
    # fix mode: what was wrong before fixing and what was dropped
    fixed_issues: list[Issue] = field(default_factory=list)
    dropped: dict[str, int] = field(default_factory=dict)
    num_dropped: int = 0
    fixed: bool = False

    @property
    def ok(self) -> bool:
        return not self.errors

    def summary(self, max_per_reason: int = 10) -> str:
        lines = [f"{self.path}: {self.num_utts} utterances, {self.num_speakers} speakers"]
        if self.durations:
            d = self.durations
            lines.append(f"  duration: total {d['total'] / 3600:.2f} h, min {d['min']:.2f} s, "
                         f"mean {d['mean']:.2f} s, max {d['max']:.2f} s")
        if self.sample_rates:
            rates = ", ".join(f"{r} Hz x{n}" for r, n in sorted(self.sample_rates.items()))
            chans = ", ".join(f"{c} ch x{n}" for c, n in sorted(self.channels.items()))
            lines.append(f"  audio: {rates}; {chans} (mixed to mono and resampled when read)")
        if self.fixed:
            why = ", ".join(f"{n} {r}" for r, n in sorted(self.dropped.items())) or "none"
            lines.append(f"  fixed: dropped {self.num_dropped} utterance(s) ({why}); "
                         f"{len(self.fixed_issues)} problem(s) found before fixing:")
            lines += _capped(self.fixed_issues, max_per_reason, "    was: ")
        lines += _capped(self.warnings, max_per_reason, "  warning: ")
        lines += _capped(self.errors, max_per_reason, "  error: ")
        lines.append(f"  {'OK' if self.ok else f'FAILED with {len(self.errors)} error(s)'}")
        return "\n".join(lines)


def _capped(issues: list[Issue], cap: int, prefix: str) -> list[str]:
    """At most ``cap`` lines per kind of issue, so 10,000 missing files stay readable."""
    shown: Counter = Counter()
    out, hidden = [], Counter()
    for i in issues:
        if shown[i.reason] < cap:
            out.append(prefix + str(i))
            shown[i.reason] += 1
        else:
            hidden[i.reason] += 1
    for reason, n in hidden.items():
        out.append(f"{prefix}... and {n} more of this kind ({reason})")
    return out


# --------------------------------------------------------------- parsing
@dataclass
class _Table:
    """A leniently parsed file: first occurrence of each id wins, problems are collected."""

    path: Path
    rows: dict[str, tuple[int, str]]  # id -> (line number, rest of line)
    issues: list[Issue]
    dropped_ids: set[str]  # ids whose line was unusable

    def values(self) -> dict[str, str]:
        return {k: v for k, (_, v) in self.rows.items()}

    def where(self, key: str) -> str:
        return f"{self.path}:{self.rows[key][0]}"


def _parse(path: Path, min_fields: int, reason: str = "bad line") -> _Table:
    rows: dict[str, tuple[int, str]] = {}
    issues: list[Issue] = []
    dropped: set[str] = set()
    prev: str | None = None
    prev_line = 0
    unsorted = 0
    first_unsorted: Issue | None = None
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            here = f"{path}:{lineno}"
            try:
                line = raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError as e:
                key = raw.decode("utf-8", "replace").split(maxsplit=1)[0] if raw.strip() else ""
                issues.append(Issue(here, f"not valid UTF-8 ({e.reason} at byte {e.start})",
                                    "re-encode the file as UTF-8", reason, frozenset({key} - {""})))
                dropped.add(key)
                continue
            if not line.strip():
                issues.append(Issue(here, "empty line", "delete it", "empty line"))
                continue
            parts = line.split(maxsplit=1)
            key, rest = parts[0], (parts[1].strip() if len(parts) > 1 else "")
            if line[0].isspace():
                issues.append(Issue(here, f"line starts with white space: {line!r}",
                                    "the id must be the first character", reason, frozenset({key})))
                dropped.add(key)
                continue
            if min_fields and len(rest.split()) < min_fields:
                issues.append(Issue(here, f"expected '{key}' followed by {min_fields} field(s), got {line!r}",
                                    "complete or delete the line", reason, frozenset({key})))
                dropped.add(key)
                continue
            if key in rows:
                issues.append(Issue(here, f"duplicate id {key!r} (first at line {rows[key][0]})",
                                    "ids must be unique; delete one line (fix keeps the first)", "duplicate id"))
                continue
            if prev is not None and key.encode() < prev.encode():
                unsorted += 1
                if first_unsorted is None:
                    first_unsorted = Issue(
                        here, f"not sorted: id {key!r} comes after {prev!r} (line {prev_line}) "
                        "but sorts before it in byte order", SORT_HINT, "not sorted")
            rows[key] = (lineno, rest)
            prev, prev_line = key, lineno
    if first_unsorted is not None:
        if unsorted > 1:
            first_unsorted.message += f" ({unsorted} lines out of order in all)"
        issues.append(first_unsorted)
    return _Table(path, rows, issues, dropped)


def _example(ids: Iterable[str]) -> str:
    ids = byte_sorted(ids)
    more = f" (and {len(ids) - 3} more)" if len(ids) > 3 else ""
    return ", ".join(repr(i) for i in ids[:3]) + more


# ----------------------------------------------------------- validation
def validate_datadir(path: str | Path, label_map: LabelMap | str | Path | None = None,
                     check_audio: bool = True, min_duration: float = DEFAULT_MIN_DURATION, require: Iterable[str] = (),
                     fix: bool = False, out: str | Path | None = None,
                     decode_audio: bool = False) -> ValidationReport:
    """Validate ``path``; with ``fix`` write the cleaned dir to ``out`` (default: in place).

    ``check_audio`` reads every file's header (soundfile.info: exists, readable,
    non-empty, at least ``min_duration`` seconds); ``decode_audio`` also decodes
    every utterance, which catches corrupt payloads at the cost of reading all
    audio. A directory without utterances is an error: every later stage fails on it.
    """
    path = Path(path)
    if isinstance(label_map, (str, Path)):
        label_map = LabelMap.load(label_map)
    report, state = _validate(path, label_map, check_audio, min_duration, tuple(require), decode_audio)
    if not fix:
        return report
    if state is None:  # nothing usable to fix from (not a dir, a required file missing)
        report.errors.append(Issue(str(path), "cannot fix this directory automatically",
                                   "repair the problems above by hand", "unfixable"))
        return report
    out = Path(out) if out is not None else path
    dropped = _write_fixed(path, out, state)
    if dropped is None:
        report.errors.append(Issue(str(path), "fixing would drop every utterance; nothing was written",
                                   "repair the problems above by hand", "unfixable"))
        return report
    fixed, _ = _validate(out, label_map, check_audio, min_duration, tuple(require), decode_audio)
    fixed.fixed = True
    fixed.fixed_issues = report.errors + report.warnings
    fixed.dropped = dict(Counter(dropped.values()))
    fixed.num_dropped = len(dropped)
    return fixed


@dataclass
class _State:
    tables: dict[str, _Table]
    universe: set[str]  # every id seen in any per-utterance file
    drop: dict[str, str]  # utt -> first reason it must go
    partial: set[str] = field(default_factory=set)  # label tables that cover only some domains


def _validate(path: Path, label_map: LabelMap | None, check_audio: bool, min_duration: float,
              require: tuple[str, ...], decode_audio: bool) -> tuple[ValidationReport, _State | None]:
    rep = ValidationReport(path, labels=label_map.labels if label_map else None)
    if not path.is_dir():
        rep.errors.append(Issue(str(path), "not a directory", "create the data dir (stage 1) first", "unfixable"))
        return rep, None
    missing = [n for n in (*REQUIRED, *require) if not (path / n).is_file()]
    for n in missing:
        rep.errors.append(Issue(f"{path}/{n}", "required file is missing",
                                "write it in data preparation (format in docs/data.md)", "missing file"))
    if missing:
        return rep, None

    tables = {n: _parse(path / n, nf) for n, nf in UTT_FILES.items() if (path / n).is_file()}
    if (path / "spk2utt").is_file():
        tables["spk2utt"] = _parse(path / "spk2utt", 1)
    for t in tables.values():
        rep.errors.extend(t.issues)

    has_segments = "segments" in tables
    utt_files = [n for n in tables if n not in ("spk2utt",) and not (n == "wav.scp" and has_segments)]
    drop: dict[str, str] = {}

    def flag(issue: Issue) -> None:
        rep.errors.append(issue)
        for u in issue.utts:
            drop.setdefault(u, issue.reason)

    for n in utt_files + (["wav.scp"] if has_segments else []):
        for i in tables[n].issues:
            for u in i.utts:
                drop.setdefault(u, i.reason)

    # -- every per-utterance file covers the same utterances as utt2spk
    ref = tables["utt2spk"]
    universe = set(ref.rows) | set().union(*(t.dropped_ids for n, t in tables.items() if n in utt_files))
    for n in utt_files:
        universe |= set(tables[n].rows)
    partial: set[str] = set()
    for n in utt_files:
        if n == "utt2spk":
            continue
        t = tables[n]
        lacking = set(ref.rows) - set(t.rows) - t.dropped_ids
        if lacking and n in LABEL_FILES:
            whole = _uncovered_domains(t, lacking, tables, rep)
            if whole:
                partial.add(n)
                lacking -= whole
        extra = set(t.rows) - set(ref.rows) - ref.dropped_ids
        if lacking:
            flag(Issue(str(t.path), f"{len(lacking)} utterance(s) of utt2spk have no line here, e.g. {_example(lacking)}",
                       f"add them, or {FIX_HINT}", f"not in {n}", frozenset(lacking)))
        if extra:
            flag(Issue(str(t.path), f"{len(extra)} id(s) are not in utt2spk, e.g. {_example(extra)}",
                       f"add them to utt2spk, or {FIX_HINT}", "not in utt2spk", frozenset(extra)))

    # -- utt2spk values and spk2utt consistency
    for u, (ln, spk) in ref.rows.items():
        if len(spk.split()) != 1:
            flag(Issue(f"{ref.path}:{ln}", f"utterance {u!r}: expected one speaker id, got {spk!r}",
                       "speaker ids are single tokens", "bad speaker", frozenset({u})))
    if "spk2utt" in tables:
        _check_spk2utt(tables["spk2utt"], ref, rep)
    runs = [spk for spk, _ in groupby(ref.rows[u][1] for u in byte_sorted(ref.rows))]
    split_spk = [spk for spk, n in Counter(runs).items() if n > 1]
    if split_spk:
        rep.warnings.append(Issue(str(ref.path), f"utterances of {len(split_spk)} speaker(s) are not contiguous "
                                  f"in utterance order, e.g. {_example(split_spk)}",
                                  "prefix utterance ids with the speaker id so that splitting into jobs keeps "
                                  "speakers whole (Kaldi convention; not required)", "speaker order"))

    # -- segments and wav.scp
    wav = tables["wav.scp"]
    for rec, (ln, p) in wav.rows.items():
        if p.rstrip().endswith("|"):
            users = _users_of(rec, tables) if has_segments else {rec}
            flag(Issue(f"{wav.path}:{ln}", f"{rec!r} is a command pipe ({p!r}); sertk reads audio files only",
                       "convert the audio to files (e.g. with sox) and list their paths", "pipe in wav.scp",
                       frozenset(users)))
    if has_segments:
        seg = tables["segments"]
        used = set()
        for u, (ln, rest) in seg.rows.items():
            f = rest.split()
            rec = f[0]
            used.add(rec)
            try:
                start, end = float(f[1]), float(f[2])
            except ValueError:
                flag(Issue(f"{seg.path}:{ln}", f"utterance {u!r}: start/end are not numbers: {rest!r}",
                           "write 'utt recording start end' in seconds", "bad segment", frozenset({u})))
                continue
            if not (math.isfinite(start) and math.isfinite(end)) or start < 0 or end <= start:
                flag(Issue(f"{seg.path}:{ln}", f"utterance {u!r}: segment {start}-{end} s is not a span "
                           "with 0 <= start < end", "correct the times", "bad segment", frozenset({u})))
            if rec not in wav.rows:
                flag(Issue(f"{seg.path}:{ln}", f"utterance {u!r} refers to recording {rec!r}, which wav.scp lacks",
                           f"add the recording to wav.scp, or {FIX_HINT}", "unknown recording", frozenset({u})))
        unused = set(wav.rows) - used
        if unused:
            rep.warnings.append(Issue(str(wav.path), f"{len(unused)} recording(s) no segment uses, e.g. "
                                      f"{_example(unused)}", "fix mode removes them", "unused recording"))

    # -- labels and A/V/D
    counts: Counter = Counter()
    if "utt2emo" in tables:
        emo = tables["utt2emo"]
        outside: dict[str, list[str]] = {}
        for u, (ln, lab) in emo.rows.items():
            if len(lab.split()) != 1:
                flag(Issue(f"{emo.path}:{ln}", f"utterance {u!r}: expected one label, got {lab!r}",
                           "labels are single tokens", "bad label", frozenset({u})))
                continue
            if label_map is not None:
                try:
                    lab = label_map.canonical(lab)
                except LabelError:
                    outside.setdefault(lab, []).append(u)
                    continue
            if u in ref.rows:
                counts[lab] += 1
        for lab, us in outside.items():
            first = min(us, key=lambda x: emo.rows[x][0])
            flag(Issue(f"{emo.path}:{emo.rows[first][0]}",
                       f"label {lab!r} (utterance {first!r}; {len(us)} utterance(s) in all) is not in label map "
                       f"{label_map.name!r}: labels {label_map.labels}, aliases {label_map.aliases}",
                       f"fix the label in data preparation, map it with an alias in the label map, or {FIX_HINT}",
                       "label outside map", frozenset(us)))
        if label_map is not None:
            for lab in label_map.labels:
                if counts[lab] == 0:
                    rep.warnings.append(Issue(str(emo.path), f"class {lab!r} of the label map has no utterance",
                                              "check the split or the label map", "empty class"))
    elif label_map is not None:
        rep.warnings.append(Issue(f"{path}/utt2emo", "a label map was given but there is no utt2emo",
                                  "write utt2emo in data preparation", "no labels"))
    if "utt2avd" in tables:
        avd = tables["utt2avd"]
        for u, (ln, rest) in avd.rows.items():
            vals = rest.split()
            try:
                nums = [float(x) for x in vals]
            except ValueError:
                nums = []
            if len(vals) != 3 or len(nums) != 3 or not all(math.isfinite(x) for x in nums):
                flag(Issue(f"{avd.path}:{ln}", f"utterance {u!r}: {rest!r} is not 3 finite numbers "
                           "(arousal valence dominance)", f"correct the values, or {FIX_HINT}",
                           "bad A/V/D", frozenset({u})))

    # -- audio
    if check_audio:
        durs = _check_audio(tables, has_segments, min_duration, decode_audio, rep, flag)
        good = [d for u, d in durs.items() if u in ref.rows]
        if good:
            rep.durations = {"n": len(good), "total": sum(good), "min": min(good), "max": max(good),
                             "mean": sum(good) / len(good)}

    rep.num_utts = len(ref.rows)
    if not ref.rows:
        rep.errors.append(_empty_dir(ref))
    rep.num_speakers = len({v for _, v in ref.rows.values()})
    rep.class_counts = dict(sorted(counts.items(), key=lambda kv: (
        label_map.labels.index(kv[0]) if label_map and kv[0] in label_map.labels else 1 << 30, kv[0])))
    return rep, _State(tables, universe, drop, partial)


def _empty_dir(utt2spk: _Table) -> Issue:
    """No utterance at all: "0 utterances OK" would only defer the failure to a model stage."""
    return Issue(str(utt2spk.path), "no utterances: the data dir is empty",
                 "check data preparation (the corpus path in db.sh, its filters, the split list)", "empty dir")


def _uncovered_domains(t: _Table, lacking: set[str], tables: dict[str, _Table], rep: ValidationReport) -> set[str]:
    """Utterances of ``lacking`` whose whole domain (utt2domain) has no line in label table ``t``.

    A multi-corpus set keeps each label table where its corpora have it (a
    corpus without A/V/D has no utt2avd lines): a warning, not an error. A gap
    inside a domain that the table does cover is still an error.
    """
    if "utt2domain" not in tables:
        return set()
    u2d = {u: v.split()[0] for u, (_, v) in tables["utt2domain"].rows.items() if v.split()}
    covered = {u2d.get(u) for u in t.rows}
    whole = {u for u in lacking if u in u2d and u2d[u] not in covered}
    if whole:
        doms = Counter(u2d[u] for u in whole)
        rep.warnings.append(Issue(str(t.path), f"covers {len(t.rows)} utterance(s); the {len(whole)} of domain(s) "
                                  + ", ".join(f"{d} ({k})" for d, k in sorted(doms.items()))
                                  + " (utt2domain) have none: they carry no target of this kind",
                                  "expected in a multi-corpus set whose corpora lack these labels", "partial labels"))
    return whole


def _users_of(rec: str, tables: dict[str, _Table]) -> set[str]:
    return {u for u, (_, r) in tables["segments"].rows.items() if r.split()[0] == rec}


def _check_spk2utt(s2u: _Table, u2s: _Table, rep: ValidationReport) -> None:
    hint = "regenerate it from utt2spk (fix mode does)"
    seen: set[str] = set()
    for spk, (ln, rest) in s2u.rows.items():
        for u in rest.split():
            seen.add(u)
            have = u2s.rows.get(u, (0, None))[1]
            if have != spk:
                what = f"utt2spk gives speaker {have!r}" if have else "utt2spk lacks it"
                rep.errors.append(Issue(f"{s2u.path}:{ln}", f"speaker {spk!r} lists utterance {u!r} but {what}",
                                        hint, "spk2utt mismatch"))
    lacking = set(u2s.rows) - seen
    if lacking:
        rep.errors.append(Issue(str(s2u.path), f"{len(lacking)} utterance(s) of utt2spk are not listed, "
                                f"e.g. {_example(lacking)}", hint, "spk2utt mismatch"))


def _check_audio(tables, has_segments, min_duration, decode_audio, rep, flag) -> dict[str, float]:
    """Header checks per recording (fast: soundfile.info), duration per utterance."""
    wav = tables["wav.scp"]
    infos: dict[str, object] = {}
    users: dict[str, list[str]] = {}
    if has_segments:
        for u, (_, rest) in tables["segments"].rows.items():
            users.setdefault(rest.split()[0], []).append(u)
    sr_count: Counter = Counter()
    ch_count: Counter = Counter()
    for rec, (ln, p) in wav.rows.items():
        if p.rstrip().endswith("|"):
            continue
        us = users.get(rec, []) if has_segments else [rec]
        who = f"{wav.path}:{ln}: " + (f"recording {rec!r} (utterances {_example(us)})" if has_segments else
                                      f"utterance {rec!r}")
        if not Path(p).is_file():
            flag(Issue(who, f"audio file {p!r} does not exist" + (
                " (relative paths are read from the directory the command runs in)" if not Path(p).is_absolute()
                else ""), f"correct the path, or {FIX_HINT}", "missing audio", frozenset(us)))
            continue
        try:
            info = sf.info(p)
        except Exception as e:  # soundfile raises several types for unreadable files
            flag(Issue(who, f"cannot read audio file {p!r}: {e}", f"re-encode it as wav/flac, or {FIX_HINT}",
                       "unreadable audio", frozenset(us)))
            continue
        if info.frames <= 0 or info.samplerate <= 0:
            flag(Issue(who, f"audio file {p!r} is empty (0 samples)", f"re-create it, or {FIX_HINT}",
                       "empty audio", frozenset(us)))
            continue
        infos[rec] = info
        n_used = sum(u in tables["utt2spk"].rows for u in us)
        sr_count[info.samplerate] += n_used
        ch_count[info.channels] += n_used
    rep.sample_rates, rep.channels = dict(sr_count), dict(ch_count)

    durs: dict[str, float] = {}
    if has_segments:
        seg = tables["segments"]
        for u, (ln, rest) in seg.rows.items():
            f = rest.split()
            info = infos.get(f[0])
            if info is None:
                continue
            try:
                start, end = float(f[1]), float(f[2])
            except ValueError:
                continue
            rec_dur = info.frames / info.samplerate
            if start >= rec_dur:
                flag(Issue(f"{seg.path}:{ln}", f"utterance {u!r} starts at {start} s, after the end of recording "
                           f"{f[0]!r} ({rec_dur:.3f} s): empty audio", f"correct the times, or {FIX_HINT}",
                           "empty audio", frozenset({u})))
                continue
            if end > rec_dur + SEGMENT_END_SLACK:
                rep.warnings.append(Issue(f"{seg.path}:{ln}", f"utterance {u!r} ends at {end} s, after the end of "
                                          f"recording {f[0]!r} ({rec_dur:.3f} s); it is cut short",
                                          "check the segment times", "segment past end"))
            durs[u] = min(end, rec_dur) - start
    else:
        durs = {u: i.frames / i.samplerate for u, i in infos.items()}
    where = tables["segments"] if has_segments else wav
    for u, d in durs.items():
        if d < min_duration:
            flag(Issue(where.where(u), f"utterance {u!r} is {d:.3f} s long, shorter than the minimum {min_duration} s",
                       f"{MIN_DURATION_HINT}, or {FIX_HINT}", "too short", frozenset({u})))
    if decode_audio:
        for u in durs:
            if has_segments:
                rec, s, e = tables["segments"].rows[u][1].split()[:3]
                p, s, e = wav.rows[rec][1], float(s), float(e)
            else:
                p, s, e = wav.rows[u][1], None, None
            try:
                read_audio(p, None, s, e, utt=u)
            except AudioError as err:
                flag(Issue(where.where(u), str(err), f"re-create the audio, or {FIX_HINT}",
                           "undecodable audio", frozenset({u})))
    return durs


# ----------------------------------------------------------------- fixing
def _write_fixed(src: Path, out: Path, state: _State) -> dict[str, str] | None:
    """Write the usable part of ``src`` to ``out`` atomically; return dropped utt -> reason.

    Returns None (and writes nothing) when no utterance would survive.
    """
    tables = state.tables
    has_segments = "segments" in tables
    names = [n for n in tables if n != "spk2utt"]
    utt_files = [n for n in names if not (n == "wav.scp" and has_segments)]
    keep = set.intersection(*(set(tables[n].rows) for n in utt_files if n not in state.partial)) - set(state.drop)
    dropped = {u: state.drop.get(u, "not in every file") for u in state.universe - keep}
    if not keep:
        return None
    fixed = DataDir({})
    for n in utt_files:
        fixed.tables[n] = {u: v for u, v in tables[n].values().items() if u in keep}
    recs = None
    if has_segments:
        recs = {fixed.tables["segments"][u].split()[0] for u in keep}
        fixed.tables["wav.scp"] = {r: v for r, v in tables["wav.scp"].values().items() if r in recs}
    speakers = {fixed.utt2spk[u] for u in keep}
    with atomic_dir(out) as tmp:
        os.chmod(tmp, src.stat().st_mode & 0o7777)  # mkdtemp makes it private; keep the original's mode
        for n, t in fixed.tables.items():
            write_table(tmp / n, t)
        write_table(tmp / "spk2utt", {s: " ".join(us) for s, us in fixed.spk2utt.items()})
        in_place = out.resolve() == src.resolve()
        backup = tmp / ".backup" if in_place else None
        if backup is not None:
            backup.mkdir()
        for entry in sorted(src.iterdir()):
            if entry.name in (".backup",) or entry.name.startswith(".") and entry.name.endswith(".tmp"):
                continue
            if entry.name in tables:
                if backup is not None:
                    shutil.copy2(entry, backup / entry.name)
            elif entry.is_file():
                ids = {"utt": keep, "spk": speakers, "reco": recs if recs is not None else keep}
                kind = ("utt" if entry.name in EXTRA_UTT_FILES else "spk" if entry.name in EXTRA_SPK_FILES
                        else "reco" if entry.name in EXTRA_RECO_FILES else None)
                if kind is None:
                    shutil.copy2(entry, tmp / entry.name)
                else:
                    if backup is not None:
                        shutil.copy2(entry, backup / entry.name)
                    t = _parse(entry, 0)
                    write_table(tmp / entry.name, {k: v for k, v in t.values().items() if k in ids[kind]})
            elif entry.is_dir() and not (entry.name.startswith("split") and entry.name[5:].isdigit()):
                shutil.copytree(entry, tmp / entry.name)  # split{N}/ are stale after fixing: dropped
    return dropped


# ----------------------------------------------------- protocol checks
def _speakers(d: str | Path | DataDir) -> dict[str, str]:
    if isinstance(d, DataDir):
        return d.utt2spk
    if not (Path(d) / "utt2spk").is_file():
        raise DataDirError(f"{d}/utt2spk: required file is missing")
    return {u: v.split()[0] for u, (_, v) in _parse(Path(d) / "utt2spk", 1).rows.items() if v.split()}


def check_speaker_disjoint(dirs: Mapping[str, str | Path | DataDir]) -> list[Issue]:
    """An error for each pair of splits sharing a speaker (speaker-independent protocols)."""
    spk = {name: set(_speakers(d).values()) for name, d in dirs.items()}
    issues = []
    for a, b in combinations(dirs, 2):
        shared = spk[a] & spk[b]
        if shared:
            pa = (dirs[a].path or a) if isinstance(dirs[a], DataDir) else dirs[a]
            pb = (dirs[b].path or b) if isinstance(dirs[b], DataDir) else dirs[b]
            issues.append(Issue(f"{pa}/utt2spk and {pb}/utt2spk",
                                f"{len(shared)} speaker(s) are in both {a} and {b}: {_example(shared)}",
                                "split by speaker (utils/split_data_dir.sh --fractions/--folds) or drop them "
                                "from one side", "speaker overlap"))
    return issues


def class_count_table(counts: Mapping[str, Mapping[str, int]], labels: list[str] | None = None) -> str:
    """Classes as rows, splits as columns, with totals: the per-split balance at a glance."""
    order = list(labels or [])
    for c in counts.values():
        order += [lab for lab in byte_sorted(c) if lab not in order]
    splits = list(counts)
    w = max([len("label")] + [len(x) for x in order]) + 2
    cw = max([6] + [len(s) + 2 for s in splits])
    lines = ["label".ljust(w) + "".join(s.rjust(cw) for s in splits)]
    for lab in order:
        lines.append(lab.ljust(w) + "".join(str(counts[s].get(lab, 0)).rjust(cw) for s in splits))
    lines.append("total".ljust(w) + "".join(str(sum(counts[s].values())).rjust(cw) for s in splits))
    return "\n".join(lines)
