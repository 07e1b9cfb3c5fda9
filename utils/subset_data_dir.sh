#!/usr/bin/env bash
# Kaldi-style name for 'python -m sertk.bin.subset_data_dir'; options: utils/subset_data_dir.sh --help
exec "${PYTHON:-python3}" -m sertk.bin.subset_data_dir "$@"
