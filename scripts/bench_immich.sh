#!/usr/bin/env bash
# herd's Immich API beside the Python reference pipeline served the way Immich serves it
# (tests/immich/reference.py --serve: FastAPI + uvicorn, one process, ONNX Runtime 1.31.1),
# on the same machine, models (the test Immich cache of scripts/setup_immich.sh) and
# images, in one run. The client for both is tests/immich/client.mjs, which builds each
# request as Immich's server does (FormData, Blob, fetch), closed loop.
#
#   scripts/bench_immich.sh [SECONDS_PER_POINT] [CONCURRENCIES]
#
# Defaults: 10 s per point, concurrency "1 8 32". Prints one markdown table (throughput,
# p50, p99, errors per task and concurrency for both servers, and herd's ratio), then
# the memory of both: idle (after start, before any request) and after the run (RSS and
# PSS of the whole process tree, MiB). Build: release, --locked.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-10}
concurrencies=${2:-"1 8 32"}
bash scripts/setup.sh >/dev/null
cargo build --release --locked -q
cache=${HERD_CACHE:-$PWD/.cache}
py=$cache/immich-venv/bin/python
models=$cache/immich-models
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

free_port() { "$py" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# RSS and PSS (shared pages split among their users) in MiB of a process and all its
# descendants: herd's workers each map ONNX Runtime, which RSS counts once per worker.
tree_rss() {
  "$py" - "$1" <<'PY'
import os, sys
def kids(pid):
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        out.append(int(d))
            except OSError:
                pass
    return out
def field(path, name):
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(name):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0
todo, rss, pss = [int(sys.argv[1])], 0, 0
while todo:
    p = todo.pop()
    rss += field(f"/proc/{p}/status", "VmRSS:")
    pss += field(f"/proc/{p}/smaps_rollup", "Pss:")
    todo += kids(p)
print(f"RSS {rss / 1024:.1f} / PSS {pss / 1024:.1f}")
PY
}
wait_ping() { # url, pid
  for _ in $(seq 1 600); do
    node tests/immich/client.mjs "$1" ping 2>/dev/null | grep -q '"status":200' && return 0
    kill -0 "$2" 2>/dev/null || { echo "bench-immich: server at $1 exited" >&2; return 1; }
    sleep 0.1
  done
  echo "bench-immich: $1 never answered /ping" >&2
  return 1
}

"$py" tests/immich/reference.py --write-images "$work/img" >/dev/null
"$py" - "$work" <<'PY'
import json, sys
w = sys.argv[1]
img = f"{w}/img"
clip = {"modelName": "ViT-B-32__openai"}
cases = {
    "clip-visual": [{"image": f"{img}/preview.jpg", "entries": {"clip": {"visual": clip}}}],
    "clip-textual": [
        {"text": t, "entries": {"clip": {"textual": {**clip, "options": {"language": "en"}}}}}
        for t in ["an astronaut in a white suit", "a cup of coffee", "a cat on a sofa", "sunset over the sea"]
    ],
    "faces": [{"image": f"{img}/preview.jpg", "entries": {"facial-recognition": {
        "detection": {"modelName": "buffalo_l", "options": {"minScore": 0.7}},
        "recognition": {"modelName": "buffalo_l"}}}}],
    "ocr": [{"image": f"{img}/text.png", "entries": {"ocr": {
        "detection": {"modelName": "PP-OCRv5_mobile", "options": {"minScore": 0.5, "maxResolution": 736}},
        "recognition": {"modelName": "PP-OCRv5_mobile", "options": {"minScore": 0.8}}}}}],
}
for name, c in cases.items():
    with open(f"{w}/{name}.json", "w") as f:
        json.dump(c, f)
PY
tasks=${TASKS:-"clip-visual clip-textual faces ocr"}

ref_port=$(free_port)
"$py" tests/immich/reference.py --models "$models" --serve --host 127.0.0.1 --port "$ref_port" \
  2>"$work/reference.log" &
pids+=($!)
ref_pid=$!
herd_port=$(free_port)
mkdir -p "$work/data"
RUST_LOG=warn target/release/herd up --immich-models "$models" \
  --immich-listen "127.0.0.1:$herd_port" --listen 127.0.0.1:0 --http 127.0.0.1:0 \
  --data-dir "$work/data" 2>"$work/herd.log" &
pids+=($!)
herd_pid=$!
ref=http://127.0.0.1:$ref_port
herd=http://127.0.0.1:$herd_port
wait_ping "$ref" "$ref_pid"
wait_ping "$herd" "$herd_pid"
sleep 2 # let both settle before reading idle memory
ref_idle=$(tree_rss "$ref_pid")
herd_idle=$(tree_rss "$herd_pid")

# Cold start (first request loads the models), then one warm-up second each.
for t in $tasks; do
  for server in ref herd; do
    url=${!server}
    start=$(date +%s%N)
    node tests/immich/client.mjs "$url" batch "$work/$t.json" >"$work/cold-$server-$t.json"
    echo "$server $t $(( ($(date +%s%N) - start) / 1000000 ))" >>"$work/cold.txt"
    node tests/immich/client.mjs "$url" bench "$work/$t.json" 2 1 >/dev/null
  done
done

for c in $concurrencies; do
  for t in $tasks; do
    for server in ref herd; do
      url=${!server}
      out=$(node tests/immich/client.mjs "$url" bench "$work/$t.json" "$c" "$seconds")
      echo "{\"server\":\"$server\",\"task\":\"$t\",\"concurrency\":$c,\"result\":$out}" >>"$work/results.jsonl"
    done
  done
done
ref_after=$(tree_rss "$ref_pid")
herd_after=$(tree_rss "$herd_pid")

"$py" - "$work" "$ref_idle" "$herd_idle" "$ref_after" "$herd_after" <<'PY'
import json, sys
w, ref_idle, herd_idle, ref_after, herd_after = sys.argv[1:]
rows = [json.loads(l) for l in open(f"{w}/results.jsonl")]
by = {(r["server"], r["task"], r["concurrency"]): r["result"] for r in rows}
print("| task | concurrency | reference req/s | herd req/s | herd ÷ ref | ref p50 / p99 ms | herd p50 / p99 ms | errors ref / herd |")
print("|---|---|---|---|---|---|---|---|")
for (server, task, c), r in by.items():
    if server != "ref":
        continue
    h = by[("herd", task, c)]
    ratio = h["throughput"] / r["throughput"] if r["throughput"] else float("inf")
    print(f"| {task} | {c} | {r['throughput']:.1f} | {h['throughput']:.1f} | {ratio:.2f} | "
          f"{r['p50_ms']:.1f} / {r['p99_ms']:.1f} | {h['p50_ms']:.1f} / {h['p99_ms']:.1f} | "
          f"{r['errors']} / {h['errors']} |")
print()
print("cold first request (ms, models loaded by it):")
for line in open(f"{w}/cold.txt"):
    print("  " + line.strip())
for server in ("ref", "herd"):
    for task in ("clip-visual", "faces", "ocr"):
        try:
            body = json.load(open(f"{w}/cold-{server}-{task}.json"))[0]
            print(f"  {server} {task}: status {body['status']}")
        except (OSError, ValueError, IndexError, KeyError):
            pass
print()
print(f"memory of the process tree (MiB): reference idle {ref_idle}, after the run {ref_after}; "
      f"herd up with the Immich API idle {herd_idle}, after the run {herd_after}")
PY
