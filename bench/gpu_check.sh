#!/usr/bin/env bash
# The GPU checks of issue 14 in one call on a lent GPU machine (README, "GPU"), within 8 minutes:
#   1. bench/gpu_paper_scale.py: paper-scale taming (128x128x3, 61 M parameters, batch 8+8) per precision
#      variant: s/iteration, the 800-iteration projection, peak memory, host syncs per iteration, bpd vs fp32
#   2. the test suite on CUDA: tests/cuda (skipped where there is no GPU) and the library's tests beside it
#   3. one real job through the worker, embedded mode, the shipped model, on CUDA (bench/gpu_job.py)
#   4. with the time left: torch.compile measured on the shipped model's architecture
# Figures and logs go to $OUT (the device tool brings that folder back; else ./gpu-check-out), the summary last.
#
# Here, once, before calling the device: bench/gpu_wheels.sh (the service's packages the GPU image lacks), then
#   run(command="bash bench/gpu_check.sh", carry=[".whl"], timeout_s=540)
# Without a GPU, `bash bench/gpu_check.sh --dry-run` runs the same steps small on the CPU.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-check-out}
mkdir -p "$OUT"
PY=${PY:-python3}
DRY=0
[ "${1:-}" = "--dry-run" ] && DRY=1
BUDGET=${BUDGET:-470}  # seconds for everything; the call's limit leaves room for the transfers
deadline=$((SECONDS + BUDGET))
SUMMARY="$OUT/gpu_check.txt"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH="/tmp/site:$PYTHONPATH"
fi

{
  echo "gpu_check $(date -u +%Y-%m-%dT%H:%M:%SZ) commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv,noheader 2>&1 \
    || echo "no nvidia-smi"
  $PY -c "import sys, torch; print('python', sys.version.split()[0], '| torch', torch.__version__, '| CUDA',
torch.version.cuda, '| GPU', torch.cuda.get_device_name() if torch.cuda.is_available() else None)"
  $PY -c "import app.migrate, worker.runner; print('ok')" 2>&1 | tail -1 | sed 's/^/service imports: /'
} > "$SUMMARY" 2>&1

# step NAME LIMIT COMMAND...: run COMMAND with at most LIMIT seconds (less when the budget is short), log to
# $OUT/NAME.log, and add its exit status, its time and the last lines of its output to the summary.
step() {
  local name=$1 limit=$2
  shift 2
  local left=$((deadline - SECONDS))
  [ "$left" -lt "$limit" ] && limit=$left
  if [ "$limit" -lt 30 ]; then
    echo "== $name: skipped, ${left} s of the budget left" >> "$SUMMARY"
    return
  fi
  local began=$SECONDS
  timeout --kill-after=10 "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  { echo "== $name: exit $rc after $((SECONDS - began)) s (limit $limit s)"; tail -n 14 "$OUT/$name.log"; } >> "$SUMMARY"
}

if [ "$DRY" = 1 ]; then
  step paper_scale 200 $PY bench/gpu_paper_scale.py --tiny --variants fp32,bf16,bf16+cl --iterations 20 \
    --out "$OUT/paper_scale.json"
  step pytest 200 $PY -m pytest -q -p no:cacheprovider -x tests/cuda tests/test_precision.py
  step job 300 $PY bench/gpu_job.py --device cpu --max-iterations 3 --out "$OUT/job.json"
else
  step paper_scale 200 $PY bench/gpu_paper_scale.py --variants tf32,bf16,bf16+cl --iterations 30 \
    --out "$OUT/paper_scale.json"
  step pytest 120 $PY -m pytest -q -p no:cacheprovider -m "not slow" tests/cuda tests/test_precision.py \
    tests/test_glow.py tests/test_losses.py tests/test_tame.py tests/test_evaluate.py
  step job 120 $PY bench/gpu_job.py --max-iterations 100 --precision tf32 --out "$OUT/job.json"
  step compile 150 $PY bench/gpu_paper_scale.py --arch att32 --remember 256 --variants tf32,tf32+compile \
    --iterations 20 --out "$OUT/compile.json"
fi
echo "== total $SECONDS s" >> "$SUMMARY"
cat "$SUMMARY"
