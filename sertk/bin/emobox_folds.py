"""Turn EmoBox's published folds into a committed split list, to report figures on EmoBox's partitions.

  sertk emobox-folds --emobox EmoBox/data/emodb --data data/all --out conf/splits/emodb_emobox.txt

Utterances are matched by audio file name. It prints, per fold, the class
counts of its test set (warning when a class is missing), the speakers a
fold shares between train and test (EmoBox's folds are not always
speaker-independent) and the EmoBox rows this copy lacks, then the
``conf/protocols.yaml`` entry that uses the list. An existing list is never
overwritten.
"""
from __future__ import annotations

import argparse
import hashlib
import sys
from collections import Counter
from pathlib import Path

from sertk.data.corpus_prep import UTT_UNIT, write_split_list
from sertk.data.datadir import DataDir, DataDirError
from sertk.data.emobox import EmoBoxError, read_emobox_folds, shared_speakers
from sertk.data.folds import describe_fold_counts


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sertk emobox-folds", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--emobox", required=True, help="EmoBox's data/<corpus> dir (holds fold_N/*.jsonl)")
    p.add_argument("--data", required=True, help="the recipe's data dir of every utterance (data/all)")
    p.add_argument("--out", required=True, help="the split list to write (e.g. conf/splits/<corpus>_emobox.txt)")
    p.add_argument("--prefix", default="emobox_", help="set names: <prefix>fold<k>_{train,test}")
    p.add_argument("--protocol", default="emobox", help="protocol name in the printed protocols.yaml entry")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out = Path(args.out)
    if out.exists():
        print(f"sertk emobox-folds: {out} exists; not overwriting it (remove it to rewrite)", file=sys.stderr)
        return 1
    try:
        corpus = DataDir.read(args.data)
        folds = read_emobox_folds(args.emobox, corpus)
    except (EmoBoxError, DataDirError, OSError) as e:
        print(f"sertk emobox-folds: {e}", file=sys.stderr)
        return 1
    sets: dict[str, list[str]] = {}
    for k, parts in folds.folds.items():
        for part in ("train", "valid", "test"):
            if parts.get(part):
                sets[f"{args.prefix}fold{k}_{part}"] = parts[part]
    tests = [Counter(corpus.utt2emo.get(u, "<none>") for u in parts["test"]) for parts in folds.folds.values()]
    lines, warns = describe_fold_counts(tests, prefix=f"{args.prefix}fold")
    for line in lines:
        print(line)
    for w in warns:
        print(f"sertk emobox-folds: warning: {w}", file=sys.stderr)
    for k, spk in shared_speakers(folds, corpus.utt2spk).items():
        print(f"sertk emobox-folds: note: fold {k} shares {len(spk)} speaker(s) between train and test "
              f"(not speaker-independent): {' '.join(spk[:10])}{' ...' if len(spk) > 10 else ''}", file=sys.stderr)
    for name, keys in folds.unmatched.items():
        print(f"sertk emobox-folds: warning: {name}: {len(keys)} row(s) match no audio file of {args.data}, "
              f"e.g. {', '.join(keys[:5])}", file=sys.stderr)
    write_split_list(out, sets, unit=UTT_UNIT, version=1, description=[
        f"EmoBox's {len(folds.folds)} published folds of {Path(args.emobox).name}, matched to {args.data} by "
        "audio file name (sertk emobox-folds).",
        "Commit this file and pin its sha256 as lists_sha256 in conf/protocols.yaml."])
    digest = hashlib.sha256(out.read_bytes()).hexdigest()
    has_valid = all(parts.get("valid") for parts in folds.folds.values())
    print(f"\nwrote {out}; add to conf/protocols.yaml:\n  {args.protocol}:\n"
          f"    scheme: EmoBox's published folds ({len(folds.folds)})\n    lists: {out.name if out.parent.name != 'splits' else 'splits/' + out.name}\n"
          f"    lists_sha256: {digest}\n    folds:")
    for k in folds.folds:
        dev = f", dev: {args.prefix}fold{k}_valid" if has_valid else ""
        print(f"      - {{train: {args.prefix}fold{k}_train{dev}, test: [{args.prefix}fold{k}_test]}}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
