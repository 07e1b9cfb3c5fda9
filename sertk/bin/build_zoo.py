"""Build the model zoo (stage 0): train each zoo model on the pre-training pool and save it.

Each entry of the zoo config becomes ``<zoo>/<name>/`` (save_pretrained files,
README.md model card, zoo.json). Models whose entry, pool and training code
are unchanged are skipped; an interrupted build resumes from its checkpoints
in ``<zoo>/.work/<name>``.

  sertk build-zoo --config conf/zoo.yaml --pool data/pretrain --zoo zoo
  sertk build-zoo --config conf/zoo.yaml --pool data/pretrain --zoo zoo --only gpt2 --set models.gpt2.train.epochs=2

--for-configs CONFIG... builds the zoo models those recipe configs name
(``zoo/<name>`` values) and what they start from; --list prints the names a
build would consider and exits (ser.sh's stage 0 uses both).

--jobs N trains N models at once, each in its own process (small models use
two cores poorly, so two at once nearly halve the wall time); a model that
starts from another (the ALM's audio tower from zoo/whisper_tiny_en) waits
for it. Each process runs on --threads threads, as a serial build does, so
every model's weights are the same whatever --jobs is.
"""
from __future__ import annotations

import subprocess
import sys
import threading
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
    p.add_argument("--for-configs", nargs="*", default=None, metavar="CONFIG",
                   help="build the zoo models these recipe configs name (and what those start from)")
    p.add_argument("--list", action="store_true", help="print the names of the models a build would consider, exit")
    args = p.parse_args(argv)
    setup_logging()
    if not args.config:
        p.error("--config is required (e.g. egs/mini_emo/conf/zoo.yaml)")
    from sertk.zoo import build_order, build_zoo, models_named_in, pending_models, requirements
    try:
        cfg = resolve_config(args)
        only = args.only
        if args.for_configs is not None:
            only = sorted(set(only or []) | set(models_named_in(args.for_configs, cfg, args.zoo)))
            if not only:
                if args.list:
                    return 0
                print("build-zoo: the configs name no zoo model: nothing to build", file=sys.stderr)
                return 0
        if args.list:
            print(" ".join(build_order(cfg, only)))
            return 0
        todo = pending_models(cfg, args.pool, args.zoo, only, args.force)
        if args.jobs > 1 and len(todo) > 1:
            needs = {n: [r for r in requirements(cfg, n) if r in todo] for n in todo}
            return _build_in_processes(list(sys.argv[1:] if argv is None else argv), todo, needs, args.jobs)
        built = build_zoo(cfg, args.pool, args.zoo, only, args.force)
        built = build_zoo(cfg, args.pool, args.zoo, args.only, args.force)
    except (ConfigError, ValueError, FileNotFoundError) as e:
        print(f"build-zoo: {args.config}: {e}", file=sys.stderr)
        return 1
    for name, meta in built.items():
        print(f"build-zoo: zoo/{name}: {meta['class']}, {meta['params']:,} parameters, {meta['train_seconds']} s, "
              f"dev {meta['dev']}", file=sys.stderr)
    return 0


def _build_in_processes(argv: list[str], names: list[str], needs: dict[str, list[str]], jobs: int) -> int:
    """One ``build-zoo --only NAME`` process per model (on the same --threads), ``jobs`` at a time, each
    started after the models it starts from (``needs``; ``names`` is in build order, so they were started
    first); lines prefixed [NAME]."""
    base, i = [], 0
    while i < len(argv):  # the same options, less --jobs, --only and --for-configs
        a = argv[i]
        i += 1
        if a == "--jobs":
            i += 1
        elif a in ("--only", "--for-configs"):
            while i < len(argv) and not argv[i].startswith("-"):
                i += 1
        elif not a.startswith(("--jobs=", "--only=", "--for-configs=")):
            base.append(a)
    finished = {n: threading.Event() for n in names}
    codes: dict[str, int] = {}

    def one(name: str) -> int:
        for need in needs[name]:
            finished[need].wait()
        if any(codes.get(n) for n in needs[name]):
            sys.stderr.write(f"[{name}] not built: {', '.join(needs[name])} failed\n")
            codes[name] = 1
            finished[name].set()
            return 1
        cmd = [sys.executable, "-m", "sertk.bin.build_zoo", *base, "--only", name]
        with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
            for line in proc.stdout:
                sys.stderr.write(f"[{name}] {line}")
        codes[name] = proc.returncode
        finished[name].set()
        return proc.returncode

    with ThreadPoolExecutor(jobs) as pool:  # FIFO in build order: a model waits only on ones already started
        list(pool.map(one, names))
    failed = [n for n, c in codes.items() if c != 0]
    if failed:
        print(f"build-zoo: failed: {', '.join(failed)} (lines prefixed with their names above)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
