#!/usr/bin/env bash
# Every implemented stage of the reduced mini_emo recipe on a GPU (or --device cpu), tiny models,
# with the real recipes' model code paths; exits non-zero on any failure. See tools/gpu_smoke.py.
#   tools/gpu_smoke.sh                 # CUDA (fails at once when torch sees no GPU)
#   tools/gpu_smoke.sh --device cpu    # the same run on CPU (CI)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
exec "${PYTHON:-python3}" "$here/gpu_smoke.py" "$@"
