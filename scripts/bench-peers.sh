#!/usr/bin/env bash
# herd beside Ray Serve and Triton, in one run on one machine, driven by one client
# (`herd bench`, KServe v2 gRPC) the same way for every server:
#   targets  herd-agent    one `herd agent` serving alone (2 ONNX Runtime threads)
#            herd-cluster  `herd scheduler` + 2 agents on loopback (1 thread each)
#            ray           Ray Serve as Immich's PR set it up: an ingress deployment and a
#                          model deployment holding an ONNX Runtime session, @serve.batch
#                          (max 8, 10 ms), KServe v2 gRPC through Serve's gRPC proxy
#                          (scripts/peers/ray)
#            pytriton      Triton's server through nvidia-pytriton 0.7.0, ONNX Runtime in
#                          its Python function, dynamic batcher (max 8, 10 ms)
#                          (scripts/peers/pytriton): a Python hop that Triton's native ONNX
#                          Runtime backend does not have
#   models   magika (byte classifier), ocr_rec (PP-OCRv4 recognition, 3×48×320) and
#            nudenet (YOLOv8n detector, 3×320×320, from the nudenet 3.4.2 wheel)
#   steps    closed loop at concurrency 1, 8, 64; open loop at ¼, ½, ¾ and 1× the
#            target's own concurrency-64 throughput; and raw ONNX Runtime in-process
#            (herd bench --local, batch 1 and 8, 2 threads) as the limit
#   memory   RSS and PSS summed over the server's whole process tree: idle (started,
#            nothing asked), loaded (after the first requests), peak (sampled every
#            0.25 s under load), after unload; and the server's CPU seconds per item
# Every server: batches of at most 8 items; ONNX Runtime 1.31.1, 2 intra-op threads in all.
# Each peer lives in its own virtualenv under .cache/peers/. Writes target/bench-peers/:
# steps.jsonl (one line per step), memory.jsonl, report.md, and the plots (PNG).
# Usage: scripts/bench-peers.sh [seconds per step, default 5]   (TARGETS=..., MODELS=...)
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-5}
targets=${TARGETS:-herd-agent herd-cluster ray pytriton}
models=${MODELS:-magika ocr_rec nudenet}
herd=target/release/herd
python=.cache/venv/bin/python
out=target/bench-peers
log() { printf 'bench-peers: %s\n' "$*" >&2; }

bash scripts/setup.sh
for peer in ray pytriton; do
  [[ " $targets " != *" $peer "* ]] || bash "scripts/peers/$peer/setup.sh"
done
bash scripts/peers/setup_plot.sh
cargo build --release --locked

