"""Miniature copies of the real SER corpora: their folder layout, file naming and
annotation formats, with short generated audio, so a parser error shows up
without the corpus.

Audio comes as distributed corpora have it: varying sample rates, 16/24-bit
PCM, float, stereo, AIFF data behind a ``.wav`` name; plus the litter real
copies carry (``.DS_Store``, ``._`` AppleDouble files, read-me files) and
files each protocol must exclude (RAVDESS song, unannotated audio, ...).
Every builder returns the corpus root and a dict of what a correct
preparation must find (utterance count, labels, skipped names).
"""
from __future__ import annotations

import csv
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import soundfile as sf
import yaml

from sertk.data.corpus_prep import read_split_list

# (samplerate, subtype, container, channels) cycled over a fixture's files
AUDIO_VARIANTS = [
    (16000, "PCM_16", "WAV", 1),
    (48000, "PCM_24", "WAV", 1),
    (22050, "FLOAT", "WAV", 1),
    (44100, "PCM_16", "AIFF", 1),   # AIFF data behind a .wav name
    (16000, "PCM_32", "WAV", 2),
    (8000, "PCM_16", "WAV", 1),
]


def tone(path: Path, label: str, variant: int = 0, dur: float = 0.5) -> Path:
    """0.5 s of a label-dependent harmonic tone plus noise, in one of AUDIO_VARIANTS."""
    sr, subtype, container, channels = AUDIO_VARIANTS[variant % len(AUDIO_VARIANTS)]
    seed = zlib.crc32(f"{path.name}".encode())
    rng = np.random.default_rng(seed)
    f0 = 110 + (zlib.crc32(label.encode()) % 200) + rng.uniform(-10, 10)
    t = np.arange(int(sr * dur)) / sr
    amp = 0.1 + 0.3 * ((zlib.crc32(label.encode()) >> 8) % 5) / 5
    x = sum(amp / k * np.sin(2 * np.pi * f0 * k * t * (1 + 0.05 * np.sin(2 * np.pi * 3 * t))) for k in range(1, 6))
    x = x * np.hanning(len(t)) + 0.01 * rng.standard_normal(len(t))
    x = np.clip(x, -0.99, 0.99).astype(np.float32)
    if channels == 2:
        x = np.stack([x, 0.8 * x], 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), x, sr, subtype=subtype, format=container)
    return path


def litter(folder: Path) -> list[Path]:
    """The non-audio files real copies carry; preparation must name each one."""
    folder.mkdir(parents=True, exist_ok=True)
    out = [folder / ".DS_Store", folder / "readme.txt"]
    out[0].write_bytes(b"\x00\x00\x00\x01Bud1")
    out[1].write_text("downloaded from the corpus site\n")
    return out


# ------------------------------------------------------------------ RAVDESS
RAVDESS_EMOS = {"01": "neutral", "03": "happy", "04": "sad", "05": "angry"}


def make_ravdess(root: Path, actors=(1, 2, 3, 4, 5, 6, 7, 8, 11, 14, 21, 23)) -> dict:
    """Actor_NN/03-01-EE-II-SS-RR-NN.wav for a few actors of every fold of the committed split."""
    utts, variant = [], 0
    for a in actors:
        for emo in RAVDESS_EMOS:
            inten = "01" if emo == "01" else "02"
            name = f"03-01-{emo}-{inten}-01-01-{a:02d}"
            tone(root / f"Actor_{a:02d}" / f"{name}.wav", emo, variant)
            variant += 1
            utts.append(name)
    song = root / "Actor_01" / "03-02-03-01-01-01-01.wav"        # song: excluded
    tone(song, "03")
    bad_actor = root / "Actor_02" / "03-01-05-01-01-02-03.wav"   # actor 03's file in actor 02's folder
    tone(bad_actor, "05")
    apple = root / "Actor_01" / "._03-01-01-01-01-01-01.wav"     # AppleDouble litter
    apple.write_bytes(b"\x00\x05\x16\x07")
    stray = litter(root)
    return {"utts": utts, "n": len(utts),
            "skipped": {"song": song, "actor mismatch": bad_actor, "system file": apple,
                        "system file ": stray[0], "not audio": stray[1]}}


