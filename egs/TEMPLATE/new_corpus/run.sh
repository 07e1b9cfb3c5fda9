#!/usr/bin/env bash
# __NAME__: your corpus, imported by sertk import-corpus (see conf/import.yaml).
#   ./run.sh --stop-stage 1        # import + validate; first run writes conf/labels.yaml and the split list
#   ./run.sh                       # data, eGeMAPS features, baseline, report
# Set __VAR__ in db.sh first. Walkthrough: docs/corpora.md ("Adding a corpus").
# \$python and \$data in --prepare-cmd are set by ser.sh from --python and --data; the
# listing of the --corpus-root folder is a stage-1 input (docs/recipes.md).
set -euo pipefail
cd "$(dirname "$0")"
. ./db.sh

../TEMPLATE/ser.sh \
  --corpus __NAME__ \
  --corpus-root "${__VAR__}" \
  --prepare-cmd "\$python -m sertk.bin.import_corpus --config conf/import.yaml --db-var __VAR__ --db '${__VAR__}' --out \$data --protocols conf/protocols.yaml" \
  --protocols conf/protocols.yaml \
  --ser-configs "conf/egemaps_lr.yaml" \
  "$@"
