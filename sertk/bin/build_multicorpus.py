"""Stage 1: build a protocols file's multi-corpus data dirs from sibling recipes (its ``build:`` section).

  sertk build-multicorpus --protocols conf/protocols_selm.yaml --data data
  sertk build-multicorpus --protocols conf/protocols_selm.yaml --list-inputs    # for the stage marker
  sertk build-multicorpus --protocols conf/protocols_selm.yaml --list-outputs

Run from the recipe dir (ser.sh does, for every CONFIG@PROTOCOLS entry whose
protocols file has a build: section). A sibling recipe whose data is not
prepared stops it with the command that prepares it. The section's keys are
described in sertk.data.multicorpus. A protocols file without a build:
section prints nothing and exits 0.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sertk.common.config import ConfigError
from sertk.common.logging import setup_logging
from sertk.data.datadir import DataDirError
from sertk.data.labels import LabelError
from sertk.data.multicorpus import CorpusSetError, build, inputs, read_build


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="sertk build-multicorpus", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--protocols", required=True, help="protocols file with a build: section")
    p.add_argument("--data", default="data", help="this recipe's data root (the sets are written there)")
    what = p.add_mutually_exclusive_group()
    what.add_argument("--list-inputs", action="store_true", help="print the files the build reads, one a line")
    what.add_argument("--list-outputs", action="store_true", help="print the data dirs it writes, one a line")
    args = p.parse_args(argv)
    data = Path(args.data)
    try:
        spec = read_build(args.protocols)
        if spec is None:
            return 0
        if args.list_inputs:
            print("\n".join(inputs(spec, data)))
        elif args.list_outputs:
            print("\n".join(str(data / s) for s in spec.sets))
        else:
            setup_logging(data / "local" / f"build_{Path(args.protocols).stem}.log")
            build(spec, data)
    except (CorpusSetError, ConfigError, LabelError, DataDirError) as e:
        print(f"sertk build-multicorpus: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
