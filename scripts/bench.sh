#!/usr/bin/env bash
# Measures herd on this machine in one run, as ratios to raw ONNX Runtime on the same
# model (absolute times drift between machines and runs):
#   1. raw ONNX Runtime in-process (herd bench --local) at several batch sizes;
#   2. herd agent over gRPC at concurrency 1, 8 and 64 (herd bench), for magika and
#      a tiny MLP, and the tiny MLP again with max_batch_size = 1;
#   3. agent memory: idle, with magika and the three OCR models loaded and exercised,
#      and after they unload (scripts/bench_memory.py).
# Prints a markdown report (scripts/bench_report.py); raw figures stay in $out.
# Usage: scripts/bench.sh [seconds per step, default 5]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-5}
bash scripts/setup.sh
cargo build --release --locked
herd=target/release/herd
python=.cache/venv/bin/python
out=target/bench
rm -rf "$out" && mkdir -p "$out"
repo=$(mktemp -d)
agent_pid=
cleanup() { [ -n "$agent_pid" ] && kill "$agent_pid" 2>/dev/null; rm -rf "$repo"; }
trap cleanup EXIT

cp -r .cache/models/magika "$repo/"
cp -r tests/models/tiny_mlp "$repo/"
cp -r tests/models/tiny_mlp "$repo/tiny_mlp_b1"
echo 'max_batch_size = 1' > "$repo/tiny_mlp_b1/herd.toml"

# Starts `herd agent` on a free port with the given repository; sets $addr, $agent_pid.
start_agent() {
  local log=$out/agent-$(basename "$1").log
  NO_COLOR=1 "$herd" agent --listen 127.0.0.1:0 --model-repository "$1" 2>"$log" &
  agent_pid=$!
  for _ in $(seq 100); do
    addr=$(sed -n 's/.*agent serving addr=\([^ ]*\).*/\1/p' "$log")
    [ -n "$addr" ] && return 0
    sleep 0.1
  done
  echo "bench: the agent did not start; see $log" >&2
  exit 1
}

bench() { "$herd" bench --json --duration "${secs}s" --warmup 1s "$@"; }

echo "bench: raw ONNX Runtime in-process" >&2
bench magika --local "$repo/magika/1/model.onnx" --local-batch 1,2,4,8,16 >>"$out/steps.jsonl"
bench tiny_mlp --local "$repo/tiny_mlp/1/model.onnx" --local-batch 1,8,32 >>"$out/steps.jsonl"

echo "bench: herd agent over gRPC" >&2
start_agent "$repo"
for model in magika tiny_mlp tiny_mlp_b1; do
  bench "$model" --scheduler "$addr" --concurrency 1,8,64 >>"$out/steps.jsonl"
done
kill "$agent_pid" && wait "$agent_pid" 2>/dev/null || true

echo "bench: agent memory with magika and the OCR models" >&2
start_agent .cache/models
"$python" scripts/bench_memory.py "$addr" "$agent_pid" >"$out/memory.json"
kill "$agent_pid" && wait "$agent_pid" 2>/dev/null || true
agent_pid=

"$python" scripts/bench_report.py "$out/steps.jsonl" "$out/memory.json"
