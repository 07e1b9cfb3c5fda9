#!/usr/bin/env python3
"""Prepare the FAU Aibo Emotion Corpus (INTERSPEECH 2009 Emotion Challenge) into sertk data dirs.

Chunk audio: <chunk>.wav in wav/ (e.g. wav/Ohm_01_001_00.wav; without a wav/
folder the whole root is searched), 16 kHz. Labels:
labels/IS2009EmotionChallenge/chunk_labels_{2cl,5cl}_corpus.txt, one chunk per
line, white-space separated: chunk id, class, confidence (e.g.
"Ohm_01_001_00 N 1.0"). 5 classes: A (angry: angry, touchy, reprimanding),
E (emphatic), N (neutral), P (positive: motherese, joyful), R (rest);
2 classes: NEG, IDL. Chunk ids start with the school (Ohm, Mont) and the
child (Ohm_01 is child 01 of the Ohm school).

utt2emo holds the 5-class label; utt2emo_5cl and utt2emo_2cl both labels
(protocols pick one with label_from); utt2school is the unit of the official
split (train on Ohm, test on Mont); utt2confidence_5cl/_2cl keep the
confidences. The corpus has no gender per chunk, so utt2gender is not written.
"""
from __future__ import annotations

import re
import sys
from collections import Counter
from pathlib import Path

from sertk.data.corpus_prep import (CorpusInfo, PrepError, UttTable, check_counts, index_by_stem, run_prepare,
                                    scan_audio)

CORPUS = CorpusInfo(
    name="FAU-Aibo", var="FAU_AIBO", domain="aibo",
    obtain="the Pattern Recognition Lab, FAU Erlangen-Nuernberg (FAU Aibo Emotion Corpus licence)",
    licence="FAU Aibo Emotion Corpus licence agreement (research use; no redistribution)",
    layout="the chunk wavs (e.g. wav/) and chunk_labels_2cl_corpus.txt / chunk_labels_5cl_corpus.txt",
    expect=("**/chunk_labels_5cl_corpus.txt",),
)
CLASSES = {"5cl": ("A", "E", "N", "P", "R"), "2cl": ("NEG", "IDL")}
CHUNK = re.compile(r"^(Ohm|Mont)_(\d+)_\d+_\d+$")
# INTERSPEECH 2009 Emotion Challenge (Schuller, Steidl, Batliner 2009), Table 1.
EXPECTED = {
    "5cl": {"Ohm": {"A": 881, "E": 2093, "N": 5590, "P": 674, "R": 721},
            "Mont": {"A": 611, "E": 1508, "N": 5377, "P": 215, "R": 546}},
    "2cl": {"Ohm": {"NEG": 3358, "IDL": 6601}, "Mont": {"NEG": 2465, "IDL": 5792}},
}


def find_label_file(db: Path, task: str, report) -> Path:
    name = f"chunk_labels_{task}_corpus.txt"
    hits = sorted(db.rglob(name))
    if not hits:
        raise PrepError(f"{name} not found under {db}")
    preferred = [h for h in hits if h.parent.name == "IS2009EmotionChallenge"] or hits
    if len(hits) > 1:
        report.warn(f"{len(hits)} copies of {name}; using {preferred[0].relative_to(db)}")
    return preferred[0]


def read_labels(path: Path, task: str) -> dict[str, tuple[str, str]]:
    out: dict[str, tuple[str, str]] = {}
    for lineno, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        parts = raw.split()
        if not parts:
            continue
        if len(parts) != 3:
            raise PrepError(f"{path}:{lineno}: expected 'chunk class confidence', got {raw!r}")
        chunk, label, conf = parts
        if label not in CLASSES[task]:
            raise PrepError(f"{path}:{lineno}: class {label!r} is not one of {' '.join(CLASSES[task])}")
        try:
            float(conf)
        except ValueError:
            raise PrepError(f"{path}:{lineno}: confidence {conf!r} is not a number") from None
        if chunk in out:
            raise PrepError(f"{path}:{lineno}: chunk {chunk} is listed twice")
        out[chunk] = (label, conf)
    return out


def build(db: Path, args, report):
    label_files = {t: find_label_file(db, t, report) for t in ("5cl", "2cl")}
    labels = {t: read_labels(path, t) for t, path in label_files.items()}
    only = set(labels["5cl"]) ^ set(labels["2cl"])
    if only:
        report.warn(f"{len(only)} chunk(s) are in only one of the 2-class/5-class label files, e.g. {sorted(only)[:5]}")
    wav_dirs = [db / "wav"] if (db / "wav").is_dir() else None  # the release's folder; else search everywhere
    files = index_by_stem(scan_audio(db, report, dirs=wav_dirs, decode=args.decode_audio,
                                     ignore=label_files.values()), report)
    table = UttTable(CORPUS.domain)
    for stem, f in files.items():
        m = CHUNK.match(stem)
        if not m:
            report.skip(f.rel, "name is not a chunk id (Ohm|Mont)_NN_NNN_NN")
            continue
        if stem not in labels["5cl"] or stem not in labels["2cl"]:
            report.skip(f.rel, "chunk not in both chunk_labels_2cl/5cl_corpus.txt")
            continue
        school, child = m.groups()
        spk = table.speaker(f"{school}_{child}")
        (l5, c5), (l2, c2) = labels["5cl"][stem], labels["2cl"][stem]
        table.add(f"{CORPUS.domain}-{stem}", wav=f.path, spk=spk, source=f.rel, emo=l5, school=school,
                  emo_5cl=l5, emo_2cl=l2, confidence_5cl=c5, confidence_2cl=c2)
    for stem in sorted(set(labels["5cl"]) - set(files)):
        report.skip(f"chunk_labels_5cl_corpus.txt ({stem})", "labelled chunk without audio")
    dd = table.to_datadir()
    school = dd.field("utt2school")
    for task in ("5cl", "2cl"):
        lab = dd.field(f"utt2emo_{task}")
        for s in ("Ohm", "Mont"):
            check_counts(report, f"FAU-Aibo {task} chunks of {s}", Counter(lab[u] for u in dd.utts if school[u] == s),
                         EXPECTED[task][s])
    return dd


if __name__ == "__main__":
    sys.exit(run_prepare(CORPUS, build, doc=__doc__))
