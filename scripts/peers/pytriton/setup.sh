#!/usr/bin/env bash
# Creates the PyTriton peer's Python environment (Triton's server binary comes inside the
# nvidia-pytriton wheel; ONNX Runtime runs in PyTriton's Python inference function):
#   $HERD_CACHE/peers/pytriton/venv   (HERD_CACHE defaults to <repo>/.cache)
# Idempotent: a venv that already holds the pinned versions is kept (scripts/lib.sh). Needs python3 (3.8-3.13,
# PyTriton ships a backend stub per minor version) with venv, and PyPI.
set -euo pipefail

repo=$(cd "$(dirname "$0")/../../.." && pwd)
cache=${HERD_CACHE:-$repo/.cache}
venv=$cache/peers/pytriton/venv
log() { printf 'pytriton setup: %s\n' "$*" >&2; }

# Pins. PyTriton 0.7.0 requires numpy<2.
pins=(nvidia-pytriton==0.7.0 onnxruntime==1.31.1 numpy==1.26.4)

# shellcheck source=../../lib.sh
. "$repo/scripts/lib.sh"
pinned_venv "$venv" 'import pytriton, onnxruntime, numpy' "${pins[@]}"