def write_csv(path: Path, header: list[str], rows: list[list], quote_all: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, quoting=csv.QUOTE_ALL if quote_all else csv.QUOTE_MINIMAL)
        w.writerow(header)
        w.writerows(rows)
    return path


# ------------------------------------------------------------------ CREMA-D
CREMAD_VOTE = {"ANG": "A", "DIS": "D", "FEA": "F", "HAP": "H", "NEU": "N", "SAD": "S"}


def make_cremad(root: Path, actors: dict[str, str]) -> dict:
    """AudioWAV/<actor>_<SEN>_<EMO>_<LVL>.wav, VideoDemographics.csv, processedResults/summaryTable.csv.

    ``actors`` maps actor id -> "Male"/"Female". One clip per actor has a tied
    vote ("A:D"), one clip's vote disagrees with its intended emotion.
    """
    clips, variant = [], 0
    for actor in actors:
        for sent, emo, lvl in (("DFA", "ANG", "XX"), ("IEO", "HAP", "HI"), ("TIE", "NEU", "XX"), ("IWW", "SAD", "XX"),
                               ("IEO", "ANG", "LO")):
            name = f"{actor}_{sent}_{emo}_{lvl}"
            tone(root / "AudioWAV" / f"{name}.wav", emo, variant)
            variant += 1
            clips.append(name)
    votes = []
    for i, name in enumerate(clips):
        emo = name.split("_")[2]
        vote = CREMAD_VOTE[emo]
        if name.endswith("IEO_ANG_LO"):
            vote = "A:D"                                   # a tie: no single perceived label
        elif name.endswith("TIE_NEU_XX"):
            vote = "S"                                     # raters heard sadness
        votes.append([str(i + 1), name, vote, "60.5", "N", "70", vote.split(":")[0], "55"])
    write_csv(root / "processedResults" / "summaryTable.csv",
              ["", "FileName", "VoiceVote", "VoiceLevel", "FaceVote", "FaceLevel", "MultiModalVote", "MultiModalLevel"],
              votes, quote_all=True)
    write_csv(root / "VideoDemographics.csv", ["ActorID", "Age", "Sex", "Race", "Ethnicity"],
              [[a, 30, sex, "Caucasian", "Not Hispanic"] for a, sex in actors.items()], quote_all=True)
    first = next(iter(actors))
    bad_emo = root / "AudioWAV" / f"{first}_DFA_XYZ_XX.wav"
    tone(bad_emo, "x")
    empty = root / "AudioWAV" / f"{first}_MTI_SAD_XX.wav"  # a 0-byte file, as in broken copies
    empty.write_bytes(b"")
    stray = litter(root / "AudioWAV")
    return {"clips": clips, "n": len(clips),
            "skipped": {"invalid field value": bad_emo, "unreadable audio": empty, "system file": stray[0],
                        "not audio": stray[1]}}


# ------------------------------------------------------------------ IEMOCAP
def _iemocap_vad(i: int) -> tuple[float, float, float]:
    return (1.5 + (i % 4) * 0.5, 2.0 + (i % 3) * 0.5, 2.5 + (i % 5) * 0.5)


