#!/usr/bin/env bash
# Checks herd on a machine with an NVIDIA GPU, from a fresh clone: runs scripts/setup.sh (which
# fetches the GPU build of ONNX Runtime and the CUDA libraries when a driver is present), builds
# the release binary, serves the real magika model twice with `herd up` — magika_cpu
# (device = "cpu") and magika_gpu (device = "gpu"), max_batch_size = 8 each — and prints one
# table: the GPU model's outputs against the CPU model's on the same random inputs, throughput
# and p50/p99 at concurrency 1 and 16 (herd bench), raw ONNX Runtime in-process on each device
# (herd bench --local, batch 1 and 8), and GPU memory before load, loaded, after the
# benchmark and after unload (nvidia-smi). The table also goes to $OUT/gpu-check.txt when OUT
# is set, else to target/gpu-check.txt. Exits non-zero, saying why, without a GPU or when a step
# fails. Usage: scripts/gpu-check.sh   (DURATION=5s: how long each benchmark step measures)
set -euo pipefail
cd "$(dirname "$0")/.."
trap 'echo "gpu-check: failed (line $LINENO): $BASH_COMMAND" >&2' ERR
fail() { echo "gpu-check: $*" >&2; exit 1; }

command -v nvidia-smi >/dev/null || fail "no nvidia-smi: this check needs a machine with an NVIDIA GPU and its driver"
gpu=$(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null | head -n1) ||
  fail "nvidia-smi finds no GPU: $(nvidia-smi 2>&1 | head -n1)"
[ -n "$gpu" ] || fail "nvidia-smi lists no GPU"

bash scripts/setup.sh
[ -f .cache/onnxruntime-gpu/libonnxruntime.so ] ||
  fail "scripts/setup.sh did not fetch the GPU ONNX Runtime (.cache/onnxruntime-gpu); see its log above"
cargo build --release --locked

herd=target/release/herd
python=.cache/venv/bin/python
out=${OUT:+$OUT/gpu-check.txt}
out=${out:-target/gpu-check.txt}
mkdir -p "$(dirname "$out")"
duration=${DURATION:-5s}
work=$(mktemp -d)
up_pid=
cleanup() {
  local rc=$?
  if [ -n "$up_pid" ]; then
    kill "$up_pid" 2>/dev/null || true
    wait "$up_pid" 2>/dev/null || true
  fi
  if [ "$rc" -ne 0 ] && [ -f "$work/up.log" ]; then
    echo "gpu-check: the last lines of herd up's log:" >&2
    tail -n 20 "$work/up.log" >&2
  fi
  rm -rf "$work"
}
trap cleanup EXIT

for device in cpu gpu; do
  mkdir -p "$work/models/magika_$device/1"
  cp .cache/models/magika/1/model.onnx "$work/models/magika_$device/1/"
  printf 'device = "%s"\nmax_batch_size = 8\n' "$device" >"$work/models/magika_$device/herd.toml"
done

# GPU memory in MiB, summed over GPUs; and each process that holds some, as "pid:MiB".
gpu_mib() { nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits | awk '{s += $1} END {print s}'; }
gpu_apps() {
  local apps
  apps=$(nvidia-smi --query-compute-apps=pid,used_memory --format=csv,noheader,nounits | tr -d ' ' | paste -sd' ' -)
  echo "${apps:-none}"
}
workers() { pgrep -P "$up_pid" | paste -sd' ' - || true; } # herd up's children: one herd worker per loaded model

mem_before=$(gpu_mib) apps_before=$(gpu_apps)

export HERD_TOKEN=gpu-check
NO_COLOR=1 "$herd" up --listen 127.0.0.1:0 --http 127.0.0.1:0 --model-repository "$work/models" \
  --data-dir "$work/data" >/dev/null 2>"$work/up.log" &
up_pid=$!
for _ in $(seq 600); do
  grep -q "joined the cluster" "$work/up.log" && break
  kill -0 "$up_pid" 2>/dev/null || fail "herd up exited"
  sleep 0.1
done
grep -q "joined the cluster" "$work/up.log" || fail "herd up did not get ready within 60 s"
HERD_SCHEDULER=$(sed -n 's/.*scheduler and local agent serving addr=\([^ ]*\).*/\1/p' "$work/up.log" | head -n1)
export HERD_SCHEDULER

"$herd" models load magika_cpu --timeout 180s >&2 || fail "magika_cpu did not load"
cpu_worker=$(workers)
"$herd" models load magika_gpu --timeout 180s >&2 || fail "magika_gpu did not load (no GPU placement, or ONNX Runtime's CUDA provider failed)"
gpu_worker=$(for p in $(workers); do [[ " $cpu_worker " == *" $p "* ]] || echo "$p"; done | paste -sd' ' -)
cuda_mapped=no
for p in $gpu_worker; do grep -q libonnxruntime_providers_cuda.so "/proc/$p/maps" 2>/dev/null && cuda_mapped=yes; done
ort_mapped=$(for p in $gpu_worker; do grep -o '/[^ ]*/libonnxruntime\.so[.0-9]*$' "/proc/$p/maps" 2>/dev/null; done | sort -u | paste -sd' ' -)
gpu_device=$("$herd" models show magika_gpu --json --window 0s |
  "$python" -c 'import json,sys; print(",".join(r.get("device", "?") for r in json.load(sys.stdin).get("replicas", [])) or "none")')
mem_loaded=$(gpu_mib) apps_loaded=$(gpu_apps)

