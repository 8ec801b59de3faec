#!/usr/bin/env bash
# Issue 15's GPU measurement, run on the device machine in one call after onnxruntime-gpu's parts are copied
# (../shared/tools/ort-gpu-prepare 4; calls 1-3 copy .ortgpu1-3 to /tmp/ortc; MNIST's test files in
# .devdata/mnist): where a sweep's time goes, then the sweep against the PyTorch loop. Writes under $OUT.
set -uo pipefail
source benchmarks/gpu_env.sh
timeout 120 python3 benchmarks/sweep_breakdown.py --data .devdata/mnist --device cuda 2>&1 | tee "$OUT/breakdown.md"
for m in channel pixel; do
  timeout 40 python3 benchmarks/profile_fast.py --device cuda --mode $m 2>&1 | grep -v Warning | tee -a "$OUT/profile.txt"
done
timeout 200 python3 benchmarks/shuffle_sweep.py --data .devdata/mnist --device cuda --repeats 3 --skip-direct \
  --models ${SWEEP_MODELS:-lenet5x10} 2>&1 | tee "$OUT/sweep.md"
[ -z "${GPU_TESTS:-}" ] || timeout 120 python3 -m pytest -q -x -p no:cacheprovider tests/analyses/test_shuffle.py \
  tests/engine/test_runtime.py -k "cuda" 2>&1 | tail -3 | tee "$OUT/gpu_tests.txt"
