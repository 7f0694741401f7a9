#!/usr/bin/env bash
# Builds herd and runs `herd up` — a scheduler and a local agent in one process — on
# the real models fetched by scripts/setup.sh (magika and RapidOCR's PP-OCR
# det/rec/cls), serving the Triton/KServe v2 gRPC protocol on 127.0.0.1:8001 and
# metrics on 127.0.0.1:8000. Extra arguments go to `herd up` (try --help).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --release --locked
exec target/release/herd up --model-repository .cache/models --data-dir .cache/herd "$@"