def make_iemocap(root: Path, sessions=(1, 2, 3, 4, 5)) -> dict:
    """Session{k}/sentences/wav/<dialog>/<utt>.wav and Session{k}/dialog/EmoEvaluation/<dialog>.txt.

    Every session has an improvised and a scripted dialog with both actors;
    labels cycle through the 4-class labels plus exc, fru and xxx.
    """
    labels = ["neu", "hap", "ang", "sad", "exc", "fru", "neu", "xxx", "sad", "ang"]
    names = {"neu": "Neutral", "hap": "Happiness", "ang": "Anger", "sad": "Sadness", "exc": "Excited",
             "fru": "Frustration", "xxx": "Other"}
    ann, i, variant = {}, 0, 0
    for s in sessions:
        for dialog in (f"Ses0{s}F_impro01", f"Ses0{s}M_script01_1"):
            lines = ["% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]", ""]
            t = 1.0
            for k in range(5):
                g = "FM"[k % 2]
                utt = f"{dialog}_{g}{k // 2:03d}"
                lab = labels[i % len(labels)]
                v, a, d = _iemocap_vad(i)
                lines.append(f"[{t:.4f} - {t + 1.5:.4f}]\t{utt}\t{lab}\t[{v:.4f}, {a:.4f}, {d:.4f}]")
                lines.append(f"C-E1:\t{names[lab]};\t()")
                lines.append(f"C-E2:\t{names[lab]}; Frustration;\t(tense)")
                lines.append(f"C-{g}1:\tNeutral;\t()")
                lines.append(f"A-E1:\tval {int(v)}; act {int(a)}; dom  {int(d)};\t()")
                lines.append(f"A-{g}1:\tval 3; act 3; dom  3;\t()")
                lines.append("")
                tone(root / f"Session{s}" / "sentences" / "wav" / dialog / f"{utt}.wav", lab, variant)
                ann[utt] = (lab, (a, v, d), f"Session{s}")
                variant += 1
                i += 1
                t += 2.0
            ev = root / f"Session{s}" / "dialog" / "EmoEvaluation"
            ev.mkdir(parents=True, exist_ok=True)
            (ev / f"{dialog}.txt").write_text("\n".join(lines) + "\n")
        # per-evaluator detail folders exist in the release; they are not parsed
        (ev / "Categorical").mkdir(exist_ok=True)
        (ev / "Categorical" / f"Ses0{s}F_impro01_e1_cat.txt").write_text(f"Ses0{s}F_impro01_F000 :Neutral; ()\n")
    # audio without annotation, annotation without audio, AppleDouble litter
    unannotated = tone(root / "Session1" / "sentences" / "wav" / "Ses01F_impro01" / "Ses01F_impro01_F099.wav", "neu")
    ev1 = root / "Session1" / "dialog" / "EmoEvaluation"
    with open(ev1 / "Ses01F_impro01.txt", "a") as f:
        f.write("[50.0000 - 52.0000]\tSes01F_impro01_M098\tang\t[2.0000, 4.0000, 4.0000]\nC-E1:\tAnger;\t()\n\n")
    apple = ev1 / "._Ses01F_impro01.txt"
    apple.write_bytes(b"\x00\x05\x16\x07")
    return {"ann": ann, "n": len(ann), "skipped": {"no EmoEvaluation entry": unannotated, "system file": apple,
                                                   "annotated, but no usable audio file": "Ses01F_impro01_M098"}}


# -------------------------------------------------------------- MSP-Podcast
def make_msp_podcast(root: Path, with_test3: bool = False) -> dict:
    """Audios/MSP-PODCAST_XXXX_YYYY.wav and Labels/labels_consensus.csv (the release's columns)."""
    rows, variant = [], 0
    classes = ["A", "H", "N", "S", "U", "X", "N", "O", "A", "S"]
    parts = {"Train": ["101", "102", "Unknown"], "Development": ["201"], "Test1": ["301", "302"], "Test2": ["401"]}
    if with_test3:
        parts["Test3"] = ["501"]
    n = 0
    for p, spks in parts.items():
        for spk in spks:
            for k in range(4):
                n += 1
                name = f"MSP-PODCAST_{n:04d}_{k + 1:04d}.wav"
                c = classes[n % len(classes)]
                tone(root / "Audios" / name, c, variant)
                variant += 1
                rows.append([name, c, f"{2 + n % 5:.6f}", f"{3 + n % 4:.6f}", f"{2.5 + n % 3:.6f}", spk,
                             "Unknown" if spk == "Unknown" else ("Male" if int(spk) % 2 else "Female"), p])
    rows.append(["MSP-PODCAST_9999_0001.wav", "N", "4.0", "4.0", "4.0", "101", "Male", "Train"])  # no audio
    rows.append(["MSP-PODCAST_0001_0002.wav", "N", "NA", "4.0", "4.0", "101", "Male", "Train"])  # bad row
    tone(root / "Audios" / "MSP-PODCAST_0001_0002.wav", "N")
    unlabelled = tone(root / "Audios" / "MSP-PODCAST_8888_0001.wav", "N")
    write_csv(root / "Labels" / "labels_consensus.csv",
              ["FileName", "EmoClass", "EmoAct", "EmoVal", "EmoDom", "SpkrID", "Gender", "Split_Set"], rows)
    stray = litter(root / "Audios")
    return {"rows": rows[:-2], "n": len(rows) - 2,
            "skipped": {"no row in labels_consensus.csv": unlabelled, "bad label row": "MSP-PODCAST_0001_0002",
                        "labelled, but no audio file": "MSP-PODCAST_9999_0001", "system file": stray[0]}}


