#!/usr/bin/env bash
# What TLS costs: `herd up` with --tls off and with --tls on, one after the other (twice,
# alternating, so that drift falls on both), the same `herd bench` against each on
# tiny_mlp and magika at concurrency 1 and 64. Prints one line per run and the ratio of
# the best TLS run to the best plain run; needs a release build.
set -euo pipefail
cd "$(dirname "$0")/.."
herd=target/release/herd
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
mkdir -p "$work/models"
cp -r .cache/models/magika tests/models/tiny_mlp "$work/models/"
duration=${DURATION:-5s}

# Starts herd up with --tls $1; sets addr and up_pid.
up() {
  local tls=$1 port=$((20000 + RANDOM % 20000))
  rm -rf "$work/data"
  HERD_TOKEN=bench NO_COLOR=1 "$herd" up --listen "127.0.0.1:$port" --http 127.0.0.1:0 --tls "$tls" \
    --model-repository "$work/models" --data-dir "$work/data" >/dev/null 2>"$work/up.log" &
  up_pid=$!
  until grep -q "joined the cluster" "$work/up.log"; do sleep 0.2; done
  addr=127.0.0.1:$port
}

for round in 1 2; do
  for tls in off on; do
    up "$tls"
    if [ "$tls" = on ]; then token=(--token-file "$work/data/join-token"); else token=(--token bench); fi
    for model in tiny_mlp magika; do
      "$herd" bench --scheduler "$addr" "${token[@]}" --concurrency 1 --duration 2s "$model" >/dev/null # loads it
      for c in 1 64; do
        "$herd" bench --scheduler "$addr" "${token[@]}" --json --warmup 1s --duration "$duration" \
          --concurrency "$c" "$model" |
          python3 -c "import json,sys; r=json.load(sys.stdin); r=r[0] if isinstance(r,list) else r; print('$tls $model c=$c', r['throughput_rps'], r['p50_us'], r['errors'])" >>"$work/runs.txt"
        tail -1 "$work/runs.txt"
      done
    done
    kill "$up_pid" 2>/dev/null; wait "$up_pid" 2>/dev/null || true
  done
done
python3 - "$work/runs.txt" <<'PY'
import sys
best = {}
for line in open(sys.argv[1]):
    tls, model, c, rps, p50, errors = line.split()
    key = (tls, model, c)
    if key not in best or float(rps) > best[key][0]:
        best[key] = (float(rps), float(p50), int(errors))
for model in ("tiny_mlp", "magika"):
    for c in ("c=1", "c=64"):
        off, on = best[("off", model, c)], best[("on", model, c)]
        print(f"{model} {c}: plain {off[0]:.0f} req/s p50 {off[1]/1000:.2f} ms; "
              f"TLS {on[0]:.0f} req/s p50 {on[1]/1000:.2f} ms; TLS/plain throughput {on[0]/off[0]:.2f}")
PY
