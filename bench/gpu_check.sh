#!/usr/bin/env bash
# GPU check for the first lent device (issue #14): under 8 minutes on one H100/H200.
#
#   bash bench/gpu_check.sh            # full: embedding, OPQ64,IVF65536_HNSW32,PQ64 on 2.62 M
#                                      # vectors, 50 DDP steps of figclip-b16 (bf16)
#   bash bench/gpu_check.sh --smoke    # CPU, tiny sizes: every line once (results to a temp dir)
#
# Each part runs under its own time limit, so one that hangs cannot eat the others' time;
# results go to bench/results/gpu_check_{embed,index,train}.json ($FIGSEARCH_BENCH_RESULTS).
# PYTHON selects the interpreter (default .venv/bin/python, else python3).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[[ -x "$PY" ]] || PY=python3
SMOKE=()
LIMITS=(110 270 100)  # seconds: embed, index, train (sum + start-up < 480)
if [[ "${1:-}" == "--smoke" ]]; then
  SMOKE=(--smoke)
  LIMITS=(300 300 300)
  export FIGSEARCH_BENCH_RESULTS=${FIGSEARCH_BENCH_RESULTS:-$(mktemp -d)}
  export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}  # tiny tensors: threads only spin
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
start=$SECONDS
status=0
run() {  # run LIMIT NAME CMD...: time-limited, reports failures, goes on
  local limit=$1 name=$2; shift 2
  echo "gpu_check: == $name (limit ${limit}s) =="
  timeout --kill-after=10 "$limit" "$@"
  local rc=$?
  if (( rc != 0 )); then
    echo "gpu_check: $name FAILED (exit $rc$( ((rc == 124)) && echo ', time limit'))"
    status=1
  fi
}
"$PY" -c "import torch; print('gpu_check: torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')"
rm -f "${FIGSEARCH_BENCH_RESULTS:-bench/results}"/gpu_check_{embed,index,train}.json
run "${LIMITS[0]}" embed "$PY" -m bench.gpu_check embed "${SMOKE[@]}"
run "${LIMITS[1]}" index "$PY" -m bench.gpu_check index "${SMOKE[@]}"
run "${LIMITS[2]}" train "$PY" -m torch.distributed.run --standalone --nproc_per_node=1 \
    -m bench.gpu_check train "${SMOKE[@]}"
echo "gpu_check: == summary after $((SECONDS - start))s =="
"$PY" -m bench.gpu_check summary || status=1
exit $status
