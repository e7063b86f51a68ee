#!/usr/bin/env bash
# Prompt Guard on CUDA: the gpu-marked test, then adapter throughput at several batch sizes.
#
# Run from the repository root on a GPU host:   bash scripts/gpu/prompt_guard_bench.sh
# Needs python3 with torch (CUDA), transformers and tokenizers; pytest for the test step.
# Prints the benchmark's JSON on stdout (also saved to $WORK/prompt_guard.json).
#   SHAPES (default "22m 86m"), BATCH_SIZES (1,8,16,32,64), DTYPES (float32,bfloat16), PY, WORK
set -euo pipefail
cd "$(dirname "$0")/../.."
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD"
PY=${PY:-python3}
WORK=${WORK:-${OUT:-/tmp/pf-pg-bench}}
mkdir -p "$WORK"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >&2 || true

if "$PY" -c "import pytest" 2>/dev/null; then
  # -c /dev/null: the project's pytest config wants plugins (pytest-asyncio) a bare GPU image lacks.
  "$PY" -m pytest -c /dev/null --rootdir . -p no:cacheprovider -q -rs -m gpu tests/test_prompt_guard.py >&2
fi

for shape in ${SHAPES:-22m 86m}; do
  "$PY" scripts/gpu/bench_prompt_guard.py --shape "$shape" --device cuda \
    --batch-sizes "${BATCH_SIZES:-1,8,16,32,64}" --dtypes "${DTYPES:-float32,bfloat16}" \
    | tee "$WORK/prompt_guard_$shape.json"
done
