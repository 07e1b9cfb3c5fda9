"""Run a command once per data part (JOB = 1..nj), locally or as a Slurm array.

Re-running the same command re-runs only the parts that failed.
Example: sertk jobs --nj 4 --log-dir exp/log/feats -- sertk extract-egemaps --data d/split4/JOB ...
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sertk.common.jobs import JobArray, launch


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--" not in argv:
        print("sertk jobs: give the command after '--'", file=sys.stderr)
        return 2
    cut = argv.index("--")
    p = argparse.ArgumentParser(prog="sertk jobs", description=__doc__.splitlines()[0])
    p.add_argument("--nj", type=int, required=True)
    p.add_argument("--log-dir", required=True)
    p.add_argument("--name", default="job")
    p.add_argument("--backend", default="local", choices=["local", "slurm"])
    p.add_argument("--max-parallel", type=int, default=None, help="local backend: parts at once (default nj)")
    p.add_argument("--slurm-opts", default="", help='extra #SBATCH options, e.g. "--mem=4G --time=1:00:00"')
    p.add_argument("--redo", action="store_true", help="run every part again")
    args = p.parse_args(argv[:cut])
    command = argv[cut + 1:]
    failed = launch(command, args.nj, args.log_dir, args.name, args.backend, args.max_parallel,
                    args.slurm_opts, args.redo)
    if failed:
        arr = JobArray(command, args.nj, Path(args.log_dir), args.name)
        logs = ", ".join(str(arr.log_path(j)) for j in failed[:5])
        print(f"sertk jobs: {len(failed)}/{args.nj} parts failed ({failed}); see {logs}. "
              f"Run the same command again to re-run only those.", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
