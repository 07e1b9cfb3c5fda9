"""List or validate the data dirs named by a recipe's conf/protocols.yaml.

--list-sets prints every set name (one per line) for the stage script;
--validate checks every set (files, sorting, audio, labels, A/V/D), that no
speaker is in both train and test of a speaker-independent protocol, and
prints the class counts per split.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sertk.common.protocol import all_sets, load_protocols
from sertk.data.labels import LabelMap
from sertk.data.validate import check_speaker_disjoint, class_count_table, validate_datadir


def validate(protocols: str, data: Path, check_audio: bool) -> int:
    splits = load_protocols(protocols)
    n_err = 0
    maps = {s.label_map for s in splits if s.label_map}
    label_map = LabelMap.load(next(iter(maps))) if len(maps) == 1 else None
    counts = {}
    for name in all_sets(splits):
        rep = validate_datadir(data / name, label_map=label_map, check_audio=check_audio)
        print(rep.summary(), file=sys.stderr)
        counts[name] = rep.class_counts
        n_err += len(rep.errors)
    for s in splits:
        # every protocol is speaker-independent unless it says otherwise
        if s.options.get("disjoint_speakers", True):
            roles = {"train": data / s.train, **({"dev": data / s.dev} if s.dev else {})}
            roles.update({f"test:{t}": data / t for t in s.tests if t != s.train})
            for issue in check_speaker_disjoint(roles):
                print(f"error [{s.tag}]: {issue}", file=sys.stderr)
                n_err += 1
    if any(counts.values()):
        print("class counts per split:\n" + class_count_table(
            counts, label_map.labels if label_map else None), file=sys.stderr)
    if n_err:
        print(f"sertk protocols: {n_err} error(s); see above", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="sertk protocols", description=__doc__.splitlines()[0])
    p.add_argument("--protocols", required=True)
    p.add_argument("--data", default="data")
    p.add_argument("--list-sets", action="store_true")
    p.add_argument("--validate", action="store_true")
    p.add_argument("--no-audio", action="store_true", help="skip reading audio headers")
    args = p.parse_args(argv)
    if args.list_sets:
        print("\n".join(all_sets(load_protocols(args.protocols))))
    if args.validate:
        return validate(args.protocols, Path(args.data), not args.no_audio)
    return 0


if __name__ == "__main__":
    sys.exit(main())
