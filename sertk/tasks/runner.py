"""The loop behind ``sertk train`` and ``sertk evaluate``: one config, every split.

Each split trains or evaluates under its run digest (``sertk.tasks.run_digest``:
resume, retrain or move aside), with the global RNG seeded from the config.
``--split-jobs N`` runs the splits (protocols, folds) N at a time, one process
each (``--split TAG`` on the same command, each on the same ``--threads``):
every split computes what it computes alone, so no figure changes, and a
config with several protocols or folds uses several cores.

Repeated seeds (``seeds: [0, 1, 2]`` in a config, or ``--seeds 0,1,2``, a
recipe's ``--seeds``) train each split once per seed, ``train.seed`` set to
it, into ``<split>/seed<N>/``: each seed has its own run digest (the seed is
part of the config it hashes) and every result records its ``seed``.
"""
from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from sertk.common import stand_ins
from sertk.common.entry import base_parser, init_expdir, resolve_config
from sertk.common.fileio import hash_obj, move_aside
from sertk.common.logging import setup_logging
from sertk.common.protocol import load_protocols
from sertk.eval.results import run_seed
from sertk.tasks import TaskContext, get_task
from sertk.tasks.run_digest import NOT_THE_MODEL, RUN_FILE, check_trained, prepare_run, run_parts, write_run
from sertk.train.distributed import env_info
from sertk.train.trainer import config_seed, run_digest, seed_everything



def parser(doc: str, action: str = "train") -> argparse.ArgumentParser:
    p = base_parser(doc)
    p.add_argument("--protocols", required=True, help="conf/protocols.yaml of the recipe")
    p.add_argument("--only", nargs="*", default=None, help="run only these protocols")
    p.add_argument("--data", default="data")
    p.add_argument("--dump", default="dump")
    p.add_argument("--exp", required=True, help="experiment dir of this config")
    p.add_argument("--corpus", default=None, help="(recorded by ser.sh; the protocols file is authoritative)")
    p.add_argument("--sample-rate", type=int, default=16000)
    p.add_argument("--stage", type=int, default=0, help="recipe stage number recorded in results")
    p.add_argument("--split", default=None, metavar="TAG", help="run only this split (protocol or protocol/foldK)")
    p.add_argument("--split-jobs", type=int, default=1, metavar="N",
                   help="splits run at once, one process each (default 1); changes no figure")
    p.add_argument("--seeds", default=None, metavar="S,S,...",
                   help="train (evaluate) each split once per seed, into <split>/seed<N>/ (overrides the "
                        "config's seeds:); a config without a train: block runs once")
    if action == "train":
        p.add_argument("--fresh", action="store_true",
                       help="train from scratch: move each split's experiment dir aside (<dir>.old-N) first")
    return p


def select_splits(path: str, restrict: list[str] | None, only: list[str] | None, where: str, log) -> list:
    """The splits of ``path`` that a config's ``protocols:`` and ``--only`` allow; unknown names are errors."""
    splits = load_protocols(path)
    names = list(dict.fromkeys(s.protocol for s in splits))
    for what, wanted in ((f"{where}: protocols", restrict), ("--only", only)):
        if wanted is None:
            continue
        if not isinstance(wanted, list) or not all(isinstance(p, str) for p in wanted):
            raise SystemExit(f"{what} must be a list of protocol names")
        unknown = [p for p in wanted if p not in names]
        if unknown:
            raise SystemExit(f"{what} names {unknown}, which {path} does not define (it has: {', '.join(names)})")
    keep = [n for n in names if (restrict is None or n in restrict) and (only is None or n in only)]
    for n in names:
        if n not in keep:
            why = "the config's 'protocols:'" if restrict is not None and n not in restrict else "--only"
            log.info("protocol %s skipped: not in %s", n, why)
    return [s for s in splits if s.protocol in keep]


SEEDS_KEY = "seeds"  # the runner's config key, like protocols: (the task never sees it)


def parse_seeds(value, what: str) -> list[int]:
    """Seeds from ``0,1,2`` (a command line) or a YAML list; distinct non-negative integers."""
    items = [x.strip() for x in value.split(",")] if isinstance(value, str) else value
    if not isinstance(items, list) or not items:
        raise SystemExit(f"{what} must be a non-empty list of seeds, e.g. [0, 1, 2] or 0,1,2; got {value!r}")
    seeds = []
    for x in items:
        try:
            seed = int(x)
        except (TypeError, ValueError):
            seed = -1
        if isinstance(x, bool) or isinstance(x, float) or seed < 0 or str(seed) != str(x).strip():
            raise SystemExit(f"{what}: {x!r} is not a non-negative integer seed")
        seeds.append(seed)
    if len(set(seeds)) != len(seeds):
        raise SystemExit(f"{what}: seed(s) {sorted({s for s in seeds if seeds.count(s) > 1})} repeated")
    return seeds


