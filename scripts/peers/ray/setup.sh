#!/usr/bin/env bash
# Creates the Ray Serve peer's Python environment:
#   $HERD_CACHE/peers/ray/venv   (HERD_CACHE defaults to <repo>/.cache)
# Ray Serve with its gRPC proxy, ONNX Runtime, and tritonclient[grpc] for the KServe v2 /
# Triton protobuf stubs (tritonclient.grpc.service_pb2{,_grpc}: GRPCInferenceService).
# Idempotent: a venv that already holds the pinned versions and imports them is kept.
# Needs python3 (3.10-3.13: Ray 2.60's wheels) with venv, and PyPI.
set -euo pipefail

repo=$(cd "$(dirname "$0")/../../.." && pwd)
cache=${HERD_CACHE:-$repo/.cache}
venv=$cache/peers/ray/venv
log() { printf 'ray setup: %s\n' "$*" >&2; }

# Pins (resolved together by pip on 2026-12-07, `pip check` clean). Ray 2.60.0 is the newest
# Ray; it asks protobuf>=3.20.3, tritonclient 2.73.0 protobuf>=6.30,<7, ONNX Runtime
# protobuf>=4.25.8: protobuf 6.33.6 suits all three (tritonclient's stubs were made with
# 6.33.5 and check the runtime at import).
pins=(
  "ray[serve]==2.60.0"
  onnxruntime==1.31.1
  numpy==2.4.6
  grpcio==1.85.4
  protobuf==6.33.6
  "tritonclient[grpc]==2.73.0"
)

have() {
  [ -x "$venv/bin/python" ] && "$venv/bin/python" - "${pins[@]}" <<'PY' 2>/dev/null
import re, sys
from importlib.metadata import version
for pin in sys.argv[1:]:
    name, want = pin.split("==")
    if version(re.sub(r"\[.*\]", "", name)) != want:
        sys.exit(1)
import ray, ray.serve, onnxruntime, numpy, grpc  # noqa: F401
from tritonclient.grpc import service_pb2, service_pb2_grpc  # noqa: F401
from ray.serve.config import gRPCOptions  # noqa: F401
PY
}

if have; then
  log "$venv is ready"
  exit 0
fi

if ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
  sudo=
  [ "$(id -u)" -eq 0 ] || sudo=sudo
  log "installing python3-venv with apt"
  $sudo apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
fi

log "creating $venv with ${pins[*]}"
mkdir -p "$(dirname "$venv")"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/pip" install -q --disable-pip-version-check --only-binary=:all: "${pins[@]}"
have || { log "the venv does not import the pinned packages"; exit 1; }
log "$venv is ready"
