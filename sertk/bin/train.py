"""Train one model config on every split of a recipe's protocols (stages 3, 5, 7).

A split resumes only a run with the same run digest (config, data, code);
any other run in its dir, or every run with --fresh, is moved aside to
<dir>.old-<n> and training starts from scratch (sertk.tasks.runner).
It runs on --threads CPU threads (default 1), part of the run digest: a model
trained on another count is another run.
"""
import sys

from sertk.tasks.runner import run


def main(argv=None) -> int:
    return run("train", argv, __doc__, "sertk.bin.train")


if __name__ == "__main__":
    sys.exit(main())
