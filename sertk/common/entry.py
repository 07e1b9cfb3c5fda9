"""Shared plumbing for stage entry points: options, configs, experiment dirs.

Every experiment directory gets ``run.sh`` (re-runs exactly the command that
made it) and ``config.yaml`` (the resolved config after overrides), so a
result can always be traced back to what produced it. Every entry point runs
on the CPU threads its ``--threads`` names (default 1, sertk.common.threads),
set when its options are parsed.
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
from sertk.common.threads import DEFAULT as DEFAULT_THREADS, set_threads, thread_count


class EntryParser(argparse.ArgumentParser):
    """An entry point's options; parsing them sets the process's thread count (``--threads``), so no
    code path runs on a count other than the one the command line (and so run.sh) records."""

    def parse_known_args(self, args=None, namespace=None):
        ns, rest = super().parse_known_args(args, namespace)
        set_threads(ns.threads)
        return ns, rest


def base_parser(description: str | None) -> argparse.ArgumentParser:
    p = EntryParser(description=(description or "").strip().splitlines()[0] if description else None,
                    formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--config", help="YAML config file")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config entry, e.g. --set train.lr=1e-4 (repeatable)")
    p.add_argument("--threads", type=thread_count, default=DEFAULT_THREADS, metavar="N",
                   help="CPU threads this job computes with, whatever else runs (a recipe's --job-threads); "
                        "recorded in results.json and the run digest: figures can differ in the last bits "
                        "between thread counts")
    return p


def resolve_config(args: argparse.Namespace) -> dict:
    return load_config(args.config, args.overrides)


def command_line(argv: list[str] | None, module: str) -> str:
    """The shell command that reproduces this invocation from the current directory."""
    args = sys.argv[1:] if argv is None else argv
    return f"{shlex.quote(sys.executable)} -m {module} " + " ".join(shlex.quote(a) for a in args)


STEP_ORDER = ("train", "evaluate")


def _write_run_sh(expdir: Path) -> None:
    """run.sh re-runs every recorded step (run_<step>.sh) in pipeline order."""
    steps = sorted(p.stem[len("run_"):] for p in expdir.glob("run_*.sh"))
    steps.sort(key=lambda s: (STEP_ORDER.index(s) if s in STEP_ORDER else len(STEP_ORDER), s))
    body = "".join(f'bash "$here/run_{s}.sh" "$@"\n' for s in steps)
    write_text_atomic(expdir / "run.sh", "#!/usr/bin/env bash\n"
                      "# Re-runs the commands that produced this experiment directory, in order.\n"
                      "set -e\nhere=$(cd \"$(dirname \"$0\")\" && pwd)\n" + body)
    os.chmod(expdir / "run.sh", 0o755)


def init_expdir(expdir: str | Path, cfg: dict, argv: list[str] | None, module: str):
    """Record how ``expdir`` is made; return a logger that also writes to its log dir.

    ``run_<step>.sh`` re-runs exactly this command (``run.sh`` runs all steps);
    ``config.yaml`` is the resolved config. A later step with a different
    resolved config (say, other evaluation overrides) writes
    ``config_<step>.yaml`` instead of overwriting the training config.
    """
    expdir = Path(expdir)
    expdir.mkdir(parents=True, exist_ok=True)
    step = module.rsplit(".", 1)[-1]
    script = (
        "#!/usr/bin/env bash\n"
        f"# Re-runs the '{step}' command of this experiment directory.\n"
        f"cd {shlex.quote(os.getcwd())}\n"
        f"{command_line(argv, module)} \"$@\"\n"
    )
    write_text_atomic(expdir / f"run_{step}.sh", script)
    os.chmod(expdir / f"run_{step}.sh", 0o755)
    _write_run_sh(expdir)
    resolved = dump_yaml(cfg)
    cfg_file = expdir / "config.yaml"
    if cfg_file.exists() and step != "train" and cfg_file.read_text() != resolved:
        cfg_file = expdir / f"config_{step}.yaml"
    write_text_atomic(cfg_file, resolved)
    logger = setup_logging(expdir / "log" / f"{step}.log")
    if cfg_file.name != "config.yaml":
        logger.warning("%s: resolved config differs from config.yaml; saved as %s", step, cfg_file.name)
    return logger
