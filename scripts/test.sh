#!/usr/bin/env bash
# Runs herd's whole test suite on a fresh machine: fetches ONNX Runtime, the models and
# the Python protocol client (scripts/setup.sh), installs tmux for the dashboard's
# end-to-end test and iproute2 for the multi-host tests if they are missing, then builds
# once and runs every test in one cargo invocation. The multi-host tests need root (they
# build network namespaces); without it they say SKIPPED and do nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if ! command -v tmux >/dev/null; then
  echo "test: installing tmux with apt (the dashboard's end-to-end test drives it)" >&2
  apt-get update -qq && apt-get install -y -qq tmux >/dev/null
fi
if ! command -v ip >/dev/null; then
  echo "test: installing iproute2 with apt (the multi-host tests build network namespaces)" >&2
  apt-get update -qq && apt-get install -y -qq iproute2 >/dev/null
fi
cargo test --workspace --all-targets --locked "$@"
