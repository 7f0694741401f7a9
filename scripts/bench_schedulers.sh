#!/usr/bin/env bash
# Several schedulers over one etcd (issue 11's figures), on loopback, release build:
#   1. failover: two schedulers, one agent reporting to both, `herd bench` knowing both
#      gateways at concurrency 8 for the whole run; the leader is SIGKILLed KILLS times
#      (default 10) and started again on its ports each time. Prints the time from each
#      kill to the other scheduler's /health saying "leader" (min/median/max) and the
#      requests that failed.
#   2. load on etcd: 100 simulated agents reporting every second to the leader; etcd's
#      committed proposals (every write: puts, deletes, transactions, lease grants)
#      per second over 20 s, and the scheduler's RSS.
# Needs etcd (scripts/setup.sh installs it).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked
cargo build --release --locked -p herd-scheduler --examples
herd=$PWD/target/release/herd
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
kills=${KILLS:-10}
export NO_COLOR=1 HERD_TOKEN=bench
mkdir -p "$work/models"
cp -r tests/models/tiny_mlp "$work/models/"

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
role() { python3 - "$1" <<'PY'
import json, sys, urllib.request
try:
    print(json.load(urllib.request.urlopen(f"http://{sys.argv[1]}/health", timeout=1))["role"])
except Exception:
    print("none")
PY
}
now_ms() { date +%s%3N; }

etcd_port=$(port)
etcd --name bench --data-dir "$work/etcd" --listen-client-urls "http://127.0.0.1:$etcd_port" \
  --advertise-client-urls "http://127.0.0.1:$etcd_port" --listen-peer-urls "http://127.0.0.1:$(port)" \
  --log-level warn --logger zap >"$work/etcd.log" 2>&1 &
until python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$etcd_port/health')" 2>/dev/null; do sleep 0.1; done
store=etcd://127.0.0.1:$etcd_port

declare -A grpc http pid
# Starts scheduler $1 (s1, s2) on its ports; waits until it serves.
start() {
  local s=$1
  : "${grpc[$s]:=127.0.0.1:$(port)}" "${http[$s]:=127.0.0.1:$(port)}"
  "$herd" scheduler --listen "${grpc[$s]}" --http "${http[$s]}" --store "$store" \
    --model-repository "$work/models" --data-dir "$work/$s" --report-interval 1s >>"$work/$s.log" 2>&1 &
  pid[$s]=$!
  until [ "$(role "${http[$s]}")" != none ]; do sleep 0.05; done
}

echo "bench: failover over $kills leader kills" >&2
start s1
start s2
"$herd" agent --listen 127.0.0.1:0 --name a --scheduler "${grpc[s1]},${grpc[s2]}" \
  --data-dir "$work/agent" 2>"$work/agent.log" &
until [ "$(grep -c 'joined the cluster' "$work/agent.log")" -ge 2 ]; do sleep 0.1; done
gateways=${grpc[s1]},${grpc[s2]}
"$herd" bench --scheduler "$gateways" --concurrency 1 --duration 1s tiny_mlp >/dev/null # places it
"$herd" bench --scheduler "$gateways" --json --concurrency 8 --duration "$((kills * 8 + 10))s" \
  tiny_mlp >"$work/bench.json" 2>"$work/bench.log" &
bench_pid=$!
sleep 3
: >"$work/failovers.txt"
for i in $(seq "$kills"); do
  if [ "$(role "${http[s1]}")" = leader ]; then leader=s1 other=s2; else leader=s2 other=s1; fi
  kill -9 "${pid[$leader]}"
  t0=$(now_ms)
  until [ "$(role "${http[$other]}")" = leader ]; do sleep 0.02; done
  echo $(($(now_ms) - t0)) >>"$work/failovers.txt"
  echo "  kill $i: $leader killed, $other leads after $(tail -1 "$work/failovers.txt") ms" >&2
  wait "${pid[$leader]}" 2>/dev/null || true
  joins=$(grep -c 'joined the cluster' "$work/agent.log")
  start "$leader"
  # The agent reports to it again before the next kill.
  until [ "$(grep -c 'joined the cluster' "$work/agent.log")" -gt "$joins" ]; do sleep 0.1; done
  sleep 2
done
wait "$bench_pid"
loads=$(grep -c "loading model" "$work/agent.log" || true)
python3 - "$work/failovers.txt" "$work/bench.json" "$loads" <<'PY'
import json, statistics, sys
times = [int(l) for l in open(sys.argv[1])]
r = json.load(open(sys.argv[2]))
r = r[0] if isinstance(r, list) else r
print(f"failover after SIGKILL over {len(times)} kills: min {min(times)} ms, median "
      f"{statistics.median(times):.0f} ms, max {max(times)} ms")
print(f"two-gateway client at concurrency 8 meanwhile: {r['requests']} requests, "
      f"{r['errors']} failed, {r['throughput_rps']:.0f} req/s; the agent loaded tiny_mlp "
      f"{sys.argv[3]} time(s)")
PY
kill "${pid[s1]}" "${pid[s2]}" 2>/dev/null || true
wait "${pid[s1]}" "${pid[s2]}" 2>/dev/null || true

echo "bench: 100 simulated agents reporting every second to a scheduler on etcd" >&2
many=$work/many
for i in $(seq -w 0 99); do
  mkdir -p "$many/model_$i/1" && cp tests/models/tiny_mlp/1/model.onnx "$many/model_$i/1/"
done
unset 'grpc[s3]' 'http[s3]'
proposals() { python3 - "$etcd_port" <<'PY'
import sys, urllib.request
for line in urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/metrics"):
    line = line.decode()
    if line.startswith("etcd_server_proposals_committed_total "):
        print(int(float(line.split()[1])))
PY
}
"$herd" scheduler --listen 127.0.0.1:0 --http 127.0.0.1:0 --store "$store/many" \
  --model-repository "$many" --data-dir "$work/s3" 2>"$work/s3.log" &
s3=$!
until grep -q "scheduler serving" "$work/s3.log"; do sleep 0.1; done
p_start=$(proposals)
addr=$(grep "scheduler serving" "$work/s3.log" | grep -o 'addr=[^ ]*' | cut -d= -f2)
names=$(ls "$many" | paste -sd, -)
digest=$(sha256sum tests/models/tiny_mlp/1/model.onnx | cut -d' ' -f1)
target/release/examples/simulated_agents "$addr" bench 100 "$names" "$digest" >"$work/simulated.log" 2>&1 &
sleep 10 # every agent joined, every replica adopted, records written
p0=$(proposals)
sleep 20
p1=$(proposals)
rss_kib=$(awk '/VmRSS/ {print $2}' /proc/$s3/status)
nodes=$("$herd" nodes list --scheduler "$addr" --json 2>/dev/null | python3 -c 'import json,sys; print(len(json.load(sys.stdin)))')
echo "100 simulated agents ($nodes nodes listed), 100 models: $((p0 - p_start)) etcd writes while they joined (10 s), then $(python3 -c "print(round(($p1-$p0)/20, 1))")/s over 20 s of reports; scheduler RSS $((rss_kib / 1024)) MiB"
