#!/usr/bin/env bash
# IEMOCAP: 4 classes (excited merged into happy), leave-one-session-out (5 folds).
#   ./run.sh                               # stages 1-4, 7-8 and 11 (data, eGeMAPS, SELM + baseline,
#                                          # teacher + distilled students, report)
#   ./run.sh --stage 7 --stop-stage 8      # Wav2Small/MobileNet distillation only (conf/teacher.yaml first;
#                                          # the paper's ensemble teacher: conf/teacher_ensemble.yaml)
#   ./run.sh --stage 1 --stop-stage 2      # data preparation and features only
# SELM (stages 3-4, conf/selm.yaml) runs out of corpus, as in the SELM paper: trained on
# RAVDESS, CREMA-D, TESS and MSP-Podcast (data/selm_multi_*, built by stage 1 from those recipes),
# tested on all of IEMOCAP (data/selm_test), beside the classifier baseline with the same
# encoder and training set (conf/classifier_multicorpus.yaml); each SELM result carries
# extra.relative_gain_uar over it. The SELM table, with the corpora and a GPU (models
# facebook/wav2vec2-base and gpt2 from the hub):
#   (cd ../ravdess && ./run.sh --stage 1 --stop-stage 1)     # set RAVDESS in ../ravdess/db.sh first
#   (cd ../cremad && ./run.sh --stage 1 --stop-stage 1)      # set CREMAD in ../cremad/db.sh first
#   (cd ../tess && ./run.sh --stage 1 --stop-stage 1)        # set TESS in ../tess/db.sh first
#   (cd ../msp_podcast && ./run.sh --stage 1 --stop-stage 1) # set MSP_PODCAST in ../msp_podcast/db.sh first
#   ./run.sh --stage 1        # this corpus, the multi-corpus sets, eGeMAPS, classifier, SELM, report
# Results: exp/selm/selm_multicorpus/eval/selm_test/results.json (few-shot: fewshot_curve.tsv
# there), exp/classifier_multicorpus/..., all in exp/RESULTS.md. Without the sibling
# corpora, stage 1 stops and names them; run the in-corpus baseline alone with
#   ./run.sh --ser-configs conf/egemaps_lr.yaml
# Set IEMOCAP in db.sh first (see docs/corpora.md).
set -euo pipefail
cd "$(dirname "$0")"
. ./db.sh

../TEMPLATE/ser.sh \
  --corpus iemocap \
  --corpus-root "${IEMOCAP}" \
  --prepare-cmd "\$python local/prepare.py --db '${IEMOCAP}' --out \$data --protocols conf/protocols.yaml" \
  --protocols conf/protocols.yaml \
  --ser-configs "conf/egemaps_lr.yaml conf/classifier_multicorpus.yaml@conf/protocols_selm.yaml conf/selm.yaml@conf/protocols_selm.yaml" \
  --distill-configs "conf/teacher.yaml conf/wav2small.yaml conf/wav2small_17k.yaml conf/mobilenetv3_large.yaml conf/mobilenetv4_small.yaml" \
  "$@"
