"""List or validate the data dirs named by a recipe's conf/protocols.yaml.

--list-sets prints every set name (one per line) for the stage script;
--validate checks every set (files, sorting, audio at least --min-duration
long, labels against its own protocol's label map, A/V/D), that no speaker is
in both train and test of a speaker-independent protocol, and prints the
class counts per split.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sertk.common.protocol import all_sets, label_maps_by_set, load_protocols, min_duration_of
from sertk.data.labels import LabelMap
from sertk.data.validate import (DEFAULT_MIN_DURATION, check_speaker_disjoint, class_count_table,
                                 validate_datadir)


def validate_set(path: Path, maps: list[LabelMap], check_audio: bool, min_duration: float):
    """One set checked in full against its protocol's first label map, and its labels against any other.

    A set two protocols share with different maps must fit both; the second
    pass reads no audio and adds only its label errors.
    """
    rep = validate_datadir(path, label_map=maps[0] if maps else None, check_audio=check_audio,
                           min_duration=min_duration)
    for lm in maps[1:]:
        other = validate_datadir(path, label_map=lm, check_audio=False)
        rep.errors += [i for i in other.errors if i.reason == "label outside map"]
    return rep


def _label_order(maps: dict[str, LabelMap]) -> list[str]:
    """Every map's classes, first map first: the rows of the class-count table."""
    return list(dict.fromkeys(lab for lm in maps.values() for lab in lm.labels))


def validate(protocols: str, data: Path, check_audio: bool, min_duration: float | None = None) -> int:
    splits = load_protocols(protocols)
    if min_duration is None:
        min_duration = min_duration_of(protocols, DEFAULT_MIN_DURATION)
    n_err = 0
    by_set = label_maps_by_set(splits)
    maps = {p: LabelMap.load(p) for ps in by_set.values() for p in ps}
    counts = {}
    for name in all_sets(splits):
        rep = validate_set(data / name, [maps[p] for p in by_set[name]], check_audio, min_duration)
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
        print("class counts per split:\n" + class_count_table(counts, _label_order(maps)), file=sys.stderr)
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
    p.add_argument("--min-duration", type=float, default=None,
                   help="shortest usable utterance, seconds (default: the protocols file's min_duration, "
                        f"else {DEFAULT_MIN_DURATION})")
    args = p.parse_args(argv)
    if args.list_sets:
        print("\n".join(all_sets(load_protocols(args.protocols))))
    if args.validate:
        return validate(args.protocols, Path(args.data), not args.no_audio, args.min_duration)
    return 0


if __name__ == "__main__":
    sys.exit(main())
