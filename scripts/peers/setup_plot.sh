#!/usr/bin/env bash
# The peer benchmark's report and plots: matplotlib in a virtualenv of its own,
# .cache/peers/plot/venv. Idempotent (scripts/lib.sh's pinned_venv).
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
cache=${HERD_CACHE:-$repo/.cache}
log() { printf 'setup-plot: %s\n' "$*" >&2; }
# shellcheck source=../lib.sh
. "$repo/scripts/lib.sh"
pinned_venv "$cache/peers/plot/venv" 'import matplotlib' matplotlib==3.10.9
