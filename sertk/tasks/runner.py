"""The loop behind ``sertk train`` and ``sertk evaluate``: one config, every split."""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from sertk.common.entry import base_parser, init_expdir, resolve_config
from sertk.common.protocol import load_protocols
from sertk.tasks import TaskContext, get_task
from sertk.train.distributed import env_info
from sertk.train.trainer import config_seed, seed_everything


def parser(doc: str) -> argparse.ArgumentParser:
    p = base_parser(doc)
    p.add_argument("--protocols", required=True, help="conf/protocols.yaml of the recipe")
    p.add_argument("--only", nargs="*", default=None, help="run only these protocols")
    p.add_argument("--data", default="data")
    p.add_argument("--dump", default="dump")
    p.add_argument("--exp", required=True, help="experiment dir of this config")
    p.add_argument("--corpus", default=None, help="(recorded by ser.sh; the protocols file is authoritative)")
    p.add_argument("--sample-rate", type=int, default=16000)
    p.add_argument("--stage", type=int, default=0, help="recipe stage number recorded in results")
    return p


def run(action: str, argv: list[str] | None, doc: str, module: str) -> int:
    args = parser(doc).parse_args(argv)
    cfg = resolve_config(args)
    if "task" not in cfg:
        raise SystemExit(f"{args.config}: config needs a 'task' key (one of the sertk.tasks names)")
    task = get_task(cfg["task"])
    exp = Path(args.exp)
    if env_info().is_main:  # under torchrun only rank 0 writes the experiment files
        logger = init_expdir(exp, cfg, argv, module)
    else:
        logger = logging.getLogger(module)
    name = Path(args.config).stem if args.config else cfg["task"]
    # a config may restrict itself to some protocols (e.g. costly models on mini_emo)
    for split in load_protocols(args.protocols, args.only or cfg.get("protocols")):
        ctx = TaskContext(data=Path(args.data), dump=Path(args.dump), expdir=exp / split.tag, name=name,
                          stage=args.stage, sample_rate=args.sample_rate)
        logger.info("%s %s on %s (train=%s dev=%s test=%s)", action, name, split.tag, split.train,
                    split.dev, ",".join(split.tests))
        # every task builds its model on the global RNG: seeded here, the same config and seed
        # give the same model whatever ran before it in this process
        seed_everything(config_seed(cfg.get("train")))
        getattr(task, action)(cfg, split, ctx)
    return 0
