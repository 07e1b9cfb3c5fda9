"""Split a data dir: into N job parts (DIR/splitN), speaker-disjoint parts, or speaker-independent folds.

  sertk split-data-dir data/train --nj 4                      # data/train/split4/{1..4}
  sertk split-data-dir data/all --fractions train=0.8,dev=0.1,test=0.1 --out data
  sertk split-data-dir data/all --folds 5 --out data          # data/fold{1..5}/{train,test}
  sertk split-data-dir data/all --folds 5 --groups data/all/utt2session --out data

Parts and folds never share a speaker (or a group from --groups); the same
--seed gives the same split everywhere.
"""
from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

from sertk.data.datadir import DataDirError, read_table
from sertk.data.folds import describe_fold_counts
from sertk.data.split import make_folds, split_by_speaker, split_into_parts, write_folds


def _fractions(text: str) -> dict[str, float]:
    out = {}
    for item in text.split(","):
        name, _, val = item.partition("=")
        try:
            out[name.strip()] = float(val)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected name=fraction[,name=fraction...], got {text!r}")
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sertk split-data-dir", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dir", metavar="DIR")
    how = p.add_mutually_exclusive_group(required=True)
    how.add_argument("--nj", type=int, help="split into N contiguous parts for N jobs (DIR/splitN/1..N)")
    how.add_argument("--fractions", type=_fractions, help="speaker-disjoint parts, e.g. train=0.8,test=0.2")
    how.add_argument("--folds", type=int, help="K speaker-independent folds, OUT/fold{k}/{train,test}")
    p.add_argument("--out", help="output root for --fractions (OUT/<name>) and --folds")
    p.add_argument("--groups", help="file 'utt group' (e.g. session): keep groups, not speakers, whole")
    p.add_argument("--no-stratify", action="store_true",
                   help="--folds: deal speakers by size only, not matching each fold's label mix to the corpus's")
    p.add_argument("--seed", type=int, default=0)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.nj is not None:
            for path in split_into_parts(args.dir, args.nj):
                print(path)
            return 0
        if not args.out:
            print("split-data-dir: --out is required with --fractions/--folds", file=sys.stderr)
            return 2
        groups = read_table(Path(args.groups), 1, check_order=False) if args.groups else None
        if args.fractions is not None:
            parts = split_by_speaker(args.dir, args.fractions, seed=args.seed, groups=groups)
            for name, dd in parts.items():
                dd.write(Path(args.out) / name)
                print(f"{Path(args.out) / name}: {len(dd)} utterances, {len(dd.spk2utt)} speakers")
        else:
            folds = make_folds(args.dir, args.folds, seed=args.seed,
                               by="group" if groups else "speaker", groups=groups,
                               stratify=not args.no_stratify)
            for path, (train, test) in zip(write_folds(folds, args.out), folds):
                print(f"{path}: train {len(train)}, test {len(test)} utterances")
            lines, warns = describe_fold_counts([Counter(t.utt2emo.values()) for _, t in folds])
            for line in lines:
                print(line)
            for w in warns:
                print(f"split-data-dir: warning: {w}", file=sys.stderr)
    except (DataDirError, ValueError, OSError) as e:
        print(f"split-data-dir: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
