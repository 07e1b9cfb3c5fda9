#!/usr/bin/env python3
"""Prepare RAVDESS speech (Actor_NN/03-01-EE-II-SS-RR-NN.wav) into sertk data dirs.

File-name fields (RAVDESS README, Livingstone & Russo 2018): modality
(03 audio-only), vocal channel (01 speech, 02 song: song is excluded and
each song file is named in local/skipped.txt), emotion (01 neutral, 02 calm,
03 happy, 04 sad, 05 angry, 06 fearful, 07 disgust, 08 surprised),
intensity (01 normal, 02 strong; neutral has no strong), statement
(01 "Kids are talking by the door", 02 "Dogs are sitting by the door"),
repetition (01, 02), actor (01-24; odd male, even female).

utt2emo holds the README's emotion words; utt2intensity, utt2statement,
utt2repetition, utt2gender and text keep the other fields.
"""
from __future__ import annotations

import re
import sys
from collections import Counter
from itertools import product
from pathlib import Path

from sertk.data.corpus_prep import (CorpusInfo, UttTable, assign_folds, check_counts, check_items, fold_sets,
                                    run_prepare, scan_audio, write_split_list)

CORPUS = CorpusInfo(
    name="RAVDESS", var="RAVDESS", domain="ravdess",
    obtain="https://zenodo.org/record/1188976 (Audio_Speech_Actors_01-24.zip)",
    licence="CC BY-NC-SA 4.0",
    layout="the folders Actor_01 ... Actor_24",
    expect=("Actor_*", "*/Actor_*"),
)
EMOTIONS = {"01": "neutral", "02": "calm", "03": "happy", "04": "sad",
            "05": "angry", "06": "fearful", "07": "disgust", "08": "surprised"}
INTENSITY = {"01": "normal", "02": "strong"}
STATEMENTS = {"01": "Kids are talking by the door", "02": "Dogs are sitting by the door"}
NAME = re.compile(r"^(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)$")
ACTORS = [f"{a:02d}" for a in range(1, 25)]
SPLIT_FILE = Path("conf/splits/ravdess_speaker_6fold.txt")
SPLIT_SEED = 0


def expected_speech_files() -> set[str]:
    """Every file of the full speech set: 24 actors x 60 trials (neutral has normal intensity only)."""
    names = set()
    for actor, emo, inten, stmt, rep in product(ACTORS, EMOTIONS, INTENSITY, STATEMENTS, ("01", "02")):
        if emo == "01" and inten == "02":
            continue
        names.add(f"Actor_{actor}/03-01-{emo}-{inten}-{stmt}-{rep}-{actor}.wav")
    return names


def build(db: Path, args, report):
    table = UttTable(CORPUS.domain)
    for f in scan_audio(db, report, decode=args.decode_audio):
        m = NAME.match(f.stem)
        if not m:
            report.skip(f.rel, "name is not the 7-field RAVDESS identifier MM-VV-EE-II-SS-RR-AA")
            continue
        modality, channel, emo, inten, stmt, rep, actor = m.groups()
        if channel == "02":
            report.skip(f.rel, "song (vocal channel 02): the speech protocol excludes song")
            continue
        bad = [what for what, ok in (("modality (not 03 audio-only)", modality == "03"),
                                     ("vocal channel", channel == "01"), ("emotion", emo in EMOTIONS),
                                     ("intensity", inten in INTENSITY), ("statement", stmt in STATEMENTS),
                                     ("repetition", rep in ("01", "02")), ("actor", actor in ACTORS)) if not ok]
        if emo == "01" and inten == "02":
            bad.append("intensity (neutral has no strong intensity)")
        if bad:
            report.skip(f.rel, f"invalid field value: {', '.join(bad)}")
            continue
        folder = f.path.parent.name
        if folder != f"Actor_{actor}":
            report.skip(f.rel, f"actor mismatch: actor {actor} in the name but folder {folder}")
            continue
        spk = table.speaker(actor)
        table.add(table.utt_id(spk, f.stem), wav=f.path, spk=spk, source=f.rel, emo=EMOTIONS[emo],
                  gender="m" if int(actor) % 2 else "f", text=STATEMENTS[stmt],
                  intensity=INTENSITY[inten], statement=stmt, repetition=rep)
    dd = table.to_datadir()
    check_items(report, "RAVDESS speech files", [f"Actor_{s.split('-')[-1]}/{s}.wav" for s in
                                                 (u.split("-", 2)[2] for u in dd.utts)], expected_speech_files())
    check_counts(report, "RAVDESS speech utterances per emotion", Counter(dd.utt2emo.values()),
                 {e: (96 if e == "neutral" else 192) for e in EMOTIONS.values()})
    return dd


def write_splits(args) -> list[Path]:
    """Six speaker-independent folds of four actors (two male, two female), fixed seed."""
    actors = [f"{CORPUS.domain}-{a}" for a in ACTORS]
    gender = {f"{CORPUS.domain}-{a}": "m" if int(a) % 2 else "f" for a in ACTORS}
    folds = assign_folds(actors, 6, SPLIT_SEED, strata=gender)
    return [write_split_list(SPLIT_FILE, fold_sets(folds, dev="next"), unit="speaker", version=1, description=[
        "RAVDESS speech, speaker-independent 6-fold cross-validation: 6 folds of 4 actors",
        f"(2 male + 2 female each), assigned by sertk.data.corpus_prep.assign_folds(seed={SPLIT_SEED});",
        "fold k tests on fold k, selects on fold k+1 (dev) and trains on the other 16 actors.",
        "Regenerate with: python3 local/prepare.py --write-splits"])]


if __name__ == "__main__":
    sys.exit(run_prepare(CORPUS, build, doc=__doc__, write_splits=write_splits))
