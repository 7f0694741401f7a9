#!/usr/bin/env bash
# Measures herd on this machine in one run, as ratios to raw ONNX Runtime on the same
# model (absolute times drift between machines and runs):
#   1. raw ONNX Runtime in-process (herd bench --local) at several batch sizes;
#   2. herd agent over gRPC at concurrency 1, 8 and 64 (herd bench), for magika and
#      a tiny MLP, and the tiny MLP again with max_batch_size = 1;
#   3. agent memory: idle, with magika and the three OCR models loaded and exercised,
#      and after they unload (scripts/bench_memory.py);
#   4. a cluster: client → herd scheduler → 2 agents on loopback, at concurrency 1, 16
#      and 64, for magika and the tiny MLP (2 replicas each, one ONNX Runtime thread
#      each: two agents share this machine's cores), beside one agent with the same
#      model settings;
#   5. scheduler RSS with 10 simulated agents and 100 models, and the placement
#      function on 1,000 nodes × 10,000 models (cargo bench).
# Prints a markdown report (scripts/bench_report.py); raw figures stay in $out.
# Usage: scripts/bench.sh [seconds per step, default 5]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-5}
bash scripts/setup.sh
cargo build --release --locked
cargo build --release --locked -p herd-scheduler --examples
herd=target/release/herd
python=.cache/venv/bin/python
out=target/bench
rm -rf "$out" && mkdir -p "$out"
repo=$(mktemp -d)
agent_pid=
pids=()
cleanup() {
  [ -n "$agent_pid" ] && kill "$agent_pid" 2>/dev/null
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
  rm -rf "$repo"
}
trap cleanup EXIT

cp -r .cache/models/magika "$repo/"
cp -r tests/models/tiny_mlp "$repo/"
cp -r tests/models/tiny_mlp "$repo/tiny_mlp_b1"
echo 'max_batch_size = 1' > "$repo/tiny_mlp_b1/herd.toml"

# Waits until log file $1 has a line with $2 and prints the addr= on it.
addr_in() {
  local found
  for _ in $(seq 300); do
    found=$(grep "$2" "$1" | sed -n 's/.* addr=\([^ ]*\).*/\1/p' | head -n1)
    [ -n "$found" ] && { echo "$found"; return 0; }
    sleep 0.1
  done
  echo "bench: nothing serves; see $1" >&2
  exit 1
}

# Starts `herd agent` on a free port with the given repository; sets $addr, $agent_pid.
start_agent() {
  local log=$out/agent-$(basename "$1").log
  NO_COLOR=1 "$herd" agent --listen 127.0.0.1:0 --model-repository "$1" 2>"$log" &
  agent_pid=$!
  addr=$(addr_in "$log" "agent serving")
}

bench() { "$herd" bench --json --duration "${secs}s" --warmup 1s "$@"; }

echo "bench: raw ONNX Runtime in-process" >&2
bench magika --local "$repo/magika/1/model.onnx" --local-batch 1,2,4,8,16 >>"$out/steps.jsonl"
bench tiny_mlp --local "$repo/tiny_mlp/1/model.onnx" --local-batch 1,8,32 >>"$out/steps.jsonl"

echo "bench: herd agent over gRPC" >&2
start_agent "$repo"
for model in magika tiny_mlp tiny_mlp_b1; do
  bench "$model" --scheduler "$addr" --concurrency 1,8,16,64 >>"$out/steps.jsonl"
done
kill "$agent_pid" && wait "$agent_pid" 2>/dev/null || true

echo "bench: agent memory with magika and the OCR models" >&2
start_agent .cache/models
"$python" scripts/bench_memory.py "$addr" "$agent_pid" >"$out/memory.json"
kill "$agent_pid" && wait "$agent_pid" 2>/dev/null || true
agent_pid=

