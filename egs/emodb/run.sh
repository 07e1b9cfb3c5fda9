#!/usr/bin/env bash
# EmoDB: 7 emotions, leave-one-speaker-out (10 folds).
#   ./run.sh                               # stages 1-4 and 11
#   ./run.sh --stage 1 --stop-stage 2      # data preparation and features only
# Set EMODB in db.sh first (see docs/corpora.md).
set -euo pipefail
cd "$(dirname "$0")"
. ./db.sh

../TEMPLATE/ser.sh \
  --corpus emodb \
  --corpus-root "${EMODB}" \
  --prepare-cmd "\$python local/prepare.py --db '${EMODB}' --out \$data --protocols conf/protocols.yaml" \
  --protocols conf/protocols.yaml \
  --ser-configs "conf/egemaps_lr.yaml" \
  "$@"
