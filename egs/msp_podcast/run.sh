#!/usr/bin/env bash
# MSP-Podcast: official partitions; categorical (8 classes) and dimensional (A/V/D) protocols.
#   ./run.sh                                         # Test1 and Test2
#   ./run.sh --protocols conf/protocols_test3.yaml   # Test3 (releases that label it)
#   ./run.sh --stage 1 --stop-stage 2 --nj 16        # data and features only, 16 parts
# Set MSP_PODCAST in db.sh first (see docs/corpora.md).
set -euo pipefail
cd "$(dirname "$0")"
. ./db.sh

../TEMPLATE/ser.sh \
  --corpus msp_podcast \
  --prepare-cmd "python3 local/prepare.py --db '${MSP_PODCAST}' --out data --protocols conf/protocols.yaml --optional-protocols conf/protocols_test3.yaml" \
  --protocols conf/protocols.yaml \
  --ser-configs "conf/egemaps_lr.yaml" \
  "$@"
