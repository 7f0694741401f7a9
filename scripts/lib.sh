# Shared by the setup scripts, which source it after setting $cache and defining log().

# wheel PYTHON SPEC [PIP DOWNLOAD ARGS...]: downloads one wheel (no dependencies) into
# $cache/wheels with PYTHON's pip, once, and prints its path.
wheel() {
  local py=$1 spec=$2
  shift 2
  local dir=$cache/wheels name=${spec%%==*} version=${spec##*==}
  local pattern="${name//-/_}-${version}-*.whl" found
  mkdir -p "$dir"
  found=$(find "$dir" -maxdepth 1 -name "$pattern" | head -n1)
  if [ -z "$found" ]; then
    log "downloading $spec"
    "$py" -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: \
      "$@" -d "$dir" "$spec" >&2 || return 1
    found=$(find "$dir" -maxdepth 1 -name "$pattern" | head -n1)
  fi
  [ -n "$found" ] || { log "no wheel for $spec in $dir"; return 1; }
  printf '%s\n' "$found"
}

# pinned_venv VENV IMPORTS PIN...: a virtualenv holding exactly these pins (binary wheels),
# made again from nothing when the pins or python3 change; IMPORTS is Python that must run
# in it. A stamp written last marks it whole.
pinned_venv() {
  local venv=$1 imports=$2
  shift 2
  local stamp=$venv/.herd-stamp want
  want=$(printf '%s\n' "$(python3 -c 'import sys; print(sys.version.split()[0])')" "$@")
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && "$venv/bin/python" -c "$imports" 2>/dev/null; then
    log "$venv is ready"
    return 0
  fi
  log "creating $venv with $*"
  rm -rf "$venv"
  mkdir -p "$(dirname "$venv")"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check --only-binary=:all: "$@" >&2
  "$venv/bin/python" -c "$imports"
  printf '%s\n' "$want" >"$stamp"
  log "$venv ready"
}
