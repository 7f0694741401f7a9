#!/usr/bin/env bash
# Builds herd and serves the real models fetched by scripts/setup.sh (magika and
# RapidOCR's PP-OCR det/rec/cls) on 127.0.0.1:8001, over the Triton/KServe v2 gRPC protocol.
# Extra arguments go to `herd agent` (try --help).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --release --locked
exec target/release/herd agent --model-repository .cache/models "$@"
