"""Import your own corpus (a CSV of files and labels, or a folder-layout pattern) into data dirs.

  sertk import-corpus --config conf/import.yaml --db /path/to/corpus --out data

Stage 1 of a recipe made by egs/TEMPLATE/new_corpus.sh runs this. It writes
data/all (every usable utterance) and every set of conf/protocols.yaml, and
names every skipped file or row in data/local/skipped.txt. On the first run
it also writes what a recipe commits: the label map (every label found; edit
it to choose and merge classes) and the speaker split list (seeded); later
runs reuse them, so the split never changes unless you change it.

conf/import.yaml (paths relative to the corpus root unless noted):

  corpus: mycorpus                       # id prefix and utt2domain
  source:
    csv: labels.csv                      # columns path,label,speaker[,arousal,valence,dominance][,gender][,text]
    columns: {path: File, label: Emotion, speaker: Speaker}   # when the header differs
    # pattern: "{speaker}/{label}/{*}.wav"                    # instead of csv
  labels:
    lowercase: false
    aliases: {ang: angry}                # renames applied while importing
    map: labels.yaml                     # relative to this file; written on the first run
  split:
    list: splits/mycorpus_speaker_split.txt   # relative to this file; written on the first run
    fractions: {train: 0.8, dev: 0.1, test: 0.1}   # or: folds: 5 (and dev: next | none)
    # stratify: label                    # folds only: speaker-disjoint AND label-stratified (default);
    #                                    # none deals speakers at random. Class counts per fold are printed.
    seed: 0
"""
from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

from sertk.common.config import ConfigError, load_yaml
from sertk.data.corpus_prep import (CorpusInfo, PrepError, PrepReport, assign_folds, fold_sets, run_prepare,
                                    split_units, write_split_list)
from sertk.data.datadir import DataDir, byte_sorted
from sertk.data.folds import describe_fold_counts, fold_label_counts, stratified_group_folds
from sertk.data.importer import LabelNormaliser, import_csv, import_pattern
from sertk.data.labels import LabelMap
from sertk.data.validate import validate_datadir

ALLOWED = {"corpus", "source", "labels", "split"}
STRATIFY = ("label", "none")  # split.stratify: generated folds match the corpus's label mix, or deal speakers at random


def load_import_config(path: str | Path) -> dict:
    cfg = load_yaml(path)
    if not isinstance(cfg, dict):
        raise ConfigError(f"{path}: expected a mapping")
    unknown = set(cfg) - ALLOWED
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {sorted(unknown)}; allowed: {sorted(ALLOWED)}")
    corpus = cfg.get("corpus")
    if not corpus or not str(corpus).replace("_", "").isalnum():
        raise ConfigError(f"{path}: 'corpus' must be a name of letters, digits and '_', got {corpus!r}")
    src = cfg.get("source") or {}
    if ("csv" in src) == ("pattern" in src):
        raise ConfigError(f"{path}: source needs exactly one of 'csv' (a file) or 'pattern' (a folder layout)")
    stratify = (cfg.get("split") or {}).get("stratify", "label")
    if stratify not in STRATIFY:
        raise ConfigError(f"{path}: split.stratify must be one of {', '.join(STRATIFY)}, got {stratify!r}")
    return cfg


def _corpus_info(cfg: dict, var: str) -> CorpusInfo:
    return CorpusInfo(name=str(cfg["corpus"]), var=var, domain=str(cfg["corpus"]),
                      obtain="your own copy", licence="whatever its owner grants",
                      layout="the files that conf/import.yaml describes")


def _write_label_map(path: Path, dd: DataDir, report: PrepReport, corpus: str) -> None:
    counts = Counter(dd.utt2emo.values())
    lines = [f"# {corpus}: every label found on the first import, with its count. Edit to choose the classes",
             "# (delete a label to leave its utterances out) and merge spellings with aliases: {raw: label}.",
             f"name: {corpus}", "labels:"]
    lines += [f"  - {lab}   # {counts[lab]}" for lab in byte_sorted(counts)]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    report.note(f"wrote the label map {path} ({len(counts)} labels); edit it to choose and merge classes")


