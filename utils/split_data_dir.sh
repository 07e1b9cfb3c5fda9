#!/usr/bin/env bash
# Kaldi-style name for 'python -m sertk.bin.split_data_dir'; options: utils/split_data_dir.sh --help
exec "${PYTHON:-python3}" -m sertk.bin.split_data_dir "$@"
