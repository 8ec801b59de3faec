#!/usr/bin/env bash
# The GPU checks, run on the device machine in one call after onnxruntime-gpu's parts are copied
# (see ../shared/tools/ort-gpu-prepare). Writes everything under $OUT.
set -uo pipefail
source benchmarks/gpu_env.sh
timeout 200 python3 benchmarks/shuffle_sweep.py --data .devdata/mnist --device cuda --repeats 3 ${SWEEP_ARGS:-} 2>&1 | tee "$OUT/gpu_sweep.md"
for m in channel pixel; do
  timeout 40 python3 benchmarks/profile_fast.py --device cuda --mode $m 2>&1 | tee -a "$OUT/gpu_profile.txt"
done
[ -n "${SKIP_SCALING:-}" ] || timeout 90 python3 benchmarks/scaling.py --data .devdata/mnist --device cuda --resnet 256 2>&1 | tee "$OUT/gpu_scaling.md"
timeout 60 python3 -m pytest -q -x -p no:cacheprovider tests/test_shuffle.py tests/test_surgery.py -k "cuda or fast or reference" 2>&1 | tail -3 | tee "$OUT/gpu_tests.txt"
