#!/usr/bin/env bash
# RAVDESS speech: 8 emotions, speaker-independent 6-fold cross-validation.
#   ./run.sh                               # stages 1-4 and 11 (data, eGeMAPS, baseline, report)
#   ./run.sh --stage 1 --stop-stage 2      # data preparation and features only
#   ./run.sh --help                        # every option
# Set RAVDESS in db.sh first (see docs/corpora.md).
set -euo pipefail
cd "$(dirname "$0")"
. ./db.sh

../TEMPLATE/ser.sh \
  --corpus ravdess \
  --prepare-cmd "python3 local/prepare.py --db '${RAVDESS}' --out data --protocols conf/protocols.yaml" \
  --protocols conf/protocols.yaml \
  --ser-configs "conf/egemaps_lr.yaml" \
  "$@"
