"""Extract eGeMAPSv02 functionals (openSMILE) once per utterance into a shared store; each data dir gets a view.

  sertk extract-egemaps --data data/train --out dump/egemaps/train               # one process
  sertk extract-egemaps --data data/a data/b --out dump/egemaps/a dump/egemaps/b --nj 4   # one pool, all sets
  sertk extract-egemaps --data data/train --out dump/egemaps/train --nj 8 --backend slurm
  # by hand, e.g. from another scheduler: split, one call per part, then write the view
  sertk split-data-dir data/train --nj 8
  sertk extract-egemaps --data data/train --out dump/egemaps/train --nj 8 --job 3
  sertk extract-egemaps --data data/train --out dump/egemaps/train --nj 8 --merge

Features are stored once per audio content and extractor setting in
STORE/<settings digest>/shard-*.{ark,scp,src} (STORE: --store, by default
_store beside the OUT dirs, e.g. dump/egemaps/_store); OUT/feats.scp points
each utterance of the data dir into it, with OUT/feature_names.txt and
OUT/meta.json. Only utterances the store lacks are extracted; an up-to-date
view is reused (--force re-extracts the data dirs' utterances).
"""
from __future__ import annotations

import argparse
import logging
import shutil
import sys
from pathlib import Path

from sertk.common.jobs import launch
from sertk.common.logging import setup_logging
from sertk.data.audio import AudioError
from sertk.data.datadir import DataDir, DataDirError
from sertk.data.split import split_into_parts
from sertk.features.egemaps import (EgemapsError, EgemapsExtractor, default_store_root, extract_datadir,
                                    extract_job, extract_many, extract_parallel, is_up_to_date, merge_jobs,
                                    missing_datadir, store_for)
from sertk.features.store import FeatureStoreError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sertk extract-egemaps", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, nargs="+",
                   help="data dir(s) (wav.scp, utt2spk, optional segments)")
    p.add_argument("--out", required=True, nargs="+",
                   help="output dir per data dir: feats.scp (a view of the store), feature_names.txt, meta.json")
    p.add_argument("--store", default=None,
                   help="root of the shared feature store (default: _store beside each OUT dir)")
    p.add_argument("--nj", type=int, default=1, help="number of parallel parts")
    p.add_argument("--sample-rate", type=int, default=16000, help="audio is resampled to this rate first")
    p.add_argument("--backend", choices=["local", "slurm"], default="local",
                   help="local: process pool; slurm: an sbatch array of --job calls, then the view")
    p.add_argument("--slurm-opts", default="", help='extra #SBATCH options, e.g. "--mem=4G --time=2:00:00"')
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--job", type=int, help="extract only part JOB of --nj (DIR/splitN/JOB must exist)")
    mode.add_argument("--merge", action="store_true", help="only write OUT/feats.scp once the --nj jobs are done")
    p.add_argument("--force", action="store_true", help="re-extract even when the features are up to date")
    return p


def slurm_todo_dir(out: str | Path) -> Path:
    """Where the Slurm path writes the utterances its array extracts (split into parts there)."""
    return Path(out) / "todo"


def run_slurm(args) -> Path:
    """Split what the store lacks, submit one array task per part (each a --job call), wait, write the view."""
    datadir = DataDir.read(args.data)
    config = EgemapsExtractor(args.sample_rate).config()
    if not args.force and is_up_to_date(datadir, args.out, config):
        return Path(args.out) / "feats.scp"
    store_root = Path(args.store) if args.store else default_store_root(args.out)
    todo = missing_datadir(datadir, store_for(store_root, args.out, config), args.force)
    nj = 1
    if todo is not None:
        todo_dir = slurm_todo_dir(args.out)
        shutil.rmtree(todo_dir, ignore_errors=True)
        todo.write(todo_dir)
        nj = min(args.nj, len(todo))
        split_into_parts(todo_dir, nj)
        command = [sys.executable, "-m", "sertk.bin.extract_egemaps", "--data", str(todo_dir), "--out", args.out,
                   "--store", str(store_root), "--nj", str(nj), "--job", "JOB", "--sample-rate", str(args.sample_rate)]
        if args.force:
            command.append("--force")
        log_dir = Path(args.out) / "log"
        failed = launch(command, nj, log_dir, "egemaps", "slurm", slurm_opts=args.slurm_opts, redo=True)
        if failed:
            raise EgemapsError(f"{len(failed)}/{nj} eGeMAPS job(s) failed ({failed}); "
                               f"see {log_dir}/egemaps.JOB.log")
    scp = merge_jobs(args.data, args.out, nj, args.sample_rate, store_root)
    shutil.rmtree(slurm_todo_dir(args.out), ignore_errors=True)  # in the store now; not a stage input
    return scp


def run_single(args) -> Path:
    """One data dir: a --job part, the --merge step, the Slurm array or the local path."""
    args.data, args.out = args.data[0], args.out[0]
    if args.job is not None:
        return extract_job(args.data, args.out, args.nj, args.job, args.sample_rate, args.force, args.store)
    if args.merge:
        return merge_jobs(args.data, args.out, args.nj, args.sample_rate, args.store)
    if args.backend == "slurm" and args.nj > 1:
        return run_slurm(args)
    if args.nj == 1:
        return extract_datadir(args.data, args.out, args.sample_rate, args.force, args.store)
    return extract_parallel(args.data, args.out, args.nj, args.sample_rate, args.force, store_root=args.store)


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
                                 "run --job/--merge/slurm once per data dir (they share the store)")
            for scp in extract_many(list(zip(args.data, args.out)), args.nj, args.sample_rate, args.force,
                                    store_root=args.store):
                print(scp)
            return 0
        scp = run_single(args)
    except (EgemapsError, AudioError, DataDirError, FeatureStoreError, ValueError) as e:
        logging.getLogger("sertk").error("extract-egemaps: %s", e)
        return 1
    print(scp)
    return 0


if __name__ == "__main__":
    sys.exit(main())
