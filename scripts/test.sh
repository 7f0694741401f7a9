#!/usr/bin/env bash
# Runs herd's whole test suite on a fresh machine: fetches ONNX Runtime, the models and
# the Python protocol client (scripts/setup.sh), then builds once and runs every test
# in one cargo invocation.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo test --workspace --all-targets --locked "$@"
