"""Run one recipe stage unless it is up to date (inputs, corpus listing, options and command unchanged).

Used by egs/TEMPLATE/ser.sh:  sertk stage --num 2 --name features --exp exp
--inputs data/train conf/x.yaml --outputs dump/x --options "sample_rate=16000"
--run-arg=--nj --run-arg=4 -- CMD ...
Inputs are digested by content (small files) or size+mtime (large ones);
--corpus-root folders by their listing only (path, size, mtime of each file),
so a corpus of 100k files costs seconds. --run-arg words are appended to the
command but are not part of what makes the stage up to date (settings that do
not change the result: parallel jobs, a requested fresh start).
"""
from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import time
from pathlib import Path

from sertk.common.stage import StageMarker


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--" not in argv:
        print("sertk stage: give the command after '--'", file=sys.stderr)
        return 2
    cut = argv.index("--")
    own, command = argv[:cut], argv[cut + 1:]
    p = argparse.ArgumentParser(prog="sertk stage", description=__doc__.splitlines()[0])
    p.add_argument("--num", type=int, required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--exp", default="exp", help="where the .stages/ markers live")
    p.add_argument("--inputs", nargs="*", default=[], help="files/dirs the stage reads")
    p.add_argument("--outputs", nargs="*", default=[], help="files/dirs that must exist afterwards")
    p.add_argument("--options", default="", help="the options of this stage that change its result")
    p.add_argument("--corpus-root", dest="roots", action="append", default=[],
                   help="corpus folder the stage reads: its listing is an input (repeatable)")
    p.add_argument("--run-arg", dest="run_args", action="append", default=[],
                   help="word appended to the command that does not change the result (repeatable; "
                        "write --run-arg=--nj for a dashed word)")
    p.add_argument("--redo", default="false", help="true: run even when up to date")
    args = p.parse_args(own)
    if not command:
        p.error("empty command after '--'")
    marker = StageMarker.for_stage(args.exp, args.num, args.name)
    roots = [r for r in args.roots if r]
    signature = marker.signature(args.inputs, args.options, command, roots)
    reason = marker.why_stale(signature, args.outputs)
    if reason is None and args.redo.lower() not in ("true", "1", "yes"):
        print(f"stage {args.num} up to date ({args.name}); pass --redo true to run it again", file=sys.stderr)
        return 0
    print(f"stage {args.num} ({args.name}): running because {reason or 'redo requested'}", file=sys.stderr)
    print(f"  $ {shlex.join(command + args.run_args)}", file=sys.stderr)
    marker.invalidate()
    start = time.time()
    rc = subprocess.call(command + args.run_args)
    if rc != 0:
        print(f"stage {args.num} ({args.name}) failed with exit code {rc}", file=sys.stderr)
        return rc
    missing = [o for o in args.outputs if not Path(o).exists()]
    if missing:
        print(f"stage {args.num} ({args.name}): command succeeded but did not write {missing}", file=sys.stderr)
        return 1
    # Inputs are re-hashed after the run: a stage that (legitimately) adds files
    # to its inputs must not look stale next time.
    marker.complete(marker.signature(args.inputs, args.options, command, roots), time.time() - start)
    print(f"stage {args.num} ({args.name}) done in {time.time() - start:.1f}s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
