"""Acoustic concept tokens of a data dir from its eGeMAPS store, thresholds fit on the training split.

  sertk concept-tokens --fit-data data/train --fit-feats dump/egemaps/train \\
      --data data/test --feats dump/egemaps/test --out dump/tokens/test [--scope speaker] [--levels 3]
  sertk concept-tokens --thresholds dump/tokens/test/thresholds.json \\
      --data data/dev --feats dump/egemaps/dev --out dump/tokens/dev

Writes OUT/utt2tokens ("utt energy: high, pitch: mid, ...") and
OUT/thresholds.json (the thresholds used, fit on --fit-data or loaded).
The feature-to-token table is in docs/concept_tokens.md.
"""
from __future__ import annotations

import argparse
import logging
import sys
from collections import Counter
from pathlib import Path

from sertk.common.logging import setup_logging
from sertk.data.datadir import DataDirError
from sertk.features.concept_tokens import (SCOPES, UNSEEN, ConceptTokenizer, TokenError, fit_on_datadir,
                                           level_names, tokenize_datadir, write_utt2tokens)
from sertk.features.store import FeatureStoreError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sertk concept-tokens", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="data dir to tokenize")
    p.add_argument("--feats", required=True, help="its eGeMAPS store (dir with feats.scp, or the scp)")
    p.add_argument("--out", required=True, help="output dir: utt2tokens, thresholds.json")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--fit-data", help="training data dir the thresholds are fit on")
    src.add_argument("--thresholds", help="thresholds.json saved by an earlier run (no fitting)")
    p.add_argument("--fit-feats", help="eGeMAPS store of --fit-data")
    p.add_argument("--scope", choices=SCOPES, default="global", help="thresholds over all speakers or per speaker")
    p.add_argument("--unseen", choices=UNSEEN, default="self",
                   help="scope speaker: a speaker absent from training uses its own utterances' quantiles "
                        "(self) or the global thresholds")
    p.add_argument("--levels", type=int, default=3, help="number of levels (2..5: low/high ... very low..very high)")
    p.add_argument("--min-speaker-utts", type=int, default=10,
                   help="scope speaker: fewer utterances than this -> global thresholds")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    log = setup_logging()
    try:
        if args.fit_data:
            if not args.fit_feats:
                raise ValueError("--fit-data needs --fit-feats (the eGeMAPS store of the training data)")
            tok = fit_on_datadir(args.fit_data, args.fit_feats, levels=level_names(args.levels), scope=args.scope,
                                 unseen=args.unseen, min_speaker_utts=args.min_speaker_utts)
            log.info("fit %s thresholds on %d utterances of %s", tok.scope, tok.num_train_utts, args.fit_data)
        else:
            tok = ConceptTokenizer.load(args.thresholds)
        tokens = tokenize_datadir(tok, args.data, args.feats)
        out = Path(args.out)
        tok.save(out / "thresholds.json")
        write_utt2tokens(out / "utt2tokens", tokens)
    except (TokenError, FeatureStoreError, DataDirError, ValueError) as e:
        logging.getLogger("sertk").error("concept-tokens: %s", e)
        return 1
    for c in tok.concepts:
        counts = Counter(t[c] for t in tokens.values())
        log.info("%-14s %s", c, ", ".join(f"{lvl} {counts.get(lvl, 0)}" for lvl in tok.levels))
    print(out / "utt2tokens")
    return 0


if __name__ == "__main__":
    sys.exit(main())
