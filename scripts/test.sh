#!/usr/bin/env bash
# Runs herd's whole test suite on a fresh machine: fetches ONNX Runtime, the models and
# the Python protocol client (scripts/setup.sh), installs tmux for the dashboard's
# end-to-end test if it is missing, then builds once and runs every test in one cargo
# invocation.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if ! command -v tmux >/dev/null; then
  echo "test: installing tmux with apt (the dashboard's end-to-end test drives it)" >&2
  apt-get update -qq && apt-get install -y -qq tmux >/dev/null
fi
cargo test --workspace --all-targets --locked "$@"
