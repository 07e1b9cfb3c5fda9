"""Shared plumbing for stage entry points: options, configs, experiment dirs.

Every experiment directory gets ``run.sh`` (re-runs exactly the command that
made it) and ``config.yaml`` (the resolved config after overrides), so a
result can always be traced back to what produced it.
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

from sertk.common.config import dump_yaml, load_config
from sertk.common.fileio import write_text_atomic
from sertk.common.logging import setup_logging


def base_parser(description: str | None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=(description or "").strip().splitlines()[0] if description else None,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--config", help="YAML config file")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config entry, e.g. --set train.lr=1e-4 (repeatable)")
    return p


def resolve_config(args: argparse.Namespace) -> dict:
    return load_config(args.config, args.overrides)


def command_line(argv: list[str] | None, module: str) -> str:
    """The shell command that reproduces this invocation from the current directory."""
    args = sys.argv[1:] if argv is None else argv
    return f"python -m {module} " + " ".join(shlex.quote(a) for a in args)


def init_expdir(expdir: str | Path, cfg: dict, argv: list[str] | None, module: str):
    """Create ``expdir`` with run.sh, config.yaml and a log file; return a logger."""
    expdir = Path(expdir)
    expdir.mkdir(parents=True, exist_ok=True)
    script = (
        "#!/usr/bin/env bash\n"
        "# Re-runs the command that produced this experiment directory.\n"
        f"cd {shlex.quote(os.getcwd())}\n"
        f"{command_line(argv, module)} \"$@\"\n"
    )
    write_text_atomic(expdir / "run.sh", script)
    os.chmod(expdir / "run.sh", 0o755)
    write_text_atomic(expdir / "config.yaml", dump_yaml(cfg))
    return setup_logging(expdir / "log" / f"{module.rsplit('.', 1)[-1]}.log")
