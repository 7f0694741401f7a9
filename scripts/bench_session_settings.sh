#!/usr/bin/env bash
# ONNX Runtime session settings, chosen by measurement: on three models (magika, the
# PP-OCR detector at 640x640 and recognizer at 48x320), raw ONNX Runtime in-process at
# its own defaults (herd bench --local, batch 1 and 8: the limit) against herd agent at
# concurrency 16 with the CPU memory arena on (herd's default) and off. Prints one line
# per measurement and each agent's ratio to the better raw figure.
# Usage: scripts/bench_session_settings.sh HERD_BINARY [DURATION, default 8s]
set -euo pipefail
cd "$(dirname "$0")/.."
herd=$(realpath "$1")
duration=${2:-8s}
models=(magika ocr_det ocr_rec)
declare -A shape=([magika]="" [ocr_det]="--shape x=1,3,640,640" [ocr_rec]="--shape x=1,3,48,320")
repo=$(mktemp -d)
log=$(mktemp)
agent=
trap '[ -n "$agent" ] && kill "$agent" 2>/dev/null; rm -rf "$repo" "$log"' EXIT
for m in "${models[@]}"; do cp -r ".cache/models/$m" "$repo/"; done

items_per_s() { python3 -c 'import sys, json; print(max(json.loads(l)["items_per_s"] for l in sys.stdin))'; }

declare -A raw
for m in "${models[@]}"; do
  # shellcheck disable=SC2086
  raw[$m]=$("$herd" bench --local ".cache/models/$m/1/model.onnx" ${shape[$m]} --local-batch 1,8 \
    --duration "$duration" --json "$m" 2>/dev/null | items_per_s)
  echo "$m raw ONNX Runtime (best of batch 1, 8): ${raw[$m]} items/s"
done
for arena in true false; do
  : >"$log"
  HERD_MEMORY_ARENA=$arena NO_COLOR=1 "$herd" agent --listen 127.0.0.1:0 --model-repository "$repo" 2>"$log" &
  agent=$!
  addr=
  for _ in $(seq 100); do
    addr=$(sed -n 's/.*agent serving.* addr=\([^ ]*\).*/\1/p' "$log" | head -n1)
    [ -n "$addr" ] && break
    sleep 0.1
  done
  for m in "${models[@]}"; do
    # shellcheck disable=SC2086
    got=$("$herd" bench --scheduler "$addr" ${shape[$m]} --concurrency 16 --duration "$duration" \
      --json "$m" 2>/dev/null | items_per_s)
    echo "$m agent c16, memory_arena=$arena: $got items/s = $(python3 -c "print(f'{$got / ${raw[$m]}:.2f}')")x raw"
  done
  kill "$agent"
  wait "$agent" 2>/dev/null || true
  agent=
done
