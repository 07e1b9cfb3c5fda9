#!/usr/bin/env bash
# IEMOCAP: 4 classes (excited merged into happy), leave-one-session-out (5 folds).
#   ./run.sh                               # stages 1-4 and 11
#   ./run.sh --stage 1 --stop-stage 2      # data preparation and features only
# Set IEMOCAP in db.sh first (see docs/corpora.md).
set -euo pipefail
cd "$(dirname "$0")"
. ./db.sh

../TEMPLATE/ser.sh \
  --corpus iemocap \
  --prepare-cmd "python3 local/prepare.py --db '${IEMOCAP}' --out data --protocols conf/protocols.yaml" \
  --protocols conf/protocols.yaml \
  --ser-configs "conf/egemaps_lr.yaml" \
  "$@"
