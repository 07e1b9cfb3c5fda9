#!/usr/bin/env bash
# CREMA-D: 6 emotions, speaker-independent split; data/all is the whole corpus
# as an out-of-domain test set for cross-corpus work (sertk cross-corpus).
#   ./run.sh                                             # intended (acted) labels; SELM + baseline
#   ./run.sh --protocols conf/protocols_perceived.yaml   # labels voted by listeners (audio only)
#   ./run.sh --stage 1 --stop-stage 2                    # data preparation and features only
# Stage 1 prepares the sets of both protocols files. Set CREMAD in db.sh first
# (see docs/corpora.md).
# SELM (stages 3-4, conf/selm.yaml) runs out of corpus, as in the SELM paper: trained on
# RAVDESS, IEMOCAP, TESS and MSP-Podcast (data/selm_multi_*, built by stage 1 from those recipes),
# tested on all of CREMA-D (data/selm_test), beside the classifier baseline with the same
# encoder and training set (conf/classifier_multicorpus.yaml); each SELM result carries
# extra.relative_gain_uar over it. The SELM table, with the corpora and a GPU (models
# facebook/wav2vec2-base and gpt2 from the hub):
#   (cd ../ravdess && ./run.sh --stage 1 --stop-stage 1)     # set RAVDESS in ../ravdess/db.sh first
#   (cd ../iemocap && ./run.sh --stage 1 --stop-stage 1)     # set IEMOCAP in ../iemocap/db.sh first
#   (cd ../tess && ./run.sh --stage 1 --stop-stage 1)        # set TESS in ../tess/db.sh first
#   (cd ../msp_podcast && ./run.sh --stage 1 --stop-stage 1) # set MSP_PODCAST in ../msp_podcast/db.sh first
#   ./run.sh --stage 1        # this corpus, the multi-corpus sets, eGeMAPS, classifier, SELM, report
# Results: exp/selm/selm_multicorpus/eval/selm_test/results.json (few-shot: fewshot_curve.tsv
# there), exp/classifier_multicorpus/..., all in exp/RESULTS.md. Without the sibling
# corpora, stage 1 stops and names them; run the in-corpus baseline alone with
#   ./run.sh --ser-configs conf/egemaps_lr.yaml
set -euo pipefail
cd "$(dirname "$0")"
. ./db.sh

../TEMPLATE/ser.sh \
  --corpus cremad \
  --corpus-root "${CREMAD}" \
  --prepare-cmd "\$python local/prepare.py --db '${CREMAD}' --out \$data --protocols conf/protocols.yaml conf/protocols_perceived.yaml" \
  --protocols conf/protocols.yaml \
  --ser-configs "conf/egemaps_lr.yaml conf/classifier_multicorpus.yaml@conf/protocols_selm.yaml conf/selm.yaml@conf/protocols_selm.yaml" \
  "$@"
