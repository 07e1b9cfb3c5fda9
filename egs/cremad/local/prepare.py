#!/usr/bin/env python3
"""Prepare CREMA-D (AudioWAV/1001_DFA_ANG_XX.wav) into sertk data dirs.

File names (CREMA-D README): actor id 1001-1091, sentence code (IEO TIE IOM
IWW TAI MTI IWL ITH DFA ITS TSI WSI), emotion (ANG DIS FEA HAP NEU SAD),
level (LO MD HI XX = unspecified). VideoDemographics.csv (ActorID, Age, Sex,
Race, Ethnicity) gives utt2gender; processedResults/summaryTable.csv
(FileName, VoiceVote, VoiceLevel, FaceVote, ... MultiModalLevel) gives the
perceived label of the audio-only ratings (VoiceVote; ties are written
"A:D" and have no single label).

utt2emo is the intended emotion (the one the actor was asked to portray,
from the file name). utt2perceived is the audio-only vote written with the
same codes (A->ANG, D->DIS, F->FEA, H->HAP, N->NEU, S->SAD), or "tie" / "none"
when the vote has no single label; conf/protocols_perceived.yaml trains and
tests on it (label_from: utt2perceived; ties are outside its label map).
utt2voice_vote keeps the raw VoiceVote; also utt2level, utt2sentence, text.
"""
from __future__ import annotations

import csv
import re
import sys
from collections import Counter
from pathlib import Path

from sertk.data.corpus_prep import (CorpusInfo, PrepError, UttTable, check_counts, run_prepare, scan_audio,
                                    split_units, write_split_list)

CORPUS = CorpusInfo(
    name="CREMA-D", var="CREMAD", domain="cremad",
    obtain="https://github.com/CheyneyComputerScience/CREMA-D (git lfs; or its GitLab mirror)",
    licence="Open Database License (ODbL 1.0) + Database Contents License (DbCL 1.0)",
    layout="AudioWAV/, VideoDemographics.csv and processedResults/summaryTable.csv",
    expect=("AudioWAV",),
)
SENTENCES = {
    "IEO": "It's eleven o'clock", "TIE": "That is exactly what happened", "IOM": "I'm on my way to the meeting",
    "IWW": "I wonder what this is about", "TAI": "The airplane is almost full",
    "MTI": "Maybe tomorrow it will be cold", "IWL": "I would like a new alarm clock",
    "ITH": "I think I have a doctor's appointment", "DFA": "Don't forget a jacket",
    "ITS": "I think I've seen this before", "TSI": "The surface is slick", "WSI": "We'll stop in a couple of minutes",
}
EMOTIONS = ("ANG", "DIS", "FEA", "HAP", "NEU", "SAD")
LEVELS = ("LO", "MD", "HI", "XX")
VOTE_CODES = {"A": "ANG", "D": "DIS", "F": "FEA", "H": "HAP", "N": "NEU", "S": "SAD"}
NAME = re.compile(r"^(\d{4})_([A-Z]{3})_([A-Z]{3})_([A-Z]{2})$")
ACTORS = [str(a) for a in range(1001, 1092)]
# Sex per actor from CREMA-D's VideoDemographics.csv (48 male, 43 female); only used to
# stratify the committed speaker split; prepared data read the csv itself.
MALE_ACTORS = set("""1001 1005 1011 1014 1015 1016 1017 1019 1022 1023 1026 1027 1031 1032 1033 1034 1035 1036
1038 1039 1040 1041 1042 1044 1045 1048 1050 1051 1057 1059 1062 1064 1065 1066 1067 1068 1069 1070 1071 1077
1080 1081 1083 1085 1086 1087 1088 1090""".split())
EXPECTED = {"ANG": 1271, "DIS": 1271, "FEA": 1271, "HAP": 1271, "SAD": 1271, "NEU": 1087}  # 7,442 clips
SPLIT_FILE = Path("conf/splits/cremad_speaker_70_10_20.txt")
SPLIT_SEED = 0


def read_csv_rows(path: Path, required: list[str]) -> list[tuple[int, dict]]:
    """(line number, row) pairs; a missing column is an error naming the file and its header."""
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        missing = [c for c in required if c not in header]
        if missing:
            raise PrepError(f"{path}: missing column(s) {missing}; header is {header}")
        return [(reader.line_num, row) for row in reader]


