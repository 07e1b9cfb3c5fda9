#!/usr/bin/env bash
# FAU Aibo (INTERSPEECH 2009 Emotion Challenge): train Ohm, test Mont; 5-class and 2-class.
#   ./run.sh                               # stages 1-4 and 11
#   ./run.sh --stage 1 --stop-stage 2      # data preparation and features only
# Set FAU_AIBO in db.sh first (see docs/corpora.md).
set -euo pipefail
cd "$(dirname "$0")"
. ./db.sh

../TEMPLATE/ser.sh \
  --corpus fau_aibo \
  --corpus-root "${FAU_AIBO}" \
  --prepare-cmd "\$python local/prepare.py --db '${FAU_AIBO}' --out \$data --protocols conf/protocols.yaml" \
  --protocols conf/protocols.yaml \
  --ser-configs "conf/egemaps_lr.yaml" \
  "$@"
