"""Build the model zoo (stage 0): train each zoo model on the pre-training pool and save it.

Each entry of the zoo config becomes ``<zoo>/<name>/`` (save_pretrained files,
README.md model card, zoo.json). Models whose entry, pool and training code
are unchanged are skipped; an interrupted build resumes from its checkpoints
in ``<zoo>/.work/<name>``.

  sertk build-zoo --config conf/zoo.yaml --pool data/pretrain --zoo zoo
  sertk build-zoo --config conf/zoo.yaml --pool data/pretrain --zoo zoo --only gpt2 --set models.gpt2.train.epochs=2

--jobs N trains N models at once, each in its own process on its share of the
CPU threads (small models use two cores poorly, so two at once nearly halve
the wall time); every model's training is the same as in a serial build
except for its thread count.
"""
from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

from sertk.common.config import ConfigError
from sertk.common.entry import base_parser, resolve_config
from sertk.common.logging import setup_logging


def main(argv: list[str] | None = None) -> int:
    p = base_parser(__doc__)
    p.add_argument("--pool", required=True, help="the pre-training pool's data dir (data/pretrain)")
    p.add_argument("--zoo", required=True, help="output directory of the zoo")
    p.add_argument("--only", nargs="*", default=None, help="build only these zoo models")
    p.add_argument("--force", action="store_true", help="rebuild even when up to date")
    p.add_argument("--jobs", type=int, default=1, help="models trained at once, one process each (default 1)")
    args = p.parse_args(argv)
    setup_logging()
    if not args.config:
        p.error("--config is required (e.g. egs/mini_emo/conf/zoo.yaml)")
    from sertk.zoo import build_zoo, pending_models
    try:
        cfg = resolve_config(args)
        todo = pending_models(cfg, args.pool, args.zoo, args.only, args.force)
        if args.jobs > 1 and len(todo) > 1:
            return _build_in_processes(list(sys.argv[1:] if argv is None else argv), todo, args.jobs)
        built = build_zoo(cfg, args.pool, args.zoo, args.only, args.force)
    except (ConfigError, ValueError, FileNotFoundError) as e:
        print(f"build-zoo: {args.config}: {e}", file=sys.stderr)
        return 1
    for name, meta in built.items():
        print(f"build-zoo: zoo/{name}: {meta['class']}, {meta['params']:,} parameters, {meta['train_seconds']} s, "
              f"dev {meta['dev']}", file=sys.stderr)
    return 0


def _build_in_processes(argv: list[str], names: list[str], jobs: int) -> int:
    """One ``build-zoo --only NAME`` process per model, ``jobs`` at a time; lines prefixed [NAME]."""
    base, i = [], 0
    while i < len(argv):  # the same options, less --jobs and --only
        a = argv[i]
        i += 1
        if a == "--jobs":
            i += 1
        elif a == "--only":
            while i < len(argv) and not argv[i].startswith("-"):
                i += 1
        elif not a.startswith(("--jobs=", "--only=")):
            base.append(a)
    threads = str(max(1, len(os.sched_getaffinity(0)) // jobs))
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", threads),
           "MKL_NUM_THREADS": os.environ.get("MKL_NUM_THREADS", threads)}

    def one(name: str) -> int:
        cmd = [sys.executable, "-m", "sertk.bin.build_zoo", *base, "--only", name]
        with subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
            for line in proc.stdout:
                sys.stderr.write(f"[{name}] {line}")
        return proc.returncode

    with ThreadPoolExecutor(jobs) as pool:
        codes = dict(zip(names, pool.map(one, names)))
    failed = [n for n, c in codes.items() if c != 0]
    if failed:
        print(f"build-zoo: failed: {', '.join(failed)} (lines prefixed with their names above)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
