#!/usr/bin/env python3
"""Prepare MSP-Podcast (Audios/*.wav, Labels/labels_consensus.csv) into sertk data dirs.

labels_consensus.csv columns (MSP-Podcast release notes): FileName, EmoClass
(A angry, S sad, H happy, U surprise, F fear, D disgust, C contempt,
N neutral, O other, X no agreement), EmoAct, EmoVal, EmoDom (1-7 consensus
scores), SpkrID ("Unknown" when not identified), Gender (Male, Female,
Unknown), Split_Set (Train, Development, Test1, Test2, and Test3 in later
releases).

utt2emo keeps EmoClass; utt2avd is "arousal valence dominance" on the 1-7
scale; utt2partition holds Split_Set, the unit of the official split list.
Segments whose speaker is unknown get a speaker id of their own
(msp_podcast-unk_<file>), so no two strangers are merged into one speaker.
utt2gender is m, f or u (unknown).
"""
from __future__ import annotations

import csv
import math
import sys
from collections import Counter
from pathlib import Path

from sertk.data.corpus_prep import (CorpusInfo, PrepError, UttTable, index_by_stem, run_prepare, scan_audio)

CORPUS = CorpusInfo(
    name="MSP-Podcast", var="MSP_PODCAST", domain="msp_podcast",
    obtain="the MSP Lab, UT Dallas (https://ecs.utdallas.edu/research/researchlabs/msp-lab/MSP-Podcast.html)",
    licence="MSP-Podcast academic licence agreement (UT Dallas; no redistribution)",
    layout="Audios/ and Labels/labels_consensus.csv",
    expect=("Labels/labels_consensus.csv",),
)
COLUMNS = ["FileName", "EmoClass", "EmoAct", "EmoVal", "EmoDom", "SpkrID", "Gender", "Split_Set"]
CLASSES = ("A", "S", "H", "U", "F", "D", "C", "N", "O", "X")
PARTITIONS = ("Train", "Development", "Test1", "Test2", "Test3")
GENDERS = {"male": "m", "female": "f", "unknown": "u"}


def read_consensus(path: Path, report) -> dict[str, dict]:
    """stem -> row (with its line number); bad rows are skipped and named."""
    rows: dict[str, dict] = {}
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        missing = [c for c in COLUMNS if c not in header]
        if missing:
            raise PrepError(f"{path}: missing column(s) {missing}; header is {header}")
        for row in reader:
            where = f"{path.name}:{reader.line_num}"
            stem = Path(row["FileName"].strip()).stem
            problems = []
            if row["EmoClass"].strip() not in CLASSES:
                problems.append(f"EmoClass {row['EmoClass']!r} not one of {' '.join(CLASSES)}")
            try:
                avd = tuple(float(row[c]) for c in ("EmoAct", "EmoVal", "EmoDom"))
                if not all(math.isfinite(x) for x in avd):
                    raise ValueError
            except (TypeError, ValueError):
                problems.append(f"non-numeric EmoAct/EmoVal/EmoDom {[row[c] for c in ('EmoAct', 'EmoVal', 'EmoDom')]}")
            if row["Split_Set"].strip() not in PARTITIONS:
                problems.append(f"Split_Set {row['Split_Set']!r} not one of {' '.join(PARTITIONS)}")
            if row["Gender"].strip().lower() not in GENDERS:
                problems.append(f"Gender {row['Gender']!r}")
            if stem in rows:
                problems.append(f"{stem} already listed at {rows[stem]['where']}")
            if problems:
                report.skip(f"{where} ({stem})", "bad label row: " + "; ".join(problems))
                continue
            rows[stem] = {**{c: row[c].strip() for c in COLUMNS}, "avd": avd, "where": where}
    return rows


def build(db: Path, args, report):
    label_file = db / "Labels" / "labels_consensus.csv"
    rows = read_consensus(label_file, report)
    audio_dir = db / "Audios"
    if not audio_dir.is_dir():
        raise PrepError(f"{audio_dir} not found; {CORPUS.var} must point at the folder holding Audios/ and Labels/")
    files = index_by_stem(scan_audio(db, report, dirs=[audio_dir], decode=args.decode_audio), report)
    table = UttTable(CORPUS.domain)
    for stem, f in files.items():
        row = rows.get(stem)
        if row is None:
            report.skip(f.rel, "no row in labels_consensus.csv (unlabelled segment)")
            continue
        spk_raw = row["SpkrID"]
        spk = table.speaker(f"unk_{stem}" if spk_raw.lower() in ("unknown", "") else spk_raw)
        act, val, dom = row["avd"]
        table.add(table.utt_id(spk, stem), wav=f.path, spk=spk, source=row["where"], emo=row["EmoClass"],
                  avd=(act, val, dom), gender=GENDERS[row["Gender"].lower()], partition=row["Split_Set"])
    for stem in sorted(set(rows) - set(files)):
        report.skip(f"{rows[stem]['where']} ({rows[stem]['FileName']})", "labelled, but no audio file in Audios/")
    dd = table.to_datadir()
    parts = dd.field("utt2partition")
    table_lines = Counter((parts[u], e) for u, e in dd.utt2emo.items())
    for p in PARTITIONS:
        n = {c: table_lines[(p, c)] for c in CLASSES if table_lines[(p, c)]}
        if n:
            report.note(f"{p}: {sum(n.values())} segments ({', '.join(f'{c} {k}' for c, k in n.items())})")
    report.note("MSP-Podcast's counts change with every release; compare the partition sizes above with the "
                "release notes of your copy (no fixed expected counts are checked)")
    return dd


if __name__ == "__main__":
    sys.exit(run_prepare(CORPUS, build, doc=__doc__))
