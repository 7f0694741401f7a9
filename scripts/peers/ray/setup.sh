#!/usr/bin/env bash
# Creates the Ray Serve peer's Python environment:
#   $HERD_CACHE/peers/ray/venv   (HERD_CACHE defaults to <repo>/.cache)
# Ray Serve with its gRPC proxy, ONNX Runtime, and tritonclient[grpc] for the KServe v2 /
# Triton protobuf stubs (tritonclient.grpc.service_pb2{,_grpc}: GRPCInferenceService).
# Idempotent: a venv that already holds the pinned versions and imports them is kept
# (scripts/lib.sh's pinned_venv).
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

# shellcheck source=../../lib.sh
. "$repo/scripts/lib.sh"
pinned_venv "$venv" 'import ray, ray.serve, onnxruntime, numpy, grpc
from tritonclient.grpc import service_pb2, service_pb2_grpc
from ray.serve.config import gRPCOptions' "${pins[@]}"
