#!/bin/bash
# One call on the lent GPU machine: install carried wheels, build the kernels, run the GPU tests,
# run the benchmark. Logs and bench.json land in $OUT. Usage: bench/device_run.sh [tests|bench|all|suite]
set -o pipefail
export PYTHONUNBUFFERED=1
mode=${1:-all}
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site
fi
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader
python3 -c "import torch, sys; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'python', sys.version.split()[0])"
start=$(date +%s)
python3 -c "from engine.ops import cuda; ok = cuda.ensure_loaded(); print('kernels loaded:', ok, cuda.load_error() or '')" 2>&1 | tee "$OUT/build.log" | tail -40
echo "build+load seconds: $(( $(date +%s) - start ))"
if [ "$mode" = tests ] || [ "$mode" = all ]; then
  for t in tests/engine/test_gpu_model.py tests/kernels/test_attention.py tests/kernels/test_elementwise.py tests/kernels/test_quant_gemv.py; do
    timeout 300 python3 -m pytest -q -p no:cacheprovider "$t" -m gpu --maxfail=20 2>&1 | tee -a "$OUT/gpu_tests.log" | grep -E "passed|failed|FAILED|Error|error" | tail -12
  done
fi
if [ "$mode" = suite ]; then
  timeout 500 python3 -m pytest -q -p no:cacheprovider tests/kernels tests/engine -m "gpu or not gpu" 2>&1 | tee "$OUT/suite.log" | tail -30
fi
if [ "$mode" = bench ] || [ "$mode" = all ]; then
  timeout ${BENCH_TIMEOUT:-330} python3 bench/bench_gpu.py --json "$OUT/bench.json" --profile "$OUT/profile.txt" $BENCH_ARGS 2>&1 | tee "$OUT/bench.log" | tail -40
fi