def run_seeds(cfg: dict, cli: str | None, where: str, log) -> list[int] | None:
    """The seeds every split runs with (``--seeds`` over the config's ``seeds:``), or None: once, as
    configured, in ``<split>/``. A config with no ``train:`` block has no seed to vary: naming seeds in
    it is an error; ``--seeds`` (a whole recipe's) leaves it running once."""
    if cli is None and cfg.get(SEEDS_KEY) is None:
        return None
    what = "--seeds" if cli is not None else f"{where}: {SEEDS_KEY}"
    seeds = parse_seeds(cli if cli is not None else cfg[SEEDS_KEY], what)
    if not isinstance(cfg.get("train"), dict):
        if cli is None:
            raise SystemExit(f"{what}: this {cfg.get('task')} config has no train: block, so no seed to vary")
        log.info("--seeds %s: %s has no train: block (nothing seeded to train); it runs once", cli, where)
        return None
    return seeds


def with_seed(cfg: dict, seed: int | None) -> dict:
    """The config a seed's run trains with: ``train.seed`` set to it."""
    return cfg if seed is None else {**cfg, "train": {**cfg["train"], "seed": int(seed)}}


def seed_dir(split_dir: Path, seed: int | None) -> Path:
    return split_dir if seed is None else split_dir / f"seed{seed}"


def switch_layout(split_dir: Path, seeds: list[int] | None, log) -> None:
    """Before training: a split dir holding a run of the other layout (one unseeded run in ``<split>/``
    against ``<split>/seed<N>/`` runs) is moved aside whole (kept), so no report mixes the two."""
    if not split_dir.is_dir():
        return
    other = (split_dir / RUN_FILE).is_file() if seeds else any(split_dir.glob(f"seed*/{RUN_FILE}"))
    if other:
        dest = move_aside(split_dir)
        log.warning("%s: moved aside to %s (kept): it holds %s, and this run trains %s", split_dir, dest,
                    "an unseeded run" if seeds else "runs of repeated seeds",
                    f"seeds {seeds} into seed<N>/" if seeds else "once, in the split dir")


def check_seeded(expdir: Path, seed: int) -> None:
    """Evaluation of a seed that was not trained (the split was trained without --seeds, or other seeds)."""
    if not (expdir / RUN_FILE).is_file():
        raise SystemExit(f"{expdir}: nothing trained with seed {seed} (no {RUN_FILE}); train with the same "
                         "seeds first (the recipe's training stage, the same --seeds)")


def missing_sets(split, data: Path) -> list[str]:
    """Data dirs a split names that do not exist (stage 1 makes them)."""
    return [str(data / s) for s in (split.train, split.dev, *split.tests) if s and not (data / s).is_dir()]