# ----------------------------------------------------------------- FAU-Aibo
AIBO_2CL = {"A": "NEG", "E": "NEG", "N": "IDL", "P": "IDL", "R": "IDL"}


def make_fau_aibo(root: Path) -> dict:
    """wav/<School>_NN_NNN_NN.wav and labels/IS2009EmotionChallenge/chunk_labels_{2cl,5cl}_corpus.txt."""
    five, two, variant = [], [], 0
    seq = "ANENPRNEAN"
    for school in ("Ohm", "Mont"):
        for child in ("01", "03"):
            for k in range(5):
                chunk = f"{school}_{child}_{k:03d}_00"
                lab = seq[(variant + k) % len(seq)]
                tone(root / "wav" / f"{chunk}.wav", lab, variant)
                variant += 1
                five.append(f"{chunk} {lab} {0.6 + 0.1 * (k % 4):.6f}")
                two.append(f"{chunk} {AIBO_2CL[lab]} 1.000000")
    lab_dir = root / "labels" / "IS2009EmotionChallenge"
    lab_dir.mkdir(parents=True)
    (lab_dir / "chunk_labels_5cl_corpus.txt").write_text("\n".join(five) + "\n")
    (lab_dir / "chunk_labels_2cl_corpus.txt").write_text("\n".join(two) + "\n")
    unlabelled = tone(root / "wav" / "Ohm_01_099_00.wav", "N")
    stray = litter(root / "wav")
    return {"five": dict(x.split()[:2] for x in five), "two": dict(x.split()[:2] for x in two), "n": len(five),
            "skipped": {"chunk not in both": unlabelled, "system file": stray[0], "not audio": stray[1]}}


# -------------------------------------------------------------------- EmoDB
EMODB_SPEAKERS = ("03", "08", "09", "10", "11", "12", "13", "14", "15", "16")


def make_emodb(root: Path) -> dict:
    """wav/<SS><text><E><v>.wav for every speaker (leave-one-speaker-out needs each), plus the release's extras."""
    names, variant = [], 0
    for i, spk in enumerate(EMODB_SPEAKERS):
        for j, (text, emo, ver) in enumerate((("a01", "W", "a"), ("a02", "N", "a"), ("b01", "T", "b"),
                                              ("b03", "F", "a"))):
            name = f"{spk}{text}{emo}{ver}"
            tone(root / "wav" / f"{name}.wav", emo, variant)
            variant += 1
            names.append(name)
    (root / "erkennung.txt").write_text("Datei Erkennungsrate\n")       # outside wav/: not scanned
    (root / "lablaut").mkdir()
    bad = tone(root / "wav" / "17a01Wa.wav", "W")                       # speaker 17 does not exist
    stray = litter(root / "wav")
    return {"names": names, "n": len(names),
            "skipped": {"invalid field value": bad, "system file": stray[0], "not audio": stray[1]}}


# --------------------------------------------------------------------- TESS
def make_tess(root: Path) -> dict:
    """<SPK>_<emotion>/<SPK>_<word>_<emotion>.wav with the folder spellings of distributed copies."""
    top = root / "TESS Toronto emotional speech set data"
    folders = {("OAF", "angry"): "OAF_angry", ("OAF", "fear"): "OAF_Fear", ("OAF", "ps"): "OAF_Pleasant_surprise",
               ("OAF", "sad"): "OAF_Sad", ("YAF", "angry"): "YAF_angry", ("YAF", "fear"): "YAF_fear",
               ("YAF", "ps"): "YAF_pleasant_surprised", ("YAF", "sad"): "YAF_sad"}
    files, variant = [], 0
    for (spk, emo), folder in folders.items():
        for word in ("back", "bar", "base"):
            tone(top / folder / f"{spk}_{word}_{emo}.wav", emo, variant)
            variant += 1
            files.append(f"{spk}_{word}_{emo}")
    # the release's one file whose name truncates the speaker: kept, speaker taken from the folder
    renamed = tone(top / "OAF_neutral" / "OA_bite_neutral.wav", "neutral", variant)
    files.append("OAF_bite_neutral")
    dup = tone(root / "tess toronto emotional speech set data" / "OAF_angry" / "OAF_back_angry.wav", "angry")
    wrong = tone(top / "YAF_sad" / "YAF_bean_angry.wav", "angry")        # an angry file in the sad folder
    stray = litter(top)
    return {"files": files, "n": len(files), "renamed": {"OAF_bite_neutral": renamed},
            "skipped": {"duplicate": dup, "folder/name disagree": wrong, "system file": stray[0],
                        "not audio": stray[1]}}


