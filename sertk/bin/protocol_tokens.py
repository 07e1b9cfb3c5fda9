"""Concept tokens for every protocol split: thresholds fit on its train set only.

Writes OUT/<protocol>[/foldK]/thresholds.json and OUT/<protocol>[/foldK]/<set>/utt2tokens
for the split's train, dev and test sets, so stage 10 (and SELM prompts) read
tokens whose thresholds never saw the test data.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sertk.common.protocol import load_protocols
from sertk.features.concept_tokens import fit_on_datadir, level_names, tokenize_datadir, write_utt2tokens


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="sertk protocol-tokens", description=__doc__.splitlines()[0])
    p.add_argument("--protocols", required=True)
    p.add_argument("--data", default="data")
    p.add_argument("--feats", default="dump/egemaps", help="dir holding <set>/feats.scp stores")
    p.add_argument("--out", default="dump/tokens")
    p.add_argument("--scope", default="global", choices=["global", "speaker"])
    p.add_argument("--levels", type=int, default=3)
    args = p.parse_args(argv)
    data, feats, out = Path(args.data), Path(args.feats), Path(args.out)
    for split in load_protocols(args.protocols):
        tok = fit_on_datadir(data / split.train, feats / split.train, scope=args.scope,
                             levels=level_names(args.levels))
        tok.save(out / split.tag / "thresholds.json")
        for s in dict.fromkeys([split.train, *([split.dev] if split.dev else []), *split.tests]):
            write_utt2tokens(out / split.tag / s / "utt2tokens", tokenize_datadir(tok, data / s, feats / s))
        print(f"concept tokens: {split.tag}: thresholds from {split.train}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
