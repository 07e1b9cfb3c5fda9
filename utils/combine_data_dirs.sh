#!/usr/bin/env bash
# Kaldi-style name for 'python -m sertk.bin.combine_data_dirs'; options: utils/combine_data_dirs.sh --help
exec "${PYTHON:-python3}" -m sertk.bin.combine_data_dirs "$@"
