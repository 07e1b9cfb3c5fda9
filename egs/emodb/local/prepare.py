#!/usr/bin/env python3
"""Prepare EmoDB, the Berlin Database of Emotional Speech (wav/03a01Fa.wav), into sertk data dirs.

File names (EmoDB documentation, Burkhardt et al. 2005): positions 1-2 speaker
(03 08 09 10 11 12 13 14 15 16), 3-5 text code (a01 a02 a04 a05 a07 b01 b02
b03 b09 b10), 6 emotion letter of the German word (W Aerger/anger,
L Langeweile/boredom, E Ekel/disgust, A Angst/fear, F Freude/happiness,
T Trauer/sadness, N neutral), 7 version (a, b, ...).

utt2emo keeps the emotion letter (the label map names the classes);
utt2gender, text (the German sentence), utt2textcode and utt2version keep the
other fields.
"""
from __future__ import annotations

import re
import sys
from collections import Counter
from pathlib import Path

from sertk.data.corpus_prep import (CorpusInfo, UttTable, check_counts, fold_sets, run_prepare, scan_audio,
                                    write_split_list)

CORPUS = CorpusInfo(
    name="EmoDB", var="EMODB", domain="emodb",
    obtain="http://emodb.bilderbar.info/download/ (download.zip; also audb 'emodb')",
    licence="CC0 1.0 (as published by audEERING; original: free for research)",
    layout="wav/ (e.g. wav/03a01Fa.wav)",
    expect=("wav", "*/wav"),
)
SPEAKERS = {"03": "m", "08": "f", "09": "f", "10": "m", "11": "m", "12": "m", "13": "f", "14": "f", "15": "m",
            "16": "f"}
TEXTS = {
    "a01": "Der Lappen liegt auf dem Eisschrank.", "a02": "Das will sie am Mittwoch abgeben.",
    "a04": "Heute abend könnte ich es ihm sagen.",
    "a05": "Das schwarze Stück Papier befindet sich da oben neben dem Holzstück.",
    "a07": "In sieben Stunden wird es soweit sein.",
    "b01": "Was sind denn das für Tüten, die da unter dem Tisch stehen?",
    "b02": "Sie haben es gerade hochgetragen und jetzt gehen sie wieder runter.",
    "b03": "An den Wochenenden bin ich jetzt immer nach Hause gefahren und habe Agnes besucht.",
    "b09": "Ich will das eben wegbringen und dann mit Karl was trinken gehen.",
    "b10": "Die wird auf dem Platz sein, wo wir sie immer hinlegen.",
}
EMOTIONS = ("W", "L", "E", "A", "F", "T", "N")
NAME = re.compile(r"^(\d\d)([ab]\d\d)([A-Z])([a-z])$")
# The 535 utterances of the released database (emodb documentation).
EXPECTED_EMOTION = {"W": 127, "L": 81, "E": 46, "A": 69, "F": 71, "T": 62, "N": 79}
EXPECTED_SPEAKER = {"03": 49, "08": 58, "09": 43, "10": 38, "11": 55, "12": 35, "13": 61, "14": 69, "15": 56,
                    "16": 71}
SPLIT_FILE = Path("conf/splits/emodb_loso.txt")
SPK5_FILE = Path("conf/splits/emodb_spk5.txt")
# Five speaker pairs (one male, one female each) for the methods that select on a dev set.
PAIRS = (("03", "08"), ("10", "09"), ("11", "13"), ("12", "14"), ("15", "16"))


def build(db: Path, args, report):
    wav_dir = db / "wav" if (db / "wav").is_dir() else db
    table = UttTable(CORPUS.domain)
    for f in scan_audio(db, report, dirs=[wav_dir], decode=args.decode_audio):
        m = NAME.match(f.stem)
        if not m:
            report.skip(f.rel, "name is not SStttEv (speaker, text, emotion letter, version)")
            continue
        spk_raw, text, emo, version = m.groups()
        bad = [w for w, ok in (("speaker", spk_raw in SPEAKERS), ("text code", text in TEXTS),
                               ("emotion letter", emo in EMOTIONS)) if not ok]
        if bad:
            report.skip(f.rel, f"invalid field value: {', '.join(bad)}")
            continue
        spk = table.speaker(spk_raw)
        table.add(table.utt_id(spk, f.stem), wav=f.path, spk=spk, source=f.rel, emo=emo,
                  gender=SPEAKERS[spk_raw], text=TEXTS[text], textcode=text, version=version)
    dd = table.to_datadir()
    check_counts(report, "EmoDB utterances per emotion", Counter(dd.utt2emo.values()), EXPECTED_EMOTION)
    check_counts(report, "EmoDB utterances per speaker",
                 Counter(s.split("-")[1] for s in dd.utt2spk.values()), EXPECTED_SPEAKER)
    return dd


def write_splits(args) -> list[Path]:
    """Leave-one-speaker-out (10 folds, no dev set) and speaker-pair 5-fold with a dev pair.

    spk5: fold k tests on pair k (one male, one female speaker), selects on
    pair k+1 and trains on the other six speakers; its sets serve the 7-class
    protocol (spk5_*) and, under other names, the 4-class one (c4_*), whose
    label map leaves boredom, disgust and fear out.
    """
    speakers = [f"{CORPUS.domain}-{s}" for s in SPEAKERS]
    sets = fold_sets([[s] for s in speakers], dev=None)
    pairs = [[f"{CORPUS.domain}-{s}" for s in pair] for pair in PAIRS]
    spk5 = {**fold_sets(pairs, dev="next", prefix="spk5_fold"), **fold_sets(pairs, dev="next", prefix="c4_fold")}
    return [write_split_list(SPLIT_FILE, sets, unit="speaker", version=1, description=[
        "EmoDB leave-one-speaker-out cross-validation: 10 folds in speaker order (03 08 09 10 11 12",
        "13 14 15 16); fold k tests on one speaker and trains on the other nine; no dev set.",
        "Regenerate with: python3 local/prepare.py --write-splits"]),
        write_split_list(SPK5_FILE, spk5, unit="speaker", version=1, description=[
            "EmoDB speaker-pair 5-fold cross-validation with a dev pair: pairs (03 08) (10 09) (11 13)",
            "(12 14) (15 16), one male and one female speaker each; fold k tests on pair k, selects on",
            "pair k+1 (cyclically) and trains on the other six speakers. spk5_* sets serve the 7-class",
            "protocol, c4_* (the same speakers) the 4-class one. Regenerate with:",
            "python3 local/prepare.py --write-splits"])]

if __name__ == "__main__":
    sys.exit(run_prepare(CORPUS, build, doc=__doc__, write_splits=write_splits))
