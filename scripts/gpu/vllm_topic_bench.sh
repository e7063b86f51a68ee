#!/usr/bin/env bash
# Serve a tiny random-weight Llama with `vllm serve` and run VLLMTopicClassifier against it.
#
# Run from the repository root on a GPU host:   bash scripts/gpu/vllm_topic_bench.sh
# Prints one JSON line (latency p50/p90/p99, schema-valid fraction) on stdout; the server log
# goes to $WORK/vllm.log. Nothing is downloaded except vLLM itself when it must be installed.
#
# Environment (all optional):
#   VLLM        a vllm executable to use (default: `vllm` on PATH, else $VLLM_VENV/bin/vllm)
#   VLLM_VENV   where to create a venv and `pip install vllm` when none is found (/tmp/pf-vllm-venv)
#   VLLM_WHEELS a folder of wheels to install vllm from offline (pip --no-index --find-links)
#   PY          python with torch + transformers for building the model and the client (python3)
#   WORK        scratch folder (default: $OUT when set, else /tmp/pf-vllm-bench)
#   PORT N CONCURRENCY   server port (8011), prompts (50), client threads (8)
set -euo pipefail
cd "$(dirname "$0")/../.."
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD"
PY=${PY:-python3}
WORK=${WORK:-${OUT:-/tmp/pf-vllm-bench}}
PORT=${PORT:-8011}
N=${N:-50}
CONCURRENCY=${CONCURRENCY:-8}
VLLM_VENV=${VLLM_VENV:-/tmp/pf-vllm-venv}
MODEL_DIR="$WORK/tiny-llama"
mkdir -p "$WORK"

fail() { printf '{"bench": "topic_llm", "error": "%s"}\n' "$1"; exit "${2:-1}"; }

if [[ -z "${VLLM:-}" ]]; then
  if command -v vllm >/dev/null 2>&1; then VLLM=$(command -v vllm)
  elif [[ -x "$VLLM_VENV/bin/vllm" ]]; then VLLM="$VLLM_VENV/bin/vllm"
  else
    echo "installing vllm into $VLLM_VENV" >&2
    python3 -m venv "$VLLM_VENV" || fail "cannot create a venv at $VLLM_VENV"
    if [[ -n "${VLLM_WHEELS:-}" ]]; then
      "$VLLM_VENV/bin/pip" install -q --no-index --find-links "$VLLM_WHEELS" vllm >&2 || fail "offline vllm install from $VLLM_WHEELS failed" 3
    else
      "$VLLM_VENV/bin/pip" install -q vllm >&2 || fail "pip install vllm failed (no package registry reachable?)" 3
    fi
    VLLM="$VLLM_VENV/bin/vllm"
  fi
fi
echo "vllm: $VLLM ($("$VLLM" --version 2>/dev/null || echo '?'))" >&2

"$PY" scripts/gpu/tiny_models.py llama "$MODEL_DIR" >&2

"$VLLM" serve "$MODEL_DIR" --served-model-name tiny-llama --host 127.0.0.1 --port "$PORT" \
  --dtype bfloat16 --max-model-len 8192 --gpu-memory-utilization 0.30 --seed 0 \
  >"$WORK/vllm.log" 2>&1 &
SERVER=$!
trap 'kill "$SERVER" 2>/dev/null || true; wait "$SERVER" 2>/dev/null || true' EXIT

for _ in $(seq 1 300); do
  if ! kill -0 "$SERVER" 2>/dev/null; then tail -n 40 "$WORK/vllm.log" >&2; fail "vllm serve exited; see vllm.log" 4; fi
  if "$PY" - "$PORT" <<'PYEOF' 2>/dev/null; then break; fi
import sys, urllib.request
urllib.request.build_opener(urllib.request.ProxyHandler({})).open(f"http://127.0.0.1:{sys.argv[1]}/v1/models", timeout=2).read()
PYEOF
  sleep 2
done

"$PY" scripts/gpu/bench_topic_llm.py --url "http://127.0.0.1:$PORT" --model tiny-llama --n "$N" --concurrency "$CONCURRENCY" \
  | tee "$WORK/topic_llm.json"
