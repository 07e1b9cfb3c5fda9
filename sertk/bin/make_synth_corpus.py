"""Generate a synthetic SER corpus (mini_emo): wav files and data dirs per domain and split.

--part eval (default) writes <out-data>/<domain>_<split>/ (wav.scp, utt2spk,
utt2emo, utt2avd, utt2gender, utt2domain, text, utt2caption, spk2utt) and the
audio under <out-audio>/<domain>/<speaker>/. --part pretrain writes the
pre-training pool (config key 'pretrain'; stage 0 only) to <out-data>/pretrain/
and <out-audio>/pretrain/<speaker>/. Each part has its own manifest: a second
run with the same config and generator code does nothing; --force regenerates.

  sertk make-synth-corpus --config conf/synth.yaml --out-audio downloads/audio --out-data data --nj 2
  sertk make-synth-corpus --config conf/synth.yaml --out-audio downloads/audio --out-data data --part pretrain
"""
from __future__ import annotations

import sys

from sertk.common.config import ConfigError
from sertk.common.entry import base_parser, resolve_config
from sertk.common.logging import setup_logging
from sertk.data.synth import PARTS, generate_corpus


def main(argv: list[str] | None = None) -> int:
    p = base_parser(__doc__)
    p.add_argument("--out-audio", required=True, help="directory for the wav files")
    p.add_argument("--out-data", required=True, help="directory for the data dirs")
    p.add_argument("--nj", type=int, default=2, help="parallel rendering processes (the result is the same for any nj)")
    p.add_argument("--force", action="store_true", help="regenerate even when the corpus is up to date")
    p.add_argument("--part", choices=sorted(PARTS), default="eval",
                   help="eval: the domain train/dev/test sets; pretrain: the pre-training pool (stage 0)")
    args = p.parse_args(argv)
    setup_logging()
    if not args.config:
        p.error("--config is required (e.g. egs/mini_emo/conf/synth.yaml)")
    if args.nj < 1:
        p.error("--nj must be at least 1")
    try:
        cfg = resolve_config(args)
        summary = generate_corpus(cfg, args.out_audio, args.out_data, nj=args.nj, force=args.force,
                                  part=args.part)
    except (ConfigError, ValueError) as e:
        print(f"make-synth-corpus: {args.config}: {e}", file=sys.stderr)
        return 1
    if not summary.get("skipped"):
        counts = ", ".join(f"{k}={v}" for k, v in summary["utterances"].items())
        print(f"make-synth-corpus: {counts}; {summary['hours'] * 60:.1f} min of audio; {summary['wall_s']}s",
              file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