def read_demographics(db: Path, report) -> dict[str, str]:
    path = db / "VideoDemographics.csv"
    if not path.is_file():
        report.warn(f"{path} not found: utt2gender is not written")
        return {}
    out = {}
    for line, row in read_csv_rows(path, ["ActorID", "Sex"]):
        sex = row["Sex"].strip().lower()
        if sex not in ("male", "female"):
            raise PrepError(f"{path}:{line}: Sex must be Male or Female, got {row['Sex']!r}")
        out[row["ActorID"].strip()] = sex[0]
    return out


def find_summary_table(db: Path) -> Path | None:
    for rel in ("processedResults/summaryTable.csv", "data/InfoAndStats/processedResults/summaryTable.csv"):
        if (db / rel).is_file():
            return db / rel
    return next(iter(sorted(db.rglob("summaryTable.csv"))), None)


def read_votes(path: Path) -> dict[str, str]:
    votes = {}
    for line, row in read_csv_rows(path, ["FileName", "VoiceVote"]):
        name = Path(row["FileName"].strip()).stem
        if name in votes:
            raise PrepError(f"{path}:{line}: {name} is listed twice")
        votes[name] = row["VoiceVote"].strip()
    return votes


def build(db: Path, args, report):
    sexes = read_demographics(db, report)
    summary = find_summary_table(db)
    votes = read_votes(summary) if summary else {}
    if summary is None:
        report.warn(f"{db}/processedResults/summaryTable.csv not found: utt2perceived is not written, "
                    "so protocols_perceived.yaml cannot be prepared")
    table = UttTable(CORPUS.domain)
    clips = Counter()  # intended emotion of every well-named clip, before any label-based skipping
    for f in scan_audio(db, report, dirs=[db / "AudioWAV"], decode=args.decode_audio):
        m = NAME.match(f.stem)
        if not m:
            report.skip(f.rel, "name is not ActorID_SENTENCE_EMOTION_LEVEL")
            continue
        actor, sent, emo, level = m.groups()
        bad = [w for w, ok in (("actor", actor in ACTORS), ("sentence", sent in SENTENCES),
                               ("emotion", emo in EMOTIONS), ("level", level in LEVELS)) if not ok]
        if bad:
            report.skip(f.rel, f"invalid field value: {', '.join(bad)}")
            continue
        clips[emo] += 1
        extra = {}
        if votes:
            vote = votes.get(f.stem)
            if vote is None:
                report.warn(f"{f.rel}: no row in {summary.name}; its perceived label is 'none'")
            extra["voice_vote"] = vote or "none"
            extra["perceived"] = VOTE_CODES.get(vote, "tie" if vote and ":" in vote else "none")
        if sexes and actor not in sexes:
            report.skip(f.rel, f"actor {actor} not in VideoDemographics.csv")
            continue
        spk = table.speaker(actor)
        table.add(table.utt_id(spk, f.stem.split("_", 1)[1]), wav=f.path, spk=spk, source=f.rel, emo=emo,
                  gender=sexes.get(actor), text=SENTENCES[sent], intended=emo, level=level, sentence=sent, **extra)
    check_counts(report, "CREMA-D clips per intended emotion", clips, EXPECTED)
    return table.to_datadir()


def write_splits(args) -> list[Path]:
    """Speaker-independent 70/10/20 split of the 91 actors, stratified by sex, fixed seed."""
    spk = {f"{CORPUS.domain}-{a}": a for a in ACTORS}
    strata = {s: "m" if a in MALE_ACTORS else "f" for s, a in spk.items()}
    parts = split_units(spk, {"train": 0.7, "dev": 0.1, "test": 0.2}, SPLIT_SEED, strata)
    parts.update({f"{name}_perceived": units for name, units in list(parts.items())})
    return [write_split_list(SPLIT_FILE, parts, unit="speaker", version=1, description=[
        "CREMA-D speaker-independent split: 70% / 10% / 20% of the 91 actors for train / dev / test,",
        f"within each sex (VideoDemographics.csv), by sertk.data.corpus_prep.split_units(seed={SPLIT_SEED}).",
        "CREMA-D has no official split; this one is fixed and recorded with every result.",
        "The *_perceived sets hold the same actors (protocols_perceived.yaml labels them by listener votes).",
        "Regenerate with: python3 local/prepare.py --write-splits"])]


if __name__ == "__main__":
    sys.exit(run_prepare(CORPUS, build, doc=__doc__, write_splits=write_splits))
