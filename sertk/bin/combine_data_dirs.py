"""Combine data dirs into one (Kaldi's combine_data.sh): DEST SRC1 SRC2 ...

Ids must not collide across sources (prefix them per corpus in data
preparation); label files (utt2emo, utt2avd) are kept for the utterances
that have them; other files present in only some sources are dropped with a
warning.
"""
from __future__ import annotations

import argparse
import sys

from sertk.data.datadir import DataDirError
from sertk.data.split import combine


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sertk combine-data-dirs", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dest", metavar="DESTDIR")
    p.add_argument("srcs", nargs="+", metavar="SRCDIR")
    return p


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    if a.dest in a.srcs:
        print("combine-data-dirs: DESTDIR must not be one of the sources", file=sys.stderr)
        return 2
    try:
        dd = combine(a.srcs)
        dd.write(a.dest)
    except (DataDirError, ValueError, OSError) as e:
        print(f"combine-data-dirs: {e}", file=sys.stderr)
        return 1
    print(f"{a.dest}: {len(dd)} utterances from {len(a.srcs)} dirs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
