#!/usr/bin/env bash
# Fetches the GPU build of ONNX Runtime and the CUDA libraries its CUDA provider loads, from
# PyPI wheels, into the project-local cache $HERD_CACHE (default: <repo>/.cache):
#   onnxruntime-gpu/libonnxruntime.so   ONNX Runtime 1.31.1 from the onnxruntime-gpu wheel (CUDA 13),
#                                       with libonnxruntime_providers_shared.so and
#                                       libonnxruntime_providers_cuda.so beside it
#   onnxruntime-gpu/cuda/               the CUDA 13 runtime, cuBLAS(Lt), cuRAND, cuFFT, nvJitLink,
#                                       NVRTC and every cuDNN 9 library, from the nvidia-* wheels,
#                                       flattened under the names the loader asks for; the agent
#                                       prefers this ONNX Runtime and starts its workers with
#                                       LD_LIBRARY_PATH pointing here
#   wheels/                             the wheels, fetched without dependencies
# Runs only where an NVIDIA driver is (/proc/driver/nvidia/version, or nvidia-smi runs), which
# supplies libcuda.so.1 (CUDA 13 needs driver 580 or newer); HERD_GPU_SETUP=1 runs it anyway,
# HERD_GPU_SETUP=0 never. scripts/setup.sh calls it last (it uses that script's venv for pip).
# Idempotent: the directory is built beside its place and swapped in with a stamp naming the
# wheels, so an interrupted run leaves nothing half done; a rerun with the same stamp does nothing.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
cache=${HERD_CACHE:-$repo/.cache}
log() { printf 'setup-gpu: %s\n' "$*" >&2; }
# shellcheck source=lib.sh
. "$repo/scripts/lib.sh"

case ${HERD_GPU_SETUP:-} in
  0) log "skipped (HERD_GPU_SETUP=0)"; exit 0 ;;
  1) ;;
  *)
    if [ ! -e /proc/driver/nvidia/version ] && ! { command -v nvidia-smi >/dev/null && nvidia-smi >/dev/null 2>&1; }; then
      log "no NVIDIA driver: the GPU build of ONNX Runtime is not fetched (HERD_GPU_SETUP=1 fetches it anyway)"
      exit 0
    fi ;;
esac

driver=$( (grep -o '[0-9]\{3,\}\.[0-9][0-9.]*' /proc/driver/nvidia/version 2>/dev/null ||
  nvidia-smi --query-gpu=driver_version --format=csv,noheader 2>/dev/null) | head -n1 || true)
if [[ $driver =~ ^([0-9]+)\. ]] && [ "${BASH_REMATCH[1]}" -lt 580 ]; then
  log "warning: NVIDIA driver $driver is older than 580, the oldest CUDA 13 runs on: GPU models will not load"
fi

# What `pip install 'onnxruntime-gpu[cuda,cudnn]==1.31.1'` resolves to: its extras ask for
# nvidia-cuda-runtime~=13.0, nvidia-cuda-nvrtc~=13.0, nvidia-curand~=10.0, nvidia-cufft~=12.0 and
# nvidia-cudnn-cu13~=9.0; cuDNN brings nvidia-cublas and cuFFT nvidia-nvjitlink. The runtime was
# built with CUDA 13.0; newer 13.x libraries run on the same drivers (CUDA minor version compatibility).
ort_wheel=onnxruntime-gpu==1.31.1
cuda_wheels=(
  nvidia-cuda-runtime==13.5.37 # libcudart.so.13
  nvidia-cublas==13.10.0.20    # libcublas.so.13, libcublasLt.so.13
  nvidia-curand==10.4.5.25     # libcurand.so.10
  nvidia-cufft==12.5.0.14      # libcufft.so.12
  nvidia-nvjitlink==13.5.37    # libnvJitLink.so.13, which cuFFT needs
  nvidia-cuda-nvrtc==13.5.37   # libnvrtc.so.13 and its builtins, for cuDNN's runtime-compiled engines
  nvidia-cudnn-cu13==9.28.1.4  # libcudnn*.so.9: cuDNN 9's libraries, which dlopen each other
)