# The same random inputs to both models, at batch sizes 1 to 8: largest difference of target_label.
compare=$("$python" - "$HERD_SCHEDULER" <<'PY'
import sys
import numpy as np
import tritonclient.grpc as g
client = g.InferenceServerClient(sys.argv[1])
rng = np.random.default_rng(12)
diff, agree, items = 0.0, 0, 0
for n in (1, 2, 3, 5, 8, 8):
    x = rng.integers(0, 257, size=(n, 2048), dtype=np.int32)  # byte values, 256 = padding
    out = {}
    for model in ("magika_cpu", "magika_gpu"):
        inp = g.InferInput("bytes", [n, 2048], "INT32")
        inp.set_data_from_numpy(x)
        out[model] = client.infer(model, [inp]).as_numpy("target_label")
    cpu, gpu = out["magika_cpu"], out["magika_gpu"]
    assert cpu.shape == gpu.shape == (n, 214), (cpu.shape, gpu.shape)
    diff = max(diff, float(np.abs(cpu - gpu).max()))
    agree += int((cpu.argmax(1) == gpu.argmax(1)).sum())
    items += n
print(f"{diff:.3g} {agree}/{items}")
PY
) || fail "inference on magika_cpu and magika_gpu failed"

# rps p50_ms p99_ms errors, for one model at one concurrency.
bench() {
  "$herd" bench "$1" --json --warmup 1s --duration "$duration" --concurrency "$2" |
    "$python" -c 'import json,sys; r=json.loads(sys.stdin.readline()); print("%.0f %.2f %.2f %d" % (r["throughput_rps"], r["p50_us"] / 1e3, r["p99_us"] / 1e3, r["errors"]))'
}
declare -A result
for c in 1 16; do
  for device in cpu gpu; do
    echo "gpu-check: herd bench magika_$device at concurrency $c for $duration" >&2
    result[$device,$c]=$(bench "magika_$device" "$c") || fail "herd bench magika_$device failed"
  done
done
mem_bench=$(gpu_mib) apps_bench=$(gpu_apps)

# Raw ONNX Runtime in-process on each device, batch 1 and 8: the limit herd's figures compare with.
raw() {
  "$herd" bench magika --local .cache/models/magika/1/model.onnx --local-batch 1,8 --json \
    --warmup 1s --duration "$duration" "$@" |
    "$python" -c 'import json,sys; print(" ".join("%.0f" % json.loads(l)["items_per_s"] for l in sys.stdin))'
}
echo "gpu-check: raw ONNX Runtime on the CPU and on GPU 0" >&2
raw_cpu=$(raw) || fail "raw ONNX Runtime on the CPU failed"
raw_gpu=$(LD_LIBRARY_PATH=.cache/onnxruntime-gpu/cuda${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH} raw --local-gpu 0) ||
  fail "raw ONNX Runtime on GPU 0 failed (herd bench --local-gpu 0)"

"$herd" models unload magika_gpu >&2 || fail "unloading magika_gpu failed"
"$herd" models unload magika_cpu >&2 || fail "unloading magika_cpu failed"
for _ in $(seq 300); do # the workers exit after unload; give them 30 s
  [ -z "$(workers)" ] && break
  sleep 0.1
done
left=$(workers)
mem_unloaded=$(gpu_mib) apps_unloaded=$(gpu_apps)

{
  echo "herd GPU check, $(date -u +%Y-%m-%dT%H:%MZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
  echo "GPU: $gpu; magika (bytes int32 [N,2048] -> target_label f32 [N,214]), max_batch_size 8"
  echo "magika_gpu: replica device $gpu_device, worker pid ${gpu_worker:-none}, CUDA provider loaded: $cuda_mapped, ONNX Runtime: ${ort_mapped:-?}"
  echo
  printf '%-26s %16s %16s %8s\n' "" cpu gpu gpu/cpu
  read -r diff agree <<<"$compare"
  printf '%-26s %16s %16s   %s\n' "outputs: max abs diff" - "$diff" "(argmax agrees on $agree)"
  for c in 1 16; do
    read -r crps cp50 cp99 cerr <<<"${result[cpu,$c]}"
    read -r grps gp50 gp99 gerr <<<"${result[gpu,$c]}"
    printf '%-26s %16s %16s %8s\n' "c=$c throughput (req/s)" "$crps" "$grps" "$("$python" -c "print(f'{$grps/max($crps,1):.2f}x')")"
    printf '%-26s %16s %16s %8s\n' "c=$c p50 / p99 (ms)" "$cp50 / $cp99" "$gp50 / $gp99" -
    [ "$cerr$gerr" = 00 ] || printf '%-26s %16s %16s\n' "c=$c errors" "$cerr" "$gerr"
  done
  read -r rc1 rc8 <<<"$raw_cpu"
  read -r rg1 rg8 <<<"$raw_gpu"
  printf '%-26s %16s %16s\n' "raw ORT items/s, b=1 / b=8" "$rc1 / $rc8" "$rg1 / $rg8"
  echo
  echo "GPU memory used (MiB)  [per process: pid:MiB]"
  printf '  %-22s %8s  [%s]\n' "before load" "$mem_before" "$apps_before" \
    "loaded" "$mem_loaded" "$apps_loaded" \
    "after the benchmark" "$mem_bench" "$apps_bench" \
    "after unload" "$mem_unloaded" "$apps_unloaded"
  [ -z "$left" ] || echo "  herd workers still running 30 s after unload: $left"
} | tee "$out.part"
mv "$out.part" "$out"
echo "gpu-check: table written to $out" >&2