rm -rf "$out" && mkdir -p "$out"
work=$(mktemp -d)
root=
sampler=
cleanup() {
  [ -z "$sampler" ] || kill "$sampler" 2>/dev/null || true
  if [ -n "$root" ]; then
    kill -TERM -- "-$root" 2>/dev/null || kill "$root" 2>/dev/null || true
    wait "$root" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

# The models, each in a repository of its own with the same batch limit.
cache=.cache
# shellcheck source=lib.sh
. scripts/lib.sh
nudenet=$cache/peers/models/nudenet.onnx
if [ ! -f "$nudenet" ]; then
  mkdir -p "$(dirname "$nudenet")"
  "$python" -c 'import sys, zipfile; open(sys.argv[2], "wb").write(zipfile.ZipFile(sys.argv[1]).read("nudenet/320n.onnx"))' \
    "$(wheel "$python" nudenet==3.4.2)" "$nudenet"
fi
declare -A file=(
  [magika]=.cache/models/magika/1/model.onnx
  [ocr_rec]=.cache/models/ocr_rec/1/model.onnx
  [nudenet]=$nudenet
)
declare -A shape=([magika]="" [ocr_rec]="--shape x=1,3,48,320" [nudenet]="--shape images=1,3,320,320")
# repo MODEL THREADS: a repository holding MODEL alone.
repo() {
  local dir=$work/repo-$1-$2
  mkdir -p "$dir/$1/1"
  cp "${file[$1]}" "$dir/$1/1/model.onnx"
  printf 'max_batch_size = 8\nintra_op_threads = %s\n' "$2" >"$dir/$1/herd.toml"
  echo "$dir"
}

# Waits until FILE holds a line matching PATTERN (the server is ready), for up to 120 s.
ready_in() {
  for _ in $(seq 1200); do
    grep -q "$2" "$1" 2>/dev/null && return 0
    kill -0 "$root" 2>/dev/null || { log "the server exited; see $1"; tail -n 20 "$1" >&2; exit 1; }
    sleep 0.1
  done
  log "not ready after 120 s; see $1"
  exit 1
}
addr_in() { grep "$2" "$1" | sed -n 's/.* addr=\([^ ]*\).*/\1/p' | head -n1; }
free_port() { "$python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# start TARGET MODEL: starts the server in a process group of its own; sets root (the
# tree's top process), addr, and unload (a command that unloads the model, or "").
start() {
  local target=$1 model=$2 log=$out/$1-$2.log
  export HERD_TOKEN=bench
  case $target in
  herd-agent)
    setsid env NO_COLOR=1 "$herd" agent --listen 127.0.0.1:0 --model-repository "$(repo "$model" 2)" \
      --data-dir "$work/agent-$model" 2>"$log" &
    root=$!
    ready_in "$log" "agent serving"
    addr=$(addr_in "$log" "agent serving")
    unload="$python scripts/peers/unload.py $addr $model"
    ;;
  herd-cluster)
    local r
    r=$(repo "$model" 1)
    cluster_toml=$r/$model/herd.toml
    printf 'min_replicas = 2\n' >>"$cluster_toml"
    setsid bash -c '
      NO_COLOR=1 "$0" scheduler --listen 127.0.0.1:0 --http 127.0.0.1:0 --model-repository "$1" \
        --data-dir "$2/scheduler" 2>"$3" &
      until grep -q "scheduler serving" "$3"; do sleep 0.1; done
      s=$(grep "scheduler serving" "$3" | sed -n "s/.* addr=\([^ ]*\).*/\1/p" | head -n1)
      for n in a b; do
        NO_COLOR=1 "$0" agent --listen 127.0.0.1:0 --name "$n" --scheduler "$s" --data-dir "$2/agent-$n" 2>>"$3.$n" &
      done
      wait' "$herd" "$r" "$work/cluster-$model" "$log" &
    root=$!
    ready_in "$log" "scheduler serving"
    addr=$(addr_in "$log" "scheduler serving")
    ready_in "$log.b" "joined the cluster"
    ready_in "$log.a" "joined the cluster"
    # The two replicas are pinned (min_replicas): unpinned first, as a user would.
    unload="cluster_unload $model"
    ;;
  ray)
    local port
    port=$(free_port)
    setsid bash scripts/peers/ray/run.sh --model "${file[$model]}" \
      --name "$model" --grpc-port "$port" --threads 2 --max-batch 8 --batch-wait 0.01 >"$log" 2>&1 &
    root=$!
    ready_in "$log" "ray serve ready"
    addr=127.0.0.1:$port
    unload="kill -USR1 $root"
    ;;
  pytriton)
    local port
    port=$(free_port)
    setsid bash scripts/peers/pytriton/run.sh --model "${file[$model]}" --name "$model" \
      --grpc-port "$port" --http-port "$(free_port)" --threads 2 --max-batch 8 \
      --queue-delay-us 10000 >"$log" 2>&1 &
    root=$!
    ready_in "$log" "pytriton ready"
    addr=127.0.0.1:$port
    unload=""
    ;;
  esac
}

cluster_unload() {
  sed -i '/^min_replicas/d' "$cluster_toml"
  "$herd" models rescan --scheduler "$addr" >/dev/null
  "$herd" models unload "$1" --scheduler "$addr"
}

