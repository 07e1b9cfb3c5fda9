#!/usr/bin/env bash
# Kaldi-style name for 'python -m sertk.bin.validate_data_dir'; options: utils/validate_data_dir.sh --help
exec "${PYTHON:-python3}" -m sertk.bin.validate_data_dir "$@"
