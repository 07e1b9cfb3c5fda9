"""Check, before any stage runs, that every hub checkpoint the configs name has a stand-in in the zoo.

``ser.sh --zoo DIR`` (a recipe without a zoo of its own) runs this once over
the configs of the stages it will run, with the run's ``--set`` overrides:
it prints each substitution once, and exits 1 naming every config key whose
hub name no zoo card stands in for, so a run never trains for an hour and
then fails on a model it cannot load. The stages themselves substitute the
same way (``SERTK_ZOO``) and record it in results.json.

  python -m sertk.bin.stand_ins --zoo ../mini_emo/zoo --configs conf/selm.yaml conf/icl.yaml@conf/p.yaml
"""
from __future__ import annotations

import argparse
import sys

from sertk.common.config import ConfigError, load_config
from sertk.common.stand_ins import StandInError, describe, stand_in_table, substitute


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    p.add_argument("--zoo", required=True, help="the zoo whose cards stand in for hub checkpoints")
    p.add_argument("--configs", nargs="*", default=[], help="configs (CONFIG or CONFIG@PROTOCOLS) of the run")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = p.parse_args(argv)
    try:
        table = stand_in_table(args.zoo)
    except StandInError as e:
        print(f"stand-ins: {e}", file=sys.stderr)
        return 1
    print(f"stand-ins from {args.zoo}: " + (", ".join(f"{n} -> zoo/{s.model}" for n, s in sorted(table.items()))
                                           or "none (no zoo card lists a hub name)"))
    errors = []
    for entry in dict.fromkeys(args.configs):
        path = entry.split("@", 1)[0]
        try:
            _, done = substitute(load_config(path, args.overrides), args.zoo, path)
        except (StandInError, ConfigError) as e:
            errors.append(str(e))
            continue
        for line in describe(done):
            print(f"  {path}: {line}")
    for e in errors:
        print(f"stand-ins: {e}", file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
