#!/usr/bin/env python3
"""Prepare IEMOCAP (Session{1-5}/sentences/wav/<dialog>/<utt>.wav) into sertk data dirs.

Labels come from Session*/dialog/EmoEvaluation/<dialog>.txt (IEMOCAP release
notes): each utterance block starts with

    [6.2901 - 8.2357]<TAB>Ses01F_impro01_F000<TAB>neu<TAB>[2.5000, 2.5000, 2.5000]

(start - end in seconds, utterance, consensus label, [valence, activation,
dominance] on 1-5) followed by per-evaluator lines: categorical
``C-E1:<TAB>Neutral;<TAB>()`` and dimensional ``A-E1:<TAB>val 3; act 2; dom 2;<TAB>()``.
Consensus labels: neu hap sad ang exc fru sur fea dis oth xxx (no agreement).

utt2emo keeps the consensus code (the label map merges exc into hap);
utt2avd is "arousal valence dominance" on IEMOCAP's 1-5 scale (reordered from
the bracket's V, A, D). The speaker is the session plus the gender letter of
the utterance's last field (Ses01F_impro01_M003 is Session 1's male actor).
Also written: utt2session, utt2type (improvised/scripted), utt2dialog,
utt2votes (every evaluator's categories).
"""
from __future__ import annotations

import re
import sys
from collections import Counter
from pathlib import Path

from sertk.data.corpus_prep import (CorpusInfo, PrepError, UttTable, check_counts, fold_sets, is_system_file,
                                    run_prepare, scan_audio, write_split_list)

CORPUS = CorpusInfo(
    name="IEMOCAP", var="IEMOCAP", domain="iemocap",
    obtain="https://sail.usc.edu/iemocap/ (release form; IEMOCAP_full_release)",
    licence="USC SAIL IEMOCAP licence agreement (research use; no redistribution)",
    layout="Session1 ... Session5 (IEMOCAP_full_release)",
    expect=("Session1", "Session[1-5]"),
)
LABELS = ("neu", "hap", "sad", "ang", "exc", "fru", "sur", "fea", "dis", "oth", "xxx")
BLOCK = re.compile(r"^\[(\d+(?:\.\d+)?)\s*-\s*(\d+(?:\.\d+)?)\]\s+(Ses\S+)\s+(\S+)\s+"
                   r"\[\s*([-\d.]+)\s*,\s*([-\d.]+)\s*,\s*([-\d.]+)\s*\]\s*$")
EVALUATOR = re.compile(r"^([CA])-([A-Za-z]+\d*):\s*(.*?)\s*(\(.*\))?\s*$")
UTT = re.compile(r"^(Ses0[1-5])[FM]_(impro|script)\S*_([FM])\d+[a-z]?$")
SESSIONS = [f"Session{k}" for k in range(1, 6)]
# Full release (Busso et al. 2008; the counts every 4-class paper reports).
EXPECTED_ALL = {"xxx": 2507, "fru": 1849, "neu": 1708, "ang": 1103, "sad": 1084, "exc": 1041, "hap": 595,
                "sur": 107, "fea": 40, "oth": 3, "dis": 2}
EXPECTED_4CLASS = {"ang": 1103, "hap+exc": 1636, "neu": 1708, "sad": 1084}  # 5,531
EXPECTED_4CLASS_SESSION = {"Session1": 1085, "Session2": 1023, "Session3": 1151, "Session4": 1031, "Session5": 1241}
SPLIT_FILE = Path("conf/splits/iemocap_loso.txt")


def parse_evaluation(path: Path, report) -> dict[str, dict]:
    """utt -> {label, start, end, vad, votes, where} from one EmoEvaluation file."""
    out: dict[str, dict] = {}
    current = None
    for lineno, raw in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        line = raw.strip()
        where = f"{path.name}:{lineno}"
        if not line or line.startswith("%"):
            current = None if not line else current
            continue
        if line.startswith("["):
            m = BLOCK.match(line)
            if not m:
                raise PrepError(f"{path}:{lineno}: expected '[start - end]<TAB>utterance<TAB>label<TAB>[V, A, D]', "
                                f"got {raw!r}")
            start, end, utt, label, v, a, d = m.groups()
            if utt in out:
                raise PrepError(f"{path}:{lineno}: {utt} already annotated at line {out[utt]['where']}")
            current = out[utt] = {"label": label, "start": float(start), "end": float(end),
                                  "vad": (float(v), float(a), float(d)), "votes": [], "where": where}
            continue
        m = EVALUATOR.match(line)
        if m and current is not None:
            kind, who, body, _ = m.groups()
            if kind == "C":
                cats = [c.strip() for c in body.split(";") if c.strip()]
                current["votes"].append(f"{who}:{'/'.join(c.replace(' ', '_') for c in cats) or 'none'}")
            continue
        report.warn(f"{path}:{lineno}: line not understood, ignored: {raw!r}")
    return out


