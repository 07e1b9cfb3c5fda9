#!/usr/bin/env bash
# MSP-Podcast: official partitions; categorical (8 classes) and dimensional (A/V/D) protocols.
#   ./run.sh                                         # Test1 and Test2
#   ./run.sh --protocols conf/protocols_test3.yaml   # Test3 (releases that label it)
#   ./run.sh --stage 1 --stop-stage 2 --nj 16        # data and features only, 16 parts
#   ./run.sh --stage 7 --stop-stage 8                # teacher + distilled students (Wav2Small, MobileNets)
# Distillation (stages 7-8) runs on the dimensional protocol of conf/protocols.yaml only (the
# configs' protocols: key; their entries name conf/protocols.yaml, so a Test3 run reuses them).
# The paper's ensemble teacher: conf/teacher_ensemble.yaml. Its data/all is also a training
# corpus of the SELM recipes (egs/ravdess, egs/cremad, egs/iemocap).
# Set MSP_PODCAST in db.sh first (see docs/corpora.md).
set -euo pipefail
cd "$(dirname "$0")"
. ./db.sh

../TEMPLATE/ser.sh \
  --corpus msp_podcast \
  --corpus-root "${MSP_PODCAST}" \
  --prepare-cmd "\$python local/prepare.py --db '${MSP_PODCAST}' --out \$data --protocols conf/protocols.yaml --optional-protocols conf/protocols_test3.yaml" \
  --protocols conf/protocols.yaml \
  --ser-configs "conf/egemaps_lr.yaml" \
  --distill-configs "conf/teacher.yaml@conf/protocols.yaml conf/wav2small.yaml@conf/protocols.yaml conf/wav2small_17k.yaml@conf/protocols.yaml conf/mobilenetv3_large.yaml@conf/protocols.yaml conf/mobilenetv4_small.yaml@conf/protocols.yaml" \
  "$@"
