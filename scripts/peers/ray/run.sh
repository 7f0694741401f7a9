#!/usr/bin/env bash
# Starts the Ray Serve peer from the venv that setup.sh made; arguments go to serve_app.py.
#   scripts/peers/ray/run.sh --model M.onnx --name NAME --grpc-port P --threads N \
#       --max-batch 8 --batch-wait 0.01 --replicas 1
# The Python process it becomes is Ray's driver: SIGTERM or SIGINT to it stops Serve and Ray.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../../.." && pwd)
venv=${HERD_CACHE:-$repo/.cache}/peers/ray/venv
[ -x "$venv/bin/python" ] || { echo "run.sh: no $venv; run $here/setup.sh" >&2; exit 1; }
exec "$venv/bin/python" "$here/serve_app.py" "$@"
