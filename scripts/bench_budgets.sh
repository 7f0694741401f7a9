#!/usr/bin/env bash
# Measures an agent under the loads of the hardening issue's items 2 and 10, on the real
# PP-OCR text detector (input x [N,3,H,W], H and W dynamic) fetched by scripts/setup.sh:
#   memory    peak RSS of the agent and its model worker against --memory-limit 2GiB:
#             32x3x320x320 requests at concurrency 48; 1x3x2240x2240 at concurrency 24
#             (refused by max_item_elements since); 1x3x2048x2048 (the largest allowed)
#   overload  goodput at concurrency 4 (the peak) and at 10x and 100x that, with 5 s
#             client deadlines, callers retrying a refusal at once or after a pause,
#             and how fast refusals come back
# Each scenario gets a fresh agent. Prints one JSON line per scenario.
#
# Usage: [ONLY=320|2240|2048] scripts/bench_budgets.sh HERD_BINARY [memory|overload|all] [DURATION_S]
# e.g.   scripts/bench_budgets.sh target/release/herd all 30
set -euo pipefail
cd "$(dirname "$0")/.."
herd=$(realpath "$1")
what=${2:-all}
duration=${3:-30}
cache=${HERD_CACHE:-.cache}
py=$cache/venv/bin/python
[ -f "$cache/models/ocr_det/1/model.onnx" ] || { echo "run scripts/setup.sh first" >&2; exit 1; }

repo=$(mktemp -d)
data=$(mktemp -d)
trap 'kill "$agent" 2>/dev/null || true; rm -rf "$repo" "$data"' EXIT
mkdir -p "$repo/ocr_det/1"
cp "$cache/models/ocr_det/1/model.onnx" "$repo/ocr_det/1/"
printf 'max_batch_size = 32\nintra_op_threads = 2\n' >"$repo/ocr_det/herd.toml"
port=$((20000 + RANDOM % 20000))
agent=

start_agent() {
  "$herd" agent --model-repository "$repo" --data-dir "$data" --listen "127.0.0.1:$port" \
    --memory-limit 2GiB --max-message-size 128MiB >"$data/agent.log" 2>&1 &
  agent=$!
  "$py" - "127.0.0.1:$port" <<'PY'
import sys, time
import tritonclient.grpc as g
c = g.InferenceServerClient(sys.argv[1])
deadline = time.monotonic() + 60
while True:
    try:
        if c.is_server_ready():
            break
    except Exception:
        pass
    if time.monotonic() > deadline:
        sys.exit("agent not ready")
    time.sleep(0.1)
PY
}

stop_agent() {
  # Its model workers too: one may be deep in a long run.
  local workers
  workers=$(ps -o pid= --ppid "$agent" || true)
  kill "$agent" $workers 2>/dev/null || true
  wait "$agent" 2>/dev/null || true
}

run() { # label, then bench_overload.py arguments
  local label=$1
  shift
  start_agent
  printf '{"scenario": "%s", "result": ' "$label"
  "$py" scripts/bench_overload.py "127.0.0.1:$port" --pid "$agent" --duration "$duration" "$@" | tr -d '\n'
  printf '}\n'
  stop_agent
}

if [ "$what" = memory ] || [ "$what" = all ]; then
  [ -n "${ONLY:-}" ] && [ "$ONLY" != 320 ] ||
    run "memory 32x3x320x320 c48" --shape 32,3,320,320 --concurrency 48 --timeout 0
  [ -n "${ONLY:-}" ] && [ "$ONLY" != 2240 ] ||
    run "memory 1x3x2240x2240 c24" --shape 1,3,2240,2240 --concurrency 24 --timeout 0
  [ -n "${ONLY:-}" ] && [ "$ONLY" != 2048 ] ||
    run "memory 1x3x2048x2048 c24" --shape 1,3,2048,2048 --concurrency 24 --timeout 0
fi
if [ "$what" = overload ] || [ "$what" = all ]; then
  run "overload c4 (peak)" --shape 1,3,640,640 --concurrency 4 --timeout 5
  run "overload c40, retry at once" --shape 1,3,640,640 --concurrency 40 --timeout 5
  run "overload c40, retry after 100ms" --shape 1,3,640,640 --concurrency 40 --timeout 5 --backoff 0.1
  run "overload c40, retry after 1s" --shape 1,3,640,640 --concurrency 40 --timeout 5 --backoff 1
  run "overload c400, retry after 1s" --shape 1,3,640,640 --concurrency 400 --timeout 5 --backoff 1 --channels 32
fi
