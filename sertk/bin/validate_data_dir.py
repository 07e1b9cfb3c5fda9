"""Validate Kaldi-style data dirs (with --fix: drop unusable utterances, sort, dedupe).

Checks sort order (byte order), unique ids, that all per-utterance files cover
the same utterances, that there is at least one, segments, audio (exists,
readable, at least --min-duration long), labels against the recipe's label map and finite A/V/D values, and
with --disjoint-from that no speaker is shared with another split. Prints the
class counts of every split. Exit status 1 when an error remains.

  sertk validate-data-dir data/train --label-map conf/labels.yaml --disjoint-from data/test
  utils/fix_data_dir.sh data/train            # the same with --fix
"""
from __future__ import annotations

import argparse
import sys

from sertk.data.datadir import DataDirError
from sertk.data.labels import LabelError, LabelMap
from sertk.data.validate import DEFAULT_MIN_DURATION, check_speaker_disjoint, class_count_table, validate_datadir


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sertk validate-data-dir", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dirs", nargs="+", metavar="DIR", help="data dir(s) to validate")
    p.add_argument("--label-map", help="YAML or text label map that utt2emo labels must belong to")
    p.add_argument("--no-audio", action="store_true", help="skip the audio checks")
    p.add_argument("--decode-audio", action="store_true",
                   help="decode every utterance (slow; catches corrupt payloads the header check misses)")
    p.add_argument("--min-duration", type=float, default=DEFAULT_MIN_DURATION,
                   help="shortest usable utterance, seconds (default %(default)s: shorter clips give "
                        "non-finite eGeMAPS; 0 turns the check off)")
    p.add_argument("--require", action="append", default=[], metavar="FILE",
                   help="a file that must exist besides wav.scp and utt2spk, e.g. utt2emo (repeatable)")
    p.add_argument("--fix", action="store_true",
                   help="write the cleaned dir (in place, originals in DIR/.backup) and report what was dropped")
    p.add_argument("--out", help="with --fix and one DIR: write the cleaned dir here instead of in place")
    p.add_argument("--disjoint-from", nargs="+", default=[], metavar="OTHERDIR",
                   help="splits that must share no speaker with DIR (e.g. the test set of the protocol)")
    p.add_argument("--max-print", type=int, default=10, help="lines printed per kind of problem")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.out and len(args.dirs) != 1:
        print("validate-data-dir: --out needs exactly one DIR", file=sys.stderr)
        return 2
    try:
        label_map = LabelMap.load(args.label_map) if args.label_map else None
    except LabelError as e:
        print(f"validate-data-dir: {e}", file=sys.stderr)
        return 2
    failed = False
    counts = {}
    for d in args.dirs:
        rep = validate_datadir(d, label_map, check_audio=not args.no_audio, min_duration=args.min_duration,
                               require=args.require, fix=args.fix, out=args.out, decode_audio=args.decode_audio)
        print(rep.summary(args.max_print))
        failed |= not rep.ok
        counts[str(args.out or d)] = rep.class_counts
    if args.disjoint_from:
        for o in args.disjoint_from:
            rep = validate_datadir(o, label_map, check_audio=False)
            counts[o] = rep.class_counts
        issues = []
        try:
            for d in args.dirs:
                for o in args.disjoint_from:
                    issues += check_speaker_disjoint({str(args.out or d): args.out or d, o: o})
        except DataDirError as e:
            issues.append(e)
        for i in issues:
            print(f"error: {i}")
        if not issues:
            print(f"speakers: {', '.join(args.dirs)} share none with {', '.join(args.disjoint_from)}")
        failed |= bool(issues)
    if any(counts.values()):
        print("class counts per split:")
        print(class_count_table(counts, label_map.labels if label_map else None))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
