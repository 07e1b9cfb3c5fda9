#!/usr/bin/env bash
# CREMA-D: 6 emotions, speaker-independent split; data/all is the whole corpus
# as an out-of-domain test set for cross-corpus work (sertk cross-corpus).
#   ./run.sh                                             # intended (acted) labels
#   ./run.sh --protocols conf/protocols_perceived.yaml   # labels voted by listeners (audio only)
#   ./run.sh --stage 1 --stop-stage 2                    # data preparation and features only
# Stage 1 prepares the sets of both protocols files. Set CREMAD in db.sh first
# (see docs/corpora.md).
set -euo pipefail
cd "$(dirname "$0")"
. ./db.sh

../TEMPLATE/ser.sh \
  --corpus cremad \
  --prepare-cmd "python3 local/prepare.py --db '${CREMAD}' --out data --protocols conf/protocols.yaml conf/protocols_perceived.yaml" \
  --protocols conf/protocols.yaml \
  --ser-configs "conf/egemaps_lr.yaml" \
  "$@"
