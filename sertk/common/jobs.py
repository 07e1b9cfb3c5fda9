"""Data-parallel job arrays: run a command once per part, locally or on Slurm.

The command contains the placeholder ``JOB`` (1-based part index), as in
Kaldi's run.pl/slurm.pl. Each part that succeeds leaves ``.done.JOB`` in the
log dir, so a second launch re-runs only the parts that failed or never ran.
The Slurm backend submits a real ``sbatch --array`` job and waits for it.
"""
from __future__ import annotations

import os
import shlex
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from sertk.common.fileio import write_text_atomic


@dataclass
class JobArray:
    command: list[str]
    nj: int
    log_dir: Path
    name: str = "job"

    def part_command(self, job: int) -> list[str]:
        return [a.replace("JOB", str(job)) for a in self.command]

    def log_path(self, job: int) -> Path:
        return self.log_dir / f"{self.name}.{job}.log"

    def done_path(self, job: int) -> Path:
        return self.log_dir / f".done.{self.name}.{job}"

    def pending(self, redo: bool = False) -> list[int]:
        return [j for j in range(1, self.nj + 1) if redo or not self.done_path(j).exists()]

    def failed(self) -> list[int]:
        return [j for j in range(1, self.nj + 1) if not self.done_path(j).exists()]


def _run_local(jobs: JobArray, job: int) -> int:
    with open(jobs.log_path(job), "w") as log:
        log.write(f"# {shlex.join(jobs.part_command(job))}\n")
        log.flush()
        rc = subprocess.call(jobs.part_command(job), stdout=log, stderr=subprocess.STDOUT)
        log.write(f"# exit code {rc}\n")
    if rc == 0:
        jobs.done_path(job).touch()
    return rc


def run_local(jobs: JobArray, todo: list[int], max_parallel: int) -> None:
    with ThreadPoolExecutor(max_workers=max(1, max_parallel)) as pool:
        list(pool.map(lambda j: _run_local(jobs, j), todo))


def sbatch_script(jobs: JobArray, todo: list[int], slurm_opts: str = "") -> str:
    """The array script: each task runs its part and leaves its done marker."""
    lines = [
        "#!/usr/bin/env bash",
        f"#SBATCH --job-name={jobs.name}",
        f"#SBATCH --array={','.join(map(str, todo))}",
        f"#SBATCH --output={jobs.log_dir.resolve()}/{jobs.name}.%a.log",
    ]
    lines += [f"#SBATCH {opt}" for opt in shlex.split(slurm_opts)]
    cmd = " ".join(shlex.quote(a).replace("JOB", "${SLURM_ARRAY_TASK_ID}") for a in jobs.command)
    lines += [
        "set -u",
        f"cd {shlex.quote(os.getcwd())}",
        f"{cmd}",
        "rc=$?",
        f"[ $rc -eq 0 ] && touch {shlex.quote(str(jobs.log_dir.resolve()))}/.done.{jobs.name}.${{SLURM_ARRAY_TASK_ID}}",
        "exit $rc",
    ]
    return "\n".join(lines) + "\n"


def run_slurm(jobs: JobArray, todo: list[int], slurm_opts: str = "", sbatch: str = "sbatch") -> None:
    script = jobs.log_dir / f"{jobs.name}.sbatch"
    write_text_atomic(script, sbatch_script(jobs, todo, slurm_opts))
    # --wait blocks until every array task has ended; failures are read from markers.
    subprocess.call([sbatch, "--parsable", "--wait", str(script)])


def launch(command: list[str], nj: int, log_dir: str | Path, name: str = "job", backend: str = "local",
           max_parallel: int | None = None, slurm_opts: str = "", redo: bool = False) -> list[int]:
    """Run the pending parts; return the list of parts that have not succeeded."""
    if nj < 1:
        raise ValueError(f"nj must be >= 1, got {nj}")
    if not any("JOB" in a for a in command) and nj > 1:
        raise ValueError("the command must contain JOB when nj > 1, or every part would do the same work")
    jobs = JobArray(command, nj, Path(log_dir), name)
    jobs.log_dir.mkdir(parents=True, exist_ok=True)
    if redo:
        for j in range(1, nj + 1):
            jobs.done_path(j).unlink(missing_ok=True)
    todo = jobs.pending()
    if todo:
        if backend == "local":
            run_local(jobs, todo, max_parallel or nj)
        elif backend == "slurm":
            run_slurm(jobs, todo, slurm_opts)
        else:
            raise ValueError(f"unknown backend {backend!r}; use local or slurm")
    return jobs.failed()