def read_annotations(db: Path, report) -> dict[str, dict]:
    ann: dict[str, dict] = {}
    for session in SESSIONS:
        folder = db / session / "dialog" / "EmoEvaluation"
        if not folder.is_dir():
            report.warn(f"{folder} not found: no labels for {session}")
            continue
        for path in sorted(folder.iterdir()):
            if path.is_dir():
                continue  # Categorical/, Attribute/, Self-evaluation/: per-evaluator detail, not parsed
            rel = path.relative_to(db).as_posix()
            if is_system_file(path):
                report.skip(rel, "system file")
                continue
            if path.suffix != ".txt" or not path.name.startswith("Ses"):
                report.skip(rel, "not an EmoEvaluation file (Ses*.txt)")
                continue
            for utt, a in parse_evaluation(path, report).items():
                if utt in ann:
                    raise PrepError(f"{path}: {utt} is also annotated in {ann[utt]['where']}")
                a["where"] = f"{rel}:{a['where'].split(':')[1]}"
                ann[utt] = a
    return ann


def build(db: Path, args, report):
    ann = read_annotations(db, report)
    table = UttTable(CORPUS.domain)
    wav_dirs = [db / s / "sentences" / "wav" for s in SESSIONS if (db / s / "sentences" / "wav").is_dir()]
    found = set()
    for f in scan_audio(db, report, dirs=wav_dirs, decode=args.decode_audio):
        m = UTT.match(f.stem)
        if not m:
            report.skip(f.rel, "name is not an IEMOCAP utterance (SesNNX_<dialog>_XNNN)")
            continue
        a = ann.get(f.stem)
        if a is None:
            report.skip(f.rel, "no EmoEvaluation entry")
            continue
        if a["label"] not in LABELS:
            report.skip(f.rel, f"unknown label {a['label']!r} at {a['where']}")
            continue
        ses, kind, gender = m.groups()
        session = f"Session{int(ses[3:])}"
        if f.rel.split("/")[0] != session:
            report.skip(f.rel, f"session mismatch: {ses} in the name but folder {f.rel.split('/')[0]}")
            continue
        found.add(f.stem)
        v, act, dom = a["vad"]
        spk = table.speaker(f"{ses}{gender}")
        table.add(table.utt_id(spk, f.stem), wav=f.path, spk=spk, source=f.rel, emo=a["label"],
                  avd=(act, v, dom), gender=gender.lower(), session=session,
                  type="improvised" if kind == "impro" else "scripted",
                  dialog=f.path.parent.name, votes=" ".join(a["votes"]) or "none")
    for utt in sorted(set(ann) - found):  # annotated, but its audio is absent or was skipped above
        report.skip(f"{ann[utt]['where']} ({utt})", "annotated, but no usable audio file")
    dd = table.to_datadir()
    labels = Counter(dd.utt2emo.values())
    check_counts(report, "IEMOCAP utterances per consensus label", labels, EXPECTED_ALL)
    four = Counter({"ang": labels["ang"], "hap+exc": labels["hap"] + labels["exc"], "neu": labels["neu"],
                    "sad": labels["sad"]})
    check_counts(report, "IEMOCAP 4-class utterances (exc merged into hap)", four, EXPECTED_4CLASS)
    sessions = dd.field("utt2session")
    per_session = Counter(sessions[u] for u, e in dd.utt2emo.items() if e in ("ang", "hap", "exc", "neu", "sad"))
    check_counts(report, "IEMOCAP 4-class utterances per session", per_session, EXPECTED_4CLASS_SESSION)
    return dd


def write_splits(args) -> list[Path]:
    """Leave-one-session-out: fold k tests on Session k and trains on the other four."""
    sets = fold_sets([[s] for s in SESSIONS], dev=None)
    return [write_split_list(SPLIT_FILE, sets, unit="session", version=1, description=[
        "IEMOCAP leave-one-session-out cross-validation (5 folds): fold k tests on Session k (both",
        "of its actors) and trains on the other four sessions; no dev set, as in the usual protocol.",
        "Regenerate with: python3 local/prepare.py --write-splits"])]


if __name__ == "__main__":
    sys.exit(run_prepare(CORPUS, build, doc=__doc__, write_splits=write_splits))
