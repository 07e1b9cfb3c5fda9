"""Evaluate one trained config on every test set of every protocol split (stages 4, 6, 8-10).

A split trained under other settings than the current ones (its run_digest.json
differs) is refused, naming what changed: train it again first. It runs on
--threads CPU threads (default 1), recorded in every results.json; a model
trained on another count is evaluated with a warning.
"""
import sys

from sertk.tasks.runner import run


def main(argv=None) -> int:
    return run("evaluate", argv, __doc__, "sertk.bin.evaluate")


if __name__ == "__main__":
    sys.exit(main())