echo "bench: cluster — herd scheduler and two agents on loopback" >&2
cluster_repo=$repo/cluster
mkdir -p "$cluster_repo"
cp -r "$repo/magika" "$repo/tiny_mlp" "$cluster_repo/"
printf 'max_batch_size = 8\nintra_op_threads = 1\nmin_replicas = 2\n' >"$cluster_repo/magika/herd.toml"
printf 'intra_op_threads = 1\nmin_replicas = 2\n' >"$cluster_repo/tiny_mlp/herd.toml"
start_agent "$cluster_repo"
for model in magika tiny_mlp; do
  bench "$model" --scheduler "$addr" --concurrency 1,16,64 | sed 's/"target":"/"target":"agent1t:/' >>"$out/steps.jsonl"
done
kill "$agent_pid" && wait "$agent_pid" 2>/dev/null || true
agent_pid=
NO_COLOR=1 "$herd" scheduler --listen 127.0.0.1:0 --http 127.0.0.1:0 --token bench \
  --model-repository "$cluster_repo" --data-dir "$repo/scheduler" 2>"$out/scheduler.log" &
pids+=($!)
scheduler=$(addr_in "$out/scheduler.log" "scheduler serving")
for name in a b; do
  NO_COLOR=1 "$herd" agent --listen 127.0.0.1:0 --name "bench-$name" --scheduler "$scheduler" \
    --token bench --data-dir "$repo/agent-$name" 2>"$out/agent-$name.log" &
  pids+=($!)
done
# Two ready replicas of each model (min_replicas = 2): the load call answers at the first.
for model in magika tiny_mlp; do
  for _ in $(seq 600); do
    ready=$("$herd" models show "$model" --scheduler "$scheduler" --token bench --json --window 0s 2>/dev/null |
      "$python" -c 'import json,sys; print(sum(r["state"] == "ready" for r in json.load(sys.stdin).get("replicas", [])))' 2>/dev/null || echo 0)
    [ "$ready" = 2 ] && break
    sleep 0.1
  done
done
for model in magika tiny_mlp; do
  bench "$model" --scheduler "$scheduler" --token bench --concurrency 1,16,64 | sed 's/"target":"/"target":"cluster:/' >>"$out/steps.jsonl"
done
for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
pids=()

echo "bench: scheduler memory with 10 simulated agents and 100 models" >&2
many=$repo/many
for i in $(seq -w 0 99); do
  mkdir -p "$many/model_$i/1" && cp "$repo/tiny_mlp/1/model.onnx" "$many/model_$i/1/"
done
NO_COLOR=1 "$herd" scheduler --listen 127.0.0.1:0 --http 127.0.0.1:0 --token bench \
  --model-repository "$many" --data-dir "$repo/scheduler-many" 2>"$out/scheduler-many.log" &
scheduler_pid=$!
pids+=($scheduler_pid)
scheduler=$(addr_in "$out/scheduler-many.log" "scheduler serving")
idle_kib=$(awk '/VmRSS/ {print $2}' /proc/$scheduler_pid/status)
names=$(ls "$many" | paste -sd, -)
digest=$(sha256sum "$repo/tiny_mlp/1/model.onnx" | cut -d' ' -f1)
target/release/examples/simulated_agents "$scheduler" bench 10 "$names" "$digest" >"$out/simulated.log" 2>&1 &
pids+=($!)
sleep 5 # ten report rounds, so that every simulated replica is adopted
held_kib=$(awk '/VmRSS/ {print $2}' /proc/$scheduler_pid/status)
replicas=$("$herd" models list --scheduler "$scheduler" --token bench --json --window 0s | "$python" -c 'import json,sys; print(sum(len(m.get("replicas", [])) for m in json.load(sys.stdin)))')
printf '{"idle_kib": %s, "held_kib": %s, "agents": 10, "models": 100, "replicas": %s}\n' "$idle_kib" "$held_kib" "$replicas" >"$out/scheduler_memory.json"
for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
pids=()

echo "bench: placement on 1,000 nodes × 10,000 models, and routing beside it" >&2
cargo bench --locked -p herd-scheduler --bench placement 2>/dev/null | grep -E '^(placement|routing):' >"$out/placement.txt"

"$python" scripts/bench_report.py "$out/steps.jsonl" "$out/memory.json" "$out/scheduler_memory.json" "$out/placement.txt"
