#!/usr/bin/env bash
# TESS: 7 emotions, speaker-based split (train one actress, test the other; 2 folds).
#   ./run.sh                               # stages 1-4 and 11
#   ./run.sh --stage 1 --stop-stage 2      # data preparation and features only
# Its data/all is also a training corpus of the SELM recipes (egs/ravdess, egs/cremad, egs/iemocap).
# Set TESS in db.sh first (see docs/corpora.md).
set -euo pipefail
cd "$(dirname "$0")"
. ./db.sh

../TEMPLATE/ser.sh \
  --corpus tess \
  --corpus-root "${TESS}" \
  --prepare-cmd "\$python local/prepare.py --db '${TESS}' --out \$data --protocols conf/protocols.yaml" \
  --protocols conf/protocols.yaml \
  --ser-configs "conf/egemaps_lr.yaml" \
  "$@"
