#!/usr/bin/env bash
# Starts the PyTriton peer from the venv that setup.sh made; arguments go to server.py.
#   scripts/peers/pytriton/run.sh --model M.onnx --name NAME --grpc-port P --http-port P2 --threads N
# The backend stub that tritonserver starts links libpython3.X.so.1.0: the venv's base
# interpreter's LIBDIR goes first on LD_LIBRARY_PATH so it loads the same build as the venv
# (a pyenv Python beside Debian's libpython3.11 would otherwise get Debian's).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../../.." && pwd)
venv=${HERD_CACHE:-$repo/.cache}/peers/pytriton/venv
[ -x "$venv/bin/python" ] || { echo "run.sh: no $venv; run $here/setup.sh" >&2; exit 1; }
libdir=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_config_var("LIBDIR") if sysconfig.get_config_var("Py_ENABLE_SHARED") else "")')
if [ -n "$libdir" ]; then
  export LD_LIBRARY_PATH=$libdir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
fi
exec "$venv/bin/python" "$here/server.py" "$@"
