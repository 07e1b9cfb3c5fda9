"""Extract eGeMAPSv02 functionals (openSMILE) of a data dir into OUT/feats.{ark,scp}, reused when up to date.

  sertk extract-egemaps --data data/train --out dump/egemaps/train               # one process
  sertk extract-egemaps --data data/train --out dump/egemaps/train --nj 4        # local pool, merged
  sertk extract-egemaps --data data/train --out dump/egemaps/train --nj 8 --backend slurm
  # by hand, e.g. from another scheduler: split, one call per part, then merge
  sertk split-data-dir data/train --nj 8
  sertk extract-egemaps --data data/train --out dump/egemaps/train --nj 8 --job 3
  sertk extract-egemaps --data data/train --out dump/egemaps/train --nj 8 --merge

Parts are DIR/splitN/JOB, their features OUT/splitN/JOB; the merged index is
OUT/feats.scp. A store whose audio list, audio files and settings are
unchanged is reused (--force recomputes).
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from sertk.common.jobs import launch
from sertk.common.logging import setup_logging
from sertk.data.audio import AudioError
from sertk.data.datadir import DataDir, DataDirError
from sertk.data.split import split_into_parts
from sertk.features.egemaps import (EgemapsError, EgemapsExtractor, extract_datadir, extract_job,
                                    extract_many, extract_parallel, is_up_to_date,
                                    merge_jobs)
from sertk.features.store import FeatureStoreError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sertk extract-egemaps", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, nargs="+",
                   help="data dir(s) (wav.scp, utt2spk, optional segments)")
    p.add_argument("--out", required=True, nargs="+",
                   help="output dir per data dir: feats.ark, feats.scp, feature_names.txt, meta.json")
    p.add_argument("--nj", type=int, default=1, help="number of parallel parts")
    p.add_argument("--sample-rate", type=int, default=16000, help="audio is resampled to this rate first")
    p.add_argument("--backend", choices=["local", "slurm"], default="local",
                   help="local: process pool; slurm: an sbatch array of --job calls, then merge")
    p.add_argument("--slurm-opts", default="", help='extra #SBATCH options, e.g. "--mem=4G --time=2:00:00"')
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--job", type=int, help="extract only part JOB of --nj (DIR/splitN/JOB must exist)")
    mode.add_argument("--merge", action="store_true", help="only merge the --nj parts into OUT/feats.scp")
    p.add_argument("--force", action="store_true", help="recompute even when the store is up to date")
    return p


def run_slurm(args) -> Path:
    """Split, submit one array task per part (each a --job call), wait, merge."""
    datadir = DataDir.read(args.data)
    if not args.force and is_up_to_date(datadir, args.out, EgemapsExtractor(args.sample_rate).config()):
        return Path(args.out) / "feats.scp"
    nj = min(args.nj, len(datadir))
    split_into_parts(args.data, nj)
    command = [sys.executable, "-m", "sertk.bin.extract_egemaps", "--data", args.data, "--out", args.out,
               "--nj", str(nj), "--job", "JOB", "--sample-rate", str(args.sample_rate)]
    if args.force:
        command.append("--force")
    log_dir = Path(args.out) / "log"
    failed = launch(command, nj, log_dir, "egemaps", "slurm", slurm_opts=args.slurm_opts, redo=True)
    if failed:
        raise EgemapsError(f"{len(failed)}/{nj} eGeMAPS job(s) failed ({failed}); see {log_dir}/egemaps.JOB.log")
    return merge_jobs(args.data, args.out, nj, args.sample_rate)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()
    if len(args.data) != len(args.out):
        build_parser().error(f"{len(args.data)} --data dirs but {len(args.out)} --out dirs")
    try:
        if args.nj < 1:
            raise ValueError(f"--nj must be >= 1, got {args.nj}")
        if len(args.data) > 1:
            if args.job is not None or args.merge or args.backend == "slurm":
                raise ValueError("several data dirs go with the local backend only; "
                                 "run --job/--merge/slurm once per data dir")
            for scp in extract_many(list(zip(args.data, args.out)), args.nj, args.sample_rate, args.force):
                print(scp)
            return 0
        args.data, args.out = args.data[0], args.out[0]
        if args.job is not None:
            scp = extract_job(args.data, args.out, args.nj, args.job, args.sample_rate, args.force)
        elif args.merge:
            scp = merge_jobs(args.data, args.out, args.nj, args.sample_rate)
        elif args.nj == 1:
            scp = extract_datadir(args.data, args.out, args.sample_rate, args.force)
        elif args.backend == "slurm":
            scp = run_slurm(args)
        else:
            scp = extract_parallel(args.data, args.out, args.nj, args.sample_rate, args.force)
    except (EgemapsError, AudioError, DataDirError, FeatureStoreError, ValueError) as e:
        logging.getLogger("sertk").error("extract-egemaps: %s", e)
        return 1
    print(scp)
    return 0


if __name__ == "__main__":
    sys.exit(main())
