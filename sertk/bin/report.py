"""Write RESULTS.md and confusion-matrix plots from every results.json of a run (stage 11).

    sertk report --exp exp --out exp/RESULTS.md --title "sertk results: mini_emo"

Reads ``<exp>/**/results.json`` (written by sertk.eval.results.write_result),
writes the markdown atomically to ``--out`` and PNGs under ``<exp>/plots/``,
and prints the markdown. A malformed results.json stops the report with an
error naming the file.
"""
from __future__ import annotations

import sys

from sertk.common.entry import base_parser
from sertk.eval.compare import CompareError
from sertk.eval.report import write_report
from sertk.eval.results import ResultsError


def main(argv: list[str] | None = None) -> int:
    p = base_parser(__doc__)
    p.add_argument("--exp", required=True, help="experiment root searched for results.json files")
    p.add_argument("--out", required=True, help="markdown file to write (e.g. exp/RESULTS.md)")
    p.add_argument("--title", default="sertk results", help="first heading of the report")
    p.add_argument("--zoo", default=None, help="mini_emo's stage-0 zoo dir: open the report with the zoo table")
    p.add_argument("--compare", default=None,
                   help="conf/compare.yaml: the paired comparisons to test and report (sertk compare)")
    p.add_argument("--data", default="data",
                   help="the data dirs (test speakers and gold labels: speaker-level pooled intervals, --compare)")
    p.add_argument("--conf", default="conf", help="the conf dir (label maps)")
    p.add_argument("--quiet", action="store_true", help="do not print the markdown to stdout")
    args = p.parse_args(argv)
    try:
        text = write_report(args.exp, args.out, args.title, args.zoo, args.compare, args.data, args.conf)
    except (ResultsError, CompareError) as e:
        print(f"sertk report: {e}", file=sys.stderr)
        return 1
    if not args.quiet:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
