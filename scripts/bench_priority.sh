#!/usr/bin/env bash
# Interactive latency while bulk requests saturate the same model (issue 12's goal:
# interactive p99 at most 2x its p99 alone). One `herd up` on magika; an interactive
# caller at concurrency 1 alone, then beside a bulk load at concurrency 32, then beside
# the same load sent as interactive (no classes: first come, first served). Prints one
# line per step; needs a release build (cargo build --release).
set -euo pipefail
cd "$(dirname "$0")/.."
herd=target/release/herd
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
port=$((20000 + RANDOM % 20000))
addr=127.0.0.1:$port
HERD_TOKEN=bench "$herd" up --listen "$addr" --http 127.0.0.1:0 --model-repository .cache/models \
  --data-dir "$work/data" 2>"$work/up.log" &
until grep -q "joined the cluster" "$work/up.log"; do sleep 0.2; done
bench() { HERD_TOKEN=bench "$herd" bench --scheduler "$addr" --json --warmup 1s "$@" magika; }
bench --concurrency 1 --duration 3s >/dev/null # loads the model
p() { python3 -c "import json,sys; r=json.load(sys.stdin); r=r[0] if isinstance(r,list) else r; print('p50 %.1f ms  p99 %.1f ms  %d requests, %d errors' % (r['p50_us']/1000, r['p99_us']/1000, r['requests'], r['errors']))"; }
echo "interactive alone:            $(bench --concurrency 1 --duration 10s | p)"
# An interactive caller beside a load of 32 callers of `class`.
beside() {
  local class=$1 label=$2
  bench --concurrency 32 --duration 14s --priority "$class" >"$work/$class.json" &
  local load=$!
  sleep 2
  echo "$label $(bench --concurrency 1 --duration 10s | p)"
  wait "$load"
  echo "  (that load:                 $(p <"$work/$class.json"))"
}
beside bulk "interactive beside bulk x32: "
beside interactive "beside the same load, unclassed:"
