"""A job's CPU thread count: its own setting, recorded, never a share of what else runs.

Float reductions split over another number of threads round differently, so a
model trained, or a figure computed, on 2 threads differs in the last bits from
the same job on 1. Every sertk entry point therefore takes ``--threads N``
(default 1; a recipe's ``--job-threads``) and runs on exactly N threads:
torch's intra-op pool, OpenMP/BLAS (numpy, scikit-learn) through threadpoolctl,
and, through the environment, any process it starts. Results record the count
(``results.json`` ``threads``), and so does the run digest (a model trained on
another count is not resumed or reused).
"""
from __future__ import annotations

import argparse
import os
import sys

DEFAULT = 1
ENV_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")  # what child processes read


def thread_count(text: str) -> int:
    """``--threads`` as an argparse type: a positive integer, or a clear error."""
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"threads must be a positive integer, got {text!r}")
    return n


def set_threads(n: int) -> None:
    """Run this process (and the processes it starts) on ``n`` CPU threads.

    torch and numpy read the environment when first imported; pools they already
    started are set directly (an entry point that never imports torch does not pay for it).
    """
    n = int(n)
    if n < 1:
        raise ValueError(f"threads must be >= 1, got {n}")
    for var in ENV_VARS:
        os.environ[var] = str(n)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(n)
    if "numpy" in sys.modules:
        from threadpoolctl import threadpool_limits

        threadpool_limits(n)  # BLAS/OpenMP pools started with the process's default


def current_threads() -> int:
    """The intra-op threads this process computes with: what results and run digests record."""
    import torch

    return torch.get_num_threads()
