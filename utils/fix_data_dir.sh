#!/usr/bin/env bash
# Kaldi-style fix_data_dir.sh: drop unusable utterances, sort, dedupe, rebuild spk2utt (in place,
# originals in DIR/.backup). Same options as utils/validate_data_dir.sh, which it runs with --fix.
exec "${PYTHON:-python3}" -m sertk.bin.validate_data_dir --fix "$@"
