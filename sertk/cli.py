"""``sertk`` console command: one sub-command per module in :mod:`sertk.bin`.

``sertk extract-egemaps ...`` runs ``sertk.bin.extract_egemaps.main``; the
sub-command list is read from the package, so a new stage entry point needs
no registration.
"""
from __future__ import annotations

import importlib
import pkgutil
import sys

import sertk.bin


def commands() -> dict[str, str]:
    return {m.name.replace("_", "-"): m.name for m in pkgutil.iter_modules(sertk.bin.__path__)
            if not m.name.startswith("_")}


def _summary(module_name: str) -> str:
    mod = importlib.import_module(f"sertk.bin.{module_name}")
    return (mod.__doc__ or "").strip().splitlines()[0] if mod.__doc__ else ""


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    cmds = commands()
    if not argv or argv[0] in ("-h", "--help", "help"):
        print("usage: sertk <command> [options]   (sertk <command> --help for its options)\n\ncommands:")
        for name in sorted(cmds):
            print(f"  {name:24s} {_summary(cmds[name])}")
        return 0
    name = argv[0]
    if name not in cmds:
        print(f"sertk: unknown command {name!r}; run 'sertk --help' for the list", file=sys.stderr)
        return 2
    mod = importlib.import_module(f"sertk.bin.{cmds[name]}")
    return int(mod.main(argv[1:]) or 0)


if __name__ == "__main__":
    sys.exit(main())