dest=$cache/onnxruntime-gpu
want=$(printf '%s\n' "$ort_wheel" "${cuda_wheels[@]}")
if [ -f "$dest/.herd-gpu-stamp" ] && [ "$(cat "$dest/.herd-gpu-stamp")" = "$want" ]; then
  log "$dest is ready"
  exit 0
fi

py=$cache/venv/bin/python
[ -x "$py" ] || { log "no $py: run scripts/setup.sh, which makes it and then calls this script"; exit 1; }

# Wheels for Linux x86-64 and CPython 3.11 (scripts/lib.sh's wheel). The nvidia-* wheels carry
# older manylinux tags than onnxruntime's, hence the list.
platforms=()
for tag in manylinux_2_28 manylinux_2_27 manylinux_2_17 manylinux2014 manylinux_2_12 manylinux2010 manylinux_2_5 manylinux1; do
  platforms+=(--platform "${tag}_x86_64")
done

# Extracts from a wheel into a directory: each rule is GLOB (members keep their base name) or
# GLOB=NAME; a rule that matches nothing is an error. Prints the names written.
extract() {
  "$py" - "$@" <<'PY'
import fnmatch, os, shutil, sys, zipfile
whl, out, *rules = sys.argv[1:]
with zipfile.ZipFile(whl) as z:
    for rule in rules:
        glob, _, name = rule.partition("=")
        members = [m for m in z.namelist() if fnmatch.fnmatchcase(m, glob)]
        if not members:
            sys.exit(f"setup-gpu: nothing in {whl} matches {glob}")
        for member in members:
            path = os.path.join(out, name or os.path.basename(member))
            with z.open(member) as src, open(path, "wb") as dst:
                shutil.copyfileobj(src, dst)
            os.chmod(path, 0o755)
            print(os.path.basename(path))
PY
}

whls=()
for spec in "$ort_wheel" "${cuda_wheels[@]}"; do
  whls+=("$(wheel "$py" "$spec" "${platforms[@]}" --python-version 3.11)")
done

mkdir -p "$cache"
tmp=$(mktemp -d "$cache/.onnxruntime-gpu.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/new/cuda"
log "extracting ONNX Runtime's CUDA provider and the CUDA libraries"
extract "${whls[0]}" "$tmp/new" \
  'onnxruntime/capi/libonnxruntime.so.1.31.1=libonnxruntime.so' \
  'onnxruntime/capi/libonnxruntime_providers_shared.so' \
  'onnxruntime/capi/libonnxruntime_providers_cuda.so' >/dev/null
# The libraries sit in nvidia/cu13/lib/ (CUDA) and nvidia/cudnn/lib/ (cuDNN), already under their sonames.
for whl in "${whls[@]:1}"; do
  extract "$whl" "$tmp/new/cuda" 'nvidia/*/lib/*.so*' >/dev/null
done

# Every library the CUDA provider and the CUDA libraries need must resolve, but for the driver's.
if command -v ldd >/dev/null; then
  missing=$(for lib in "$tmp/new/libonnxruntime_providers_cuda.so" "$tmp/new/cuda/"*; do
    LD_LIBRARY_PATH=$tmp/new/cuda ldd "$lib" | sed -n "s|^\s*\(\S*\) => not found|${lib##*/}: \1|p"
  done | grep -v ': libcuda\.so\.1$' | sort -u || true)
  if [ -n "$missing" ]; then
    log "libraries not found:"
    printf '%s\n' "$missing" >&2
    exit 1
  fi
fi

printf '%s\n' "$want" > "$tmp/new/.herd-gpu-stamp"
# swap the finished tree into place: a reader sees the old directory or the new one, never half of one
if [ -e "$dest" ]; then
  mv "$dest" "$tmp/old"
fi
mv "$tmp/new" "$dest"
rm -rf "$tmp"
trap - EXIT
log "done: $dest ($(du -sh "$dest" | cut -f1)), $(find "$dest/cuda" -name '*.so*' | wc -l) CUDA libraries in $dest/cuda"