# ------------------------------------------------------------ test helpers
def read_skipped(out: Path) -> dict[str, str]:
    """data/local/skipped.txt as {what: reason}."""
    lines = (out / "local" / "skipped.txt").read_text().splitlines()
    return dict(line.split("\t", 1) for line in lines)


def read_table(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        k, _, v = line.partition(" ")
        out[k] = v
    return out


# -------------------------------------------------------- running recipes
REPO = Path(__file__).resolve().parent.parent


def run_prepare(recipe: str, db: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    """Run egs/<recipe>/local/prepare.py from the recipe dir, as stage 1 does."""
    return subprocess.run([sys.executable, "local/prepare.py", "--db", str(db), "--out", str(out), *extra],
                          cwd=REPO / "egs" / recipe, capture_output=True, text=True)


def missing_stage_modules(last_stage: int = 4) -> list[str]:
    """sertk.bin modules that ser.sh calls in stages 1..last_stage but that do not exist (yet)."""
    text = (REPO / "egs" / "TEMPLATE" / "ser.sh").read_text()
    used = set(re.findall(r"sertk\.bin\.(\w+)", text))
    if last_stage >= 3:
        used |= {"train", "evaluate"}
    return sorted(m for m in used if importlib.util.find_spec(f"sertk.bin.{m}") is None)


def copy_recipe(recipe: str, work: Path, keep_folds: int | None = 1, keep_protocols: int | None = None,
                small: bool = False) -> Path:
    """A private copy of egs/<recipe> (without data/exp/dump) that still uses the repo's ser.sh and utils.

    ``keep_folds`` keeps only the first folds of cross-validation protocols and
    ``keep_protocols`` the first protocols of each protocols file, and ``small``
    drops dev sets and all test sets but the first, so an end-to-end run stays
    small; the list files and their pinned hashes are unchanged.
    """
    dest = work / "egs" / recipe
    shutil.copytree(REPO / "egs" / recipe, dest, ignore=shutil.ignore_patterns("data", "exp", "dump"))
    if not (work / "egs" / "TEMPLATE").exists():
        (work / "egs" / "TEMPLATE").symlink_to(REPO / "egs" / "TEMPLATE")
        (work / "utils").symlink_to(REPO / "utils")
    for conf in dest.glob("conf/protocols*.yaml"):
        cfg = yaml.safe_load(conf.read_text())
        if keep_protocols:
            cfg["protocols"] = dict(list(cfg["protocols"].items())[:keep_protocols])
        for spec in cfg["protocols"].values():
            if "folds" in spec and keep_folds:
                spec["folds"] = spec["folds"][:keep_folds]
            if small:
                for entry in spec.get("folds") or [spec]:
                    entry.pop("dev", None)
                    tests = entry["test"] if isinstance(entry["test"], list) else [entry["test"]]
                    entry["test"] = tests[:1]
        conf.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return dest


def run_recipe(recipe_dir: Path, env: dict[str, str], *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """./run.sh with the test interpreter first on PATH (ser.sh and prepare commands call python3)."""
    full = dict(os.environ)
    full.update(env)
    full["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{full.get('PATH', '')}"
    full.setdefault("OMP_NUM_THREADS", "1")
    return subprocess.run(["bash", "run.sh", "--nj", "1", "--python", sys.executable, *args], cwd=recipe_dir,
                          env=full, capture_output=True, text=True, timeout=timeout)


def results_of(recipe_dir: Path, config: str = "egemaps_lr") -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((recipe_dir / "exp" / config).rglob("results.json"))]


def cremad_split_actors(per_part: int = 2) -> dict[str, str]:
    """A few actors of each part of the committed CREMA-D split (sex alternates; the fixture's csv says which)."""
    sl = read_split_list(REPO / "egs" / "cremad" / "conf" / "splits" / "cremad_speaker_70_10_20.txt")
    actors = [s.split("-")[1] for part in ("train", "dev", "test") for s in sl.sets[part][:per_part]]
    return {a: ("Male", "Female")[i % 2] for i, a in enumerate(actors)}


# ------------------------------------------------------ your own corpus
def make_csv_corpus(root: Path) -> dict:
    """A corpus described by a semicolon CSV with its own column names and A/V/D, plus bad rows."""
    rows, variant = [], 0
    for spk in ("anna", "ben", "carl", "dora", "emil", "fay", "gus", "hilde", "ida", "jon"):
        for k, emo in enumerate(("Angry", "Neutral", "Happy", "Sad")):
            rel = f"audio/{spk}/take {k}.wav"                     # spaces in names are fine
            tone(root / rel, emo, variant)
            variant += 1
            rows.append([rel, emo, spk, f"{1 + k}", f"{2 + k % 3}", f"{3 + (k + len(spk)) % 2}",
                         "female" if spk in ("anna", "dora") else "m"])
    rows.append(["audio/ben/missing.wav", "Angry", "ben", "1", "2", "3", "m"])      # no such file
    tone(root / "audio" / "carl" / "bad avd.wav", "Sad")
    rows.append(["audio/carl/bad avd.wav", "Sad", "carl", "high", "2", "3", "m"])     # non-numeric arousal
    rows.append(["audio/ida/take 0.wav", "Angry", "ida", "1", "2", "3", "f"])        # listed twice
    rows.append(["audio/jon/x.wav", "", "jon", "1", "2", "3", "m"])                  # no label
    path = root / "meta.csv"
    root.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, delimiter=";")
        w.writerow(["File", "Emotion", "Speaker", "Act", "Val", "Dom", "Sex"])
        w.writerows(rows)
    return {"n": 40, "csv": path,
            "skipped": {"audio file not found": "missing.wav", "non-numeric": "bad avd.wav",
                        "duplicate row": "take 0.wav", "empty path, label or speaker": "meta.csv:"}}


IMPORT_SOURCE = """source:
  csv: meta.csv
  columns: {path: File, label: Emotion, speaker: Speaker, arousal: Act, valence: Val, dominance: Dom, gender: Sex}
"""


def new_corpus(work: Path, name: str, *args: str) -> subprocess.CompletedProcess:
    """egs/TEMPLATE/new_corpus.sh in a private egs/ tree (TEMPLATE and utils are the repo's)."""
    (work / "egs").mkdir(parents=True, exist_ok=True)
    if not (work / "egs" / "TEMPLATE").exists():
        (work / "egs" / "TEMPLATE").symlink_to(REPO / "egs" / "TEMPLATE")
        (work / "utils").symlink_to(REPO / "utils")
    return subprocess.run(["bash", str(work / "egs" / "TEMPLATE" / "new_corpus.sh"), name, *args],
                          capture_output=True, text=True)


def configure_csv_import(recipe: Path) -> None:
    """Point the generated conf/import.yaml at make_csv_corpus's CSV and column names."""
    text = (recipe / "conf" / "import.yaml").read_text()
    text = re.sub(r"source:\n  csv: labels.csv\n", IMPORT_SOURCE, text)
    text = text.replace("lowercase: false", "lowercase: true")
    (recipe / "conf" / "import.yaml").write_text(text)


def noise_dataset(root: Path, seconds, n_speakers: int):
    """An ``AudioDataset`` of 16 kHz noise clips of the given lengths, dealt round-robin to ``n_speakers``
    speakers (utterance ``spk<i % n>-<i>``): inputs of uneven length for batch-independence checks."""
    from sertk.data.datadir import DataDir
    from sertk.data.dataset import AudioDataset
    rng = np.random.default_rng(0)
    t = {"wav.scp": {}, "utt2spk": {}}
    for i, s in enumerate(seconds):
        u = f"spk{i % n_speakers}-{i:03d}"
        p = root / "wav" / f"{u}.wav"
        p.parent.mkdir(parents=True, exist_ok=True)
        sf.write(p, (0.1 * rng.standard_normal(int(s * 16000))).astype(np.float32), 16000)
        t["wav.scp"][u], t["utt2spk"][u] = str(p), f"spk{i % n_speakers}"
    DataDir(tables=t).write(root / "data")
    return AudioDataset(root / "data", label_map=None, targets=())
