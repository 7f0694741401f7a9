#!/usr/bin/env bash
# KServe v2 HTTP/REST beside gRPC on one `herd agent` (release build), in one run:
# tiny_mlp (x FP32 [1,16]) and magika (bytes INT32 [1,2048]) at concurrency 1 and 16,
# gRPC, HTTP with binary tensors and HTTP with JSON tensors; prints a markdown table
# with throughput, p50 and the agent process's CPU per request (its model workers
# aside) as ratios to gRPC's (examples/bench_http.rs).
# Usage: scripts/bench_http.sh [seconds per protocol and step, default 6]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-6}
bash scripts/setup.sh
cargo build --release --locked
cargo build --release --locked --example bench_http
repo=$(mktemp -d)
log=$(mktemp)
agent_pid=
cleanup() {
  [ -n "$agent_pid" ] && kill "$agent_pid" 2>/dev/null
  rm -rf "$repo" "$log"
}
trap cleanup EXIT
cp -r .cache/models/magika tests/models/tiny_mlp "$repo/"
NO_COLOR=1 target/release/herd agent --listen 127.0.0.1:0 --http 127.0.0.1:0 \
  --model-repository "$repo" 2>"$log" &
agent_pid=$!
for _ in $(seq 300); do
  grep -q "agent serving" "$log" && break
  sleep 0.1
done
line=$(grep "agent serving" "$log") || { echo "bench_http: the agent does not serve:" >&2; cat "$log" >&2; exit 1; }
grpc=$(sed -n 's/.* addr=\([^ ]*\).*/\1/p' <<<"$line")
http=$(sed -n 's/.* http=\([^ ]*\).*/\1/p' <<<"$line")
echo "herd agent on $(nproc) cores, $(date -u +%Y-%m-%d), ${secs} s per protocol and step"
target/release/examples/bench_http --pid "$agent_pid" "$grpc" "$http" "$secs" 1,16 \
  tiny_mlp:x:FP32:1x16 magika:bytes:INT32:1x2048
