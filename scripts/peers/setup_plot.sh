#!/usr/bin/env bash
# The peer benchmark's report and plots: matplotlib in a virtualenv of its own,
# .cache/peers/plot/venv. Idempotent.
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
venv=${HERD_CACHE:-$repo/.cache}/peers/plot/venv
if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c 'import matplotlib' 2>/dev/null; then
  exit 0
fi
echo "setup-plot: creating $venv with matplotlib" >&2
python3 -m venv "$venv"
"$venv/bin/pip" install -q --disable-pip-version-check 'matplotlib==3.10.9'