stop() {
  kill -TERM -- "-$root" 2>/dev/null || true
  for _ in $(seq 300); do kill -0 "$root" 2>/dev/null || break; sleep 0.1; done
  kill -KILL -- "-$root" 2>/dev/null || true
  wait "$root" 2>/dev/null || true
  root=
}

mem() { "$python" scripts/peers/measure.py mem "$root"; }
cpu() { "$python" scripts/peers/measure.py cpu "$root"; }

# step TARGET MODEL ARGS...: one herd bench step (a JSON line, tagged) and the server's CPU
# seconds per item over it (the warm-up runs apart, so that only measured items count).
step() {
  local target=$1 model=$2
  shift 2
  local before after
  # shellcheck disable=SC2086
  "$herd" bench "$model" --scheduler "$addr" --json --warmup 0s --duration 1s ${shape[$model]} "$@" \
    >/dev/null || true
  before=$(cpu)
  # shellcheck disable=SC2086
  "$herd" bench "$model" --scheduler "$addr" --json --warmup 0s --duration "${secs}s" ${shape[$model]} "$@" \
    >"$work/step.jsonl" || true
  after=$(cpu)
  "$python" - "$target" "$model" "$before" "$after" "$work/step.jsonl" >>"$out/steps.jsonl" <<'PY'
import json, sys
target, model, before, after, path = sys.argv[1:]
for line in open(path):
    r = json.loads(line)
    items = max(r["requests"] * r.get("batch", 1), 1)
    r.update(peer=target, model=model, cpu_ms_per_item=(float(after) - float(before)) * 1000 / items)
    print(json.dumps(r))
PY
}

for model in $models; do
  # ONNX Runtime in-process, one session running batches back to back: the limit.
  log "raw ONNX Runtime on $model"
  # shellcheck disable=SC2086
  "$herd" bench "$model" --local "${file[$model]}" --local-batch 1,8 --intra-op-threads 2 --json \
    --warmup 1s --duration "${secs}s" ${shape[$model]} |
    "$python" -c 'import json, sys
for line in sys.stdin:
    r = json.loads(line); r.update(peer="onnxruntime", cpu_ms_per_item=None); print(json.dumps(r))' \
    >>"$out/steps.jsonl"
  for target in $targets; do
    log "$target serving $model"
    start "$target" "$model"
    sleep 2
    idle=$(mem)
    "$python" scripts/peers/measure.py sample "$root" "$out/mem-$target-$model.txt" &
    sampler=$!
    # The first requests load the model (herd loads on demand).
    # shellcheck disable=SC2086
    "$herd" bench "$model" --scheduler "$addr" --concurrency 1 --duration 2s --warmup 0s ${shape[$model]} >/dev/null
    loaded=$(mem)
    for c in 1 8 64; do
      step "$target" "$model" --concurrency "$c"
    done
    top=$(tail -n1 "$out/steps.jsonl" | "$python" -c 'import json,sys; print(json.load(sys.stdin)["throughput_rps"])')
    for f in 0.25 0.5 0.75 1.0; do
      step "$target" "$model" --rate "$("$python" -c "print(max(1, round($top * $f)))")"
    done
    peak=$("$python" scripts/peers/measure.py peak "$out/mem-$target-$model.txt")
    unloaded=null
    if [ -n "$unload" ]; then
      $unload >/dev/null 2>&1 || log "$target: unloading $model failed"
      sleep 5
      unloaded=$(mem)
    fi
    kill "$sampler" 2>/dev/null || true
    wait "$sampler" 2>/dev/null || true
    sampler=
    printf '{"peer": "%s", "model": "%s", "idle": %s, "loaded": %s, "peak": %s, "unloaded": %s}\n' \
      "$target" "$model" "$idle" "$loaded" "$peak" "$unloaded" >>"$out/memory.jsonl"
    stop
  done
done

.cache/peers/plot/venv/bin/python scripts/peers/report.py "$out"
log "report: $out/report.md"
