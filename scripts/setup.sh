#!/usr/bin/env bash
# Fetches everything herd needs that is not Rust source, into a project-local cache:
#   $HERD_CACHE (default: <repo>/.cache)
#     onnxruntime/libonnxruntime.so   ONNX Runtime 1.31.1, from the onnxruntime wheel on PyPI
#     models/                         a model repository with real models from PyPI wheels:
#                                     magika 1.0.3 and RapidOCR's PP-OCRv4 det/rec + mobile cls
#     venv/                           Python with tritonclient[grpc,http], for the protocol checks
# and, with apt when missing: etcd (the etcd store's tests run a real one) and protoc with
# the well-known .proto files (etcd-client's build script compiles etcd's API).
# Idempotent: what is already there is kept. Needs python3 with pip and venv, and PyPI.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
cache=${HERD_CACHE:-$repo/.cache}
mkdir -p "$cache"
log() { printf 'setup: %s\n' "$*" >&2; }
# shellcheck source=lib.sh
. "$repo/scripts/lib.sh"

# Installs Debian packages, through sudo unless already root; the index is updated once.
apt_updated=
apt_install() {
  local sudo=
  [ "$(id -u)" -eq 0 ] || sudo=sudo
  log "installing $* with apt"
  [ -n "$apt_updated" ] || { $sudo apt-get update -qq; apt_updated=1; }
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

# Python's venv module is missing on some Debian installs; apt has it.
if ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
  apt_install python3-venv
fi

# etcd 3.4 from Debian: the conformance suite runs the etcd store against a real one.
command -v etcd >/dev/null || apt_install etcd-server
# protoc and google/protobuf/*.proto, for etcd-client's build script.
if ! command -v protoc >/dev/null || [ ! -f /usr/include/google/protobuf/descriptor.proto ]; then
  apt_install protobuf-compiler libprotobuf-dev
fi

venv=$cache/venv
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import tritonclient.grpc, tritonclient.http, numpy' 2>/dev/null; then
  log "creating $venv with tritonclient[grpc,http] and numpy"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check 'tritonclient[grpc,http]==2.73.0' 'numpy>=1.26'
fi

# Wheels for Linux x86-64 and CPython 3.11 (scripts/lib.sh's wheel): their contents are
# extracted, not installed.
wheel311() { wheel "$venv/bin/python" "$1" --platform manylinux_2_28_x86_64 --python-version 3.11; }

# Extracts one member of a wheel (a zip) to a destination path.
extract() {
  local whl=$1 member=$2 dest=$3
  mkdir -p "$(dirname "$dest")"
  "$venv/bin/python" - "$whl" "$member" "$dest" <<'PY'
import shutil, sys, zipfile
whl, member, dest = sys.argv[1:]
with zipfile.ZipFile(whl) as z, z.open(member) as src, open(dest + ".part", "wb") as out:
    shutil.copyfileobj(src, out)
import os; os.replace(dest + ".part", dest)
PY
}

ort=$cache/onnxruntime/libonnxruntime.so
if [ ! -f "$ort" ]; then
  whl=$(wheel311 onnxruntime==1.31.1)
  extract "$whl" onnxruntime/capi/libonnxruntime.so.1.31.1 "$ort"
  log "ONNX Runtime at $ort"
fi

models=$cache/models
model() { # name, wheel spec, member, herd.toml contents
  local name=$1 spec=$2 member=$3 settings=$4
  if [ ! -f "$models/$name/1/model.onnx" ]; then
    extract "$(wheel311 "$spec")" "$member" "$models/$name/1/model.onnx"
    log "model $name ready"
  fi
  # Rewritten every time, so that a changed setting reaches existing caches.
  printf '%s\n' "$settings" > "$models/$name/herd.toml"
}
# magika runs slower per item beyond batch 8 on CPU (BENCHMARKS.md).
model magika magika==1.0.3 magika/models/standard_v3_3/model.onnx 'max_batch_size = 8'
model ocr_det rapidocr-onnxruntime==1.4.4 rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx 'max_batch_size = 8'
model ocr_rec rapidocr-onnxruntime==1.4.4 rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx 'max_batch_size = 32'
model ocr_cls rapidocr-onnxruntime==1.4.4 rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx 'max_batch_size = 32'

log "done: ONNX Runtime, models and Python client are in $cache"
bash "$repo/scripts/setup_immich.sh"
bash "$repo/scripts/setup_gpu.sh"
