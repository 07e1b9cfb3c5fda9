#!/usr/bin/env bash
# EmoDB: 7 emotions, 10 speakers. Protocols (conf/protocols.yaml): loso (leave-one-speaker-out,
# the literature's), spk5 (speaker pairs, a dev pair: every method) and spk5_4cl (4 classes).
#   ./run.sh                                   # stages 1-6 and 9-11 with hub checkpoints
#   ./run.sh --zoo ../mini_emo/zoo             # offline on CPU: the mini_emo zoo stands in for them
#   ./run.sh --stage 1 --stop-stage 2          # data preparation and features only
# Set EMODB in db.sh first (see docs/corpora.md). Distillation (stages 7-8) needs A/V/D labels,
# which EmoDB does not have: no distill configs.
set -euo pipefail
cd "$(dirname "$0")"
. ./db.sh

echo "$(date '+%Y-%m-%dT%H:%M:%S') (run.sh) stages 7-8 skipped: distillation needs A/V/D labels, which EmoDB does not have" >&2
../TEMPLATE/ser.sh \
  --corpus emodb \
  --corpus-root "${EMODB}" \
  --prepare-cmd "\$python local/prepare.py --db '${EMODB}' --out \$data --protocols conf/protocols.yaml" \
  --protocols conf/protocols.yaml \
  --config-jobs 2 \
  --ser-configs "conf/classifier.yaml conf/egemaps_lr.yaml conf/probe_whisper.yaml conf/selm.yaml" \
  --icl-configs "conf/icl.yaml" \
  --zsfuse-configs "conf/zsfuse.yaml" \
  --token-configs "conf/tokens_alm.yaml" \
  "$@"