def run(action: str, argv: list[str] | None, doc: str, module: str) -> int:
    args = parser(doc, action).parse_args(argv)
    cfg = resolve_config(args)
    try:  # offline runs (--zoo): hub names become their zoo stand-ins before anything is recorded or loaded
        cfg = stand_ins.apply_from_env(cfg, args.config or "config")
    except stand_ins.StandInError as e:
        raise SystemExit(str(e)) from e
    if "task" not in cfg:
        raise SystemExit(f"{args.config}: config needs a 'task' key (one of the sertk.tasks names)")
    task = get_task(cfg["task"])
    exp = Path(args.exp)
    if env_info().is_main and not os.environ.get(SPLIT_CHILD):  # only rank 0 of the parent writes the records
        logger = init_expdir(exp, cfg, argv, module)
    else:
        logger = setup_logging(exp / "log" / f"{module.rsplit('.', 1)[-1]}.log") if os.environ.get(SPLIT_CHILD) \
            else logging.getLogger(module)
    for line in stand_ins.describe(stand_ins.applied()):
        logger.info("%s", line)
    name = Path(args.config).stem if args.config else cfg["task"]
    # a config may restrict itself to some protocols (e.g. distillation to the dimensional one);
    # the key is the runner's: the task never sees it
    restrict = cfg.get("protocols")
    task_cfg = {k: v for k, v in cfg.items() if k not in ("protocols", SEEDS_KEY)}
    seeds = run_seeds(cfg, args.seeds, args.config or "config", logger)
    splits = select_splits(args.protocols, restrict, args.only or None, args.config or "config", logger)
    if args.split:
        if args.split not in {s.tag for s in splits}:
            raise SystemExit(f"--split {args.split}: no such split; {args.config}'s are "
                             f"{', '.join(s.tag for s in splits)}")
        splits = [s for s in splits if s.tag == args.split]
    for split in splits:
        missing = missing_sets(split, Path(args.data))
        if missing:
            raise SystemExit(f"{split.tag}: data dir(s) {', '.join(missing)} missing; run stage 1 first "
                             f"(./run.sh --stage 1 --stop-stage 1), which prepares them")
    if action == "train" and env_info().is_main and not os.environ.get(SPLIT_CHILD):
        for split in splits:
            switch_layout(exp / split.tag, seeds, logger)
    units = [(s.tag, seed) for s in splits for seed in seeds or [None]]
    if args.split_jobs > 1 and len(units) > 1 and env_info().world_size == 1:
        return run_splits_in_processes(list(sys.argv[1:] if argv is None else argv), module, units,
                                       args.split_jobs)
    for split in splits:
        for seed in seeds or [None]:
            ctx = TaskContext(data=Path(args.data), dump=Path(args.dump), expdir=seed_dir(exp / split.tag, seed),
                              name=name, stage=args.stage, sample_rate=args.sample_rate)
            logger.info("%s %s on %s%s (train=%s dev=%s test=%s)", action, name, split.tag,
                        "" if seed is None else f", seed {seed}", split.train, split.dev, ",".join(split.tests))
            if action == "evaluate" and seed is not None:
                check_seeded(ctx.expdir, seed)
            run_split(action, task, with_seed(task_cfg, seed), split, ctx, getattr(args, "fresh", False), logger)
    return 0


SPLIT_CHILD = "SERTK_SPLIT_CHILD"  # set in the processes run_splits_in_processes starts


def run_splits_in_processes(argv: list[str], module: str, units: list[tuple[str, int | None]], jobs: int) -> int:
    """The same command once per split and seed (``--split TAG [--seeds N]``), ``jobs`` at a time; lines
    prefixed [TAG] or [TAG/seedN]. The children append to this run's log and leave its records
    (run_<step>.sh, config.yaml) to it."""
    base, i = [], 0
    while i < len(argv):  # the same options, less --split-jobs, --split and --seeds
        a = argv[i]
        i += 1
        if a in ("--split-jobs", "--split", "--seeds"):
            i += 1
        elif not a.startswith(("--split-jobs=", "--split=", "--seeds=")):
            base.append(a)
    env = {**os.environ, SPLIT_CHILD: "1"}
    tags = [tag if seed is None else f"{tag}/seed{seed}" for tag, seed in units]

    def one(unit: tuple[str, int | None]) -> int:
        tag, seed = unit
        cmd = [sys.executable, "-m", module, *base, "--split", tag, *(["--seeds", str(seed)] if seed is not None
                                                                      else [])]
        tag = tag if seed is None else f"{tag}/seed{seed}"
        with subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
            for line in proc.stdout:
                sys.stderr.write(f"[{tag}] {line}")
        return proc.returncode

    with ThreadPoolExecutor(jobs) as pool:
        codes = dict(zip(tags, pool.map(one, units)))
    failed = [t for t, c in codes.items() if c != 0]
    if failed:
        print(f"{module}: split(s) {', '.join(failed)} failed (lines prefixed with their tags above)", file=sys.stderr)
        return 1
    return 0


def run_split(action: str, task, cfg: dict, split, ctx: TaskContext, fresh: bool, log) -> None:
    """Train or evaluate one split under its run digest (see the module docstring)."""
    main = env_info().is_main
    parts = run_parts(cfg, split, ctx, cfg["task"])
    if action == "train":
        if main:
            prepare_run(ctx.expdir, parts, fresh, log)
        digest = hash_obj(parts)
    else:
        check_trained(ctx.expdir, parts, log)
        # what evaluation trains (SELM's few-shot runs) depends on the evaluation settings too
        digest = hash_obj({"run": hash_obj(parts), "evaluation": {k: cfg.get(k) for k in NOT_THE_MODEL}})
    # every task builds its model on the global RNG: seeded here, the same config and seed
    # give the same model whatever ran before it in this process
    seed = config_seed(cfg.get("train"))
    seed_everything(seed)
    # trainers record the digest in their checkpoints and resume only on a match; results record the seed
    with run_digest(digest), run_seed(seed if isinstance(cfg.get("train"), dict) else None):
        getattr(task, action)(cfg, split, ctx)
    if action == "train" and main:
        write_run(ctx.expdir, parts, "finished")


