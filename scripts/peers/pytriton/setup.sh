#!/usr/bin/env bash
# Creates the PyTriton peer's Python environment (Triton's server binary comes inside the
# nvidia-pytriton wheel; ONNX Runtime runs in PyTriton's Python inference function):
#   $HERD_CACHE/peers/pytriton/venv   (HERD_CACHE defaults to <repo>/.cache)
# Idempotent: a venv that already holds the pinned versions is kept. Needs python3 (3.8-3.13,
# PyTriton ships a backend stub per minor version) with venv, and PyPI.
set -euo pipefail

repo=$(cd "$(dirname "$0")/../../.." && pwd)
cache=${HERD_CACHE:-$repo/.cache}
venv=$cache/peers/pytriton/venv
log() { printf 'pytriton setup: %s\n' "$*" >&2; }

# Pins. PyTriton 0.7.0 requires numpy<2.
pins=(nvidia-pytriton==0.7.0 onnxruntime==1.31.1 numpy==1.26.4)

have() {
  [ -x "$venv/bin/python" ] && "$venv/bin/python" - "${pins[@]}" <<'EOF' 2>/dev/null
import sys
from importlib.metadata import version
for pin in sys.argv[1:]:
    name, want = pin.split("==")
    if version(name) != want:
        sys.exit(1)
import pytriton, onnxruntime, numpy  # noqa: F401
EOF
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
"$venv/bin/pip" install -q --disable-pip-version-check "${pins[@]}"
have || { log "the venv does not import the pinned packages"; exit 1; }
log "$venv is ready"
