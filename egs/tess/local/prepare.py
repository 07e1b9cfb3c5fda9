#!/usr/bin/env python3
"""Prepare TESS, the Toronto Emotional Speech Set (<SPK>_<emotion>/<SPK>_<word>_<emotion>.wav), into data dirs.

Two actresses (OAF, aged 64; YAF, aged 26) say "Say the word _" with 200
target words in 7 emotions: anger, disgust, fear, happiness, pleasant surprise,
sadness, neutral (2,800 files; Dupuis & Pichora-Fuller 2010). Copies differ
in folder case and spelling (OAF_Fear, YAF_fear, OAF_Pleasant_surprise,
YAF_pleasant_surprised, an extra top folder); the file name's last field is
the emotion (angry disgust fear happy neutral ps sad; ps = pleasant surprise).

utt2emo keeps the file name's emotion word; a file whose folder names another
emotion, or whose name is a second copy of one already seen, is skipped and
named. The speaker comes from the folder when the file name disagrees (the
release has OAF_neutral/OA_bite_neutral.wav): a warning names the file, and it
is kept. utt2word keeps the target word; both speakers are female.
"""
from __future__ import annotations

import re
import sys
from collections import Counter
from pathlib import Path

from sertk.data.corpus_prep import (CorpusInfo, UttTable, check_counts, fold_sets, run_prepare, scan_audio,
                                    write_split_list)

CORPUS = CorpusInfo(
    name="TESS", var="TESS", domain="tess",
    obtain="https://doi.org/10.5683/SP2/E8H2MF (University of Toronto Dataverse)",
    licence="CC BY-NC-ND 4.0",
    layout="the folders OAF_angry ... YAF_sad (any case; an extra top folder is fine)",
    expect=("*AF_*", "*/*AF_*"),
)
EMOTIONS = ("angry", "disgust", "fear", "happy", "neutral", "ps", "sad")
# spellings seen in copies (folder names and file names), lower-cased, '-' and ' ' as '_'
SPELLINGS = {"angry": "angry", "anger": "angry", "disgust": "disgust", "disgusted": "disgust", "fear": "fear",
             "fearful": "fear", "happy": "happy", "happiness": "happy", "neutral": "neutral", "sad": "sad",
             "sadness": "sad", "ps": "ps", "pleasant_surprise": "ps", "pleasant_surprised": "ps",
             "pleasantly_surprised": "ps", "surprise": "ps", "surprised": "ps"}
SPEAKERS = ("OAF", "YAF")
SPLIT_FILE = Path("conf/splits/tess_speaker.txt")


def norm(word: str) -> str | None:
    return SPELLINGS.get(re.sub(r"[-\s]+", "_", word.strip().lower()))


def parse_name(stem: str) -> tuple[str, str, str] | None:
    """(speaker, word, emotion) of SPK_word_emotion; the emotion may span two fields (pleasant_surprised)."""
    parts = stem.split("_")
    if len(parts) < 3:
        return None
    for n in (2, 1):
        emo = norm("_".join(parts[-n:]))
        if emo is not None and len(parts) - n >= 2:
            return parts[0].upper(), "_".join(parts[1:-n]), emo
    return None


def folder_labels(folder: str) -> tuple[str | None, str | None]:
    """(speaker, emotion) a TESS folder name gives (OAF_Fear -> OAF, fear); (None, None) for any other folder."""
    fm = re.match(r"^([A-Za-z]{3})[_\s-](.+)$", folder)
    if not fm or fm.group(1).upper() not in SPEAKERS:
        return None, None
    return fm.group(1).upper(), norm(fm.group(2))


def speaker_of(f, name_spk: str, folder_spk: str | None, report) -> str:
    """The folder's speaker when the file name disagrees (a truncated OA_...), with a warning naming the file."""
    if folder_spk is None or folder_spk == name_spk:
        return name_spk
    report.warn(f"{f.rel}: the file name says speaker {name_spk}, its folder {f.path.parent.name} says "
                f"{folder_spk}; speaker {folder_spk} taken from the folder")
    return folder_spk


def build(db: Path, args, report):
    table = UttTable(CORPUS.domain)
    for f in scan_audio(db, report, decode=args.decode_audio):
        parsed = parse_name(f.stem)
        if parsed is None:
            report.skip(f.rel, "name is not <SPK>_<word>_<emotion> with a TESS emotion")
            continue
        name_spk, word, emo = parsed
        folder = f.path.parent.name
        f_spk, f_emo = folder_labels(folder)
        if f_spk is not None and f_emo != emo:
            report.skip(f.rel, f"folder/name disagree: folder {folder} says {f_spk} {f_emo}, "
                               f"the name says {name_spk} {emo}")
            continue
        spk_raw = speaker_of(f, name_spk, f_spk, report)
        if spk_raw not in SPEAKERS:
            report.skip(f.rel, f"invalid field value: speaker {spk_raw} (not OAF or YAF)")
            continue
        spk = table.speaker(spk_raw)
        utt = table.utt_id(spk, f"{spk_raw}_{word.lower()}_{emo}")
        if utt in table:
            report.skip(f.rel, f"duplicate: a second copy of {table.sources[utt]}")
            continue
        table.add(utt, wav=f.path, spk=spk, source=f.rel, emo=emo, gender="f", word=word.lower(),
                  text=f"Say the word {word.lower()}")
    dd = table.to_datadir()
    check_counts(report, "TESS files per emotion", Counter(dd.utt2emo.values()), {e: 400 for e in EMOTIONS})
    check_counts(report, "TESS files per speaker and emotion",
                 Counter(f"{dd.utt2spk[u].split('-')[1]}_{e}" for u, e in dd.utt2emo.items()),
                 {f"{s}_{e}": 200 for s in SPEAKERS for e in EMOTIONS})
    return dd


def write_splits(args) -> list[Path]:
    """Speaker-based split: train on one actress, test on the other, both ways (2 folds)."""
    sets = fold_sets([[f"{CORPUS.domain}-OAF"], [f"{CORPUS.domain}-YAF"]], dev=None)
    return [write_split_list(SPLIT_FILE, sets, unit="speaker", version=1, description=[
        "TESS speaker-based split (2 folds): fold k tests on speaker k (1 = OAF, 2 = YAF) and trains",
        "on the other; no dev set (there are two speakers only).",
        "Regenerate with: python3 local/prepare.py --write-splits"])]


if __name__ == "__main__":
    sys.exit(run_prepare(CORPUS, build, doc=__doc__, write_splits=write_splits))
