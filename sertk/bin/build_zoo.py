"""Build the model zoo (stage 0): train each zoo model on the pre-training pool and save it.

Each entry of the zoo config becomes ``<zoo>/<name>/`` (save_pretrained files,
README.md model card, zoo.json). Models whose entry, pool and training code
are unchanged are skipped; an interrupted build resumes from its checkpoints
in ``<zoo>/.work/<name>``.

  sertk build-zoo --config conf/zoo.yaml --pool data/pretrain --zoo zoo
  sertk build-zoo --config conf/zoo.yaml --pool data/pretrain --zoo zoo --only gpt2 --set models.gpt2.train.epochs=2
"""
from __future__ import annotations

import sys

from sertk.common.config import ConfigError
from sertk.common.entry import base_parser, resolve_config
from sertk.common.logging import setup_logging


def main(argv: list[str] | None = None) -> int:
    p = base_parser(__doc__)
    p.add_argument("--pool", required=True, help="the pre-training pool's data dir (data/pretrain)")
    p.add_argument("--zoo", required=True, help="output directory of the zoo")
    p.add_argument("--only", nargs="*", default=None, help="build only these zoo models")
    p.add_argument("--force", action="store_true", help="rebuild even when up to date")
    args = p.parse_args(argv)
    setup_logging()
    if not args.config:
        p.error("--config is required (e.g. egs/mini_emo/conf/zoo.yaml)")
    from sertk.zoo import build_zoo
    try:
        built = build_zoo(resolve_config(args), args.pool, args.zoo, args.only, args.force)
    except (ConfigError, ValueError, FileNotFoundError) as e:
        print(f"build-zoo: {args.config}: {e}", file=sys.stderr)
        return 1
    for name, meta in built.items():
        print(f"build-zoo: zoo/{name}: {meta['class']}, {meta['params']:,} parameters, {meta['train_seconds']} s, "
              f"dev {meta['dev']}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
