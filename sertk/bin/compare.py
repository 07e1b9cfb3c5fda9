"""Paired significance tests between systems scored on the same test utterances.

  cd egs/emodb && sertk compare exp/probe_whisper/spk5 exp/classifier/spk5 exp/selm/spk5
  sertk compare 'exp/selm/*/eval' 'exp/classifier/*/eval' --common     # patterns: quote them

Each SYSTEM is a results.json, an eval dir, any dir holding them, or a glob
pattern of these. Results pair up by protocol id and task (classification
in UAR, A/V/D regression in CCC, unless --metric picks one), and a system's
repeated training seeds pair seed by seed with the other's; a system whose test lists
differ from the first's is refused, naming them (``--common``: pair the test
sets they share). Every later system is compared with the first
(``--all-pairs``: every pair), per test set and pooled over a protocol's
folds, by a paired speaker-cluster bootstrap (default) or approximate
randomisation, with Holm's correction across the rows. Gold labels come from
the recipe's data dirs and label maps (run it in the recipe dir, or give
``--data`` and ``--conf``) and must reproduce each results.json's figure.
docs/metrics.md explains each choice.
"""
from __future__ import annotations

import argparse
import sys

from sertk.common.fileio import write_json_atomic
from sertk.data.labels import LabelError
from sertk.eval.compare import MIN_SPEAKERS, TESTS, CompareError, compare, format_rows
from sertk.eval.metrics import CLASSIFICATION_BOOT_METRICS
from sertk.eval.significance import CCC_METRICS
from sertk.eval.results import ResultsError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sertk compare", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("systems", nargs="+", help="results.json files or dirs of results, the first is the reference")
    p.add_argument("--metric", default=None,
                   help=f"{', '.join(CLASSIFICATION_BOOT_METRICS + CCC_METRICS)} or ccc_<dim> (arousal, valence, "
                        "dominance): test only results of its task; default: classification in uar, A/V/D in ccc "
                        "(the mean CCC over dimensions)")
    p.add_argument("--test", default="bootstrap", choices=TESTS,
                   help="paired bootstrap (difference interval + p) or approximate randomisation (p)")
    p.add_argument("--resample", default="speaker", choices=("speaker", "utterance"),
                   help="resampling / swapping unit (speakers: utterances of one speaker are not independent)")
    p.add_argument("--n", type=int, default=10000, help="bootstrap resamples or permutations")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--all-pairs", action="store_true", help="every pair, not each system against the first")
    p.add_argument("--min-speakers", type=int, default=MIN_SPEAKERS,
                   help="test sets of fewer speakers get their difference but no speaker-level test")
    p.add_argument("--data", default="data", help="the recipe's data dir (test sets' utt2emo, utt2spk)")
    p.add_argument("--conf", default="conf", help="the recipe's conf dir (label maps)")
    p.add_argument("--common", action="store_true", help="pair the test sets the systems share, not refuse others")
    p.add_argument("--json", help="also write the rows to this JSON file")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        rows = compare(args.systems, args.metric, args.test, args.resample, args.n, args.seed, args.all_pairs,
                       args.data, args.conf, args.min_speakers, args.common)
    except (CompareError, ResultsError, LabelError, ValueError) as e:
        print(f"sertk compare: {e}", file=sys.stderr)
        return 1
    print(format_rows(rows))
    if args.json:
        write_json_atomic(args.json, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