def _write_split(path: Path, dd: DataDir, split: dict, report: PrepReport, corpus: str,
                 label_map: LabelMap | None = None) -> None:
    """Write the committed split list; generated folds keep speakers whole and every class in each test fold."""
    speakers = list(dd.spk2utt)
    seed = int(split.get("seed", 0))
    if "folds" in split:
        n = int(split["folds"])
        dev = split.get("dev", "none")
        stratify = split.get("stratify", "label")
        labels = {u: (lab if label_map is None else label_map.canonical(lab))
                  for u, lab in dd.utt2emo.items() if label_map is None or lab in label_map}
        if stratify == "label":
            try:
                folds = stratified_group_folds([dd.utt2spk[u] for u in labels], list(labels.values()), n, seed)
            except ValueError as e:
                raise PrepError(f"{path.name}: {e}") from e
        else:
            folds = assign_folds(speakers, n, seed)
        sets = fold_sets(folds, dev=None if dev in (None, "none") else dev)
        how = (f"{n} speaker-independent folds{', stratified by label' if stratify == 'label' else ''} "
               f"(dev: {dev})")
        lines, warns = describe_fold_counts(fold_label_counts(folds, dd.utt2spk, labels))
        for line in lines:
            report.note(line)
        for w in warns:
            report.warn(f"{path.name}: {w}")
    else:
        fractions = split.get("fractions") or {"train": 0.8, "dev": 0.1, "test": 0.1}
        sets = split_units(speakers, fractions, seed)
        how = "speaker-independent parts " + ", ".join(f"{k} {v}" for k, v in fractions.items())
    write_split_list(path, sets, unit="speaker", version=1, description=[
        f"{corpus}: {how}, made on the first import from the {len(speakers)} speakers found (seed {seed}).",
        "Commit this file: it fixes the split. Pin its sha256 as lists_sha256 in conf/protocols.yaml."])
    report.note(f"wrote the split list {path}; commit it (and pin its sha256 in conf/protocols.yaml)")


def main(argv: list[str] | None = None) -> int:
    # no abbreviations: '--db DIR' must not be read as '--db-var DIR' (the messages would name no variable)
    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    pre.add_argument("--config", default="conf/import.yaml")
    pre.add_argument("--db-var", default="CORPUS", help="the db.sh variable named in messages")
    known, rest = pre.parse_known_args(argv)
    wants_help = any(a in ("-h", "--help") for a in rest)
    try:
        cfg = load_import_config(known.config) if not wants_help else {"corpus": "corpus", "source": {"csv": "x"}}
    except (ConfigError, OSError) as e:
        print(f"sertk import-corpus: {e}", file=sys.stderr)
        return 1
    conf_dir = Path(known.config).resolve().parent
    corpus = str(cfg["corpus"])
    src, lab, split = cfg.get("source") or {}, cfg.get("labels") or {}, cfg.get("split") or {}

    def add_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--config", default="conf/import.yaml", help="the import description (see --help)")
        p.add_argument("--db-var", default="CORPUS", help="the db.sh variable named in messages")

    def build(db: Path, args, report: PrepReport) -> DataDir:
        norm = LabelNormaliser(lab.get("aliases"), bool(lab.get("lowercase", False)))
        if "csv" in src:
            dd = import_csv(db / src["csv"], corpus, report,
                            audio_root=db / src["audio_root"] if src.get("audio_root") else None,
                            columns=src.get("columns"), delimiter=src.get("delimiter"), labels=norm,
                            decode=args.decode_audio)
        else:
            dd = import_pattern(db, src["pattern"], corpus, report, labels=norm, decode=args.decode_audio)
        map_path = conf_dir / lab.get("map", "labels.yaml")
        if not map_path.exists():
            _write_label_map(map_path, dd, report, corpus)
        list_path = conf_dir / split.get("list", f"splits/{corpus}_speaker_split.txt")
        if not list_path.exists():
            _write_split(list_path, dd, split, report, corpus, LabelMap.load(map_path))
        return dd

    def validate_all(args) -> int:
        """The imported corpus as a whole passes the data-dir validator (audio was probed on import)."""
        rep = validate_datadir(Path(args.out) / "all", check_audio=False)
        print(rep.summary(), file=sys.stderr)
        return 0 if rep.ok else 1

    return run_prepare(_corpus_info(cfg, known.db_var), build, argv, doc=__doc__, add_args=add_args,
                       finish=validate_all)


if __name__ == "__main__":
    sys.exit(main())
