"""Write a subset of a data dir: listed utterances or speakers, first/last N, N per speaker, or N at random.

  sertk subset-data-dir data/train data/train_1k --random 1000 --seed 0
  sertk subset-data-dir data/train data/train_sub --utt-list keep.txt
"""
from __future__ import annotations

import argparse
import sys

from sertk.data.datadir import DataDirError
from sertk.data.split import subset


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sertk subset-data-dir", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("src", metavar="SRCDIR")
    p.add_argument("dest", metavar="DESTDIR")
    how = p.add_mutually_exclusive_group(required=True)
    how.add_argument("--utt-list", help="file with one utterance id per line (first field)")
    how.add_argument("--spk-list", help="file with one speaker id per line (first field)")
    how.add_argument("--first", type=int, help="first N utterances in sorted order")
    how.add_argument("--last", type=int, help="last N utterances in sorted order")
    how.add_argument("--per-spk", type=int, help="first N utterances of every speaker")
    how.add_argument("--random", type=int, help="N utterances drawn with --seed")
    p.add_argument("--seed", type=int, default=0)
    return p


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    try:
        dd = subset(a.src, utt_list=a.utt_list, spk_list=a.spk_list, first=a.first, last=a.last,
                    per_spk=a.per_spk, random_n=a.random, seed=a.seed)
        dd.write(a.dest)
    except (DataDirError, ValueError, OSError) as e:
        print(f"subset-data-dir: {e}", file=sys.stderr)
        return 1
    print(f"{a.dest}: {len(dd)} utterances, {len(dd.spk2utt)} speakers")
    return 0


if __name__ == "__main__":
    sys.exit(main())
