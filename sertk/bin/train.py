"""Train one model config on every split of a recipe's protocols (stages 3, 5, 7)."""
import sys

from sertk.tasks.runner import run


def main(argv=None) -> int:
    return run("train", argv, __doc__, "sertk.bin.train")


if __name__ == "__main__":
    sys.exit(main())
