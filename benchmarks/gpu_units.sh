#!/usr/bin/env bash
# Issue 17's GPU measurement, run on the device machine in one call after onnxruntime-gpu's parts are copied
# (../shared/tools/ort-gpu-prepare 4): ResNet-50 (torchvision architecture, random weights, 3 x 224 x 224) unit
# times on CUDA, and the CUDA shuffle tests. Writes everything under $OUT.
set -uo pipefail
source benchmarks/gpu_env.sh
python3 -c "import torch; from exporters.resnet import ResNet50, export_resnet; torch.manual_seed(0); export_resnet(ResNet50(), '/tmp/r50.onnx', shape=(3, 224, 224), keep_bn=False)" || exit 1
timeout 300 python3 benchmarks/ray_scaling.py --skip-a --data none --resnet50 /tmp/r50.onnx --resnet50-images 64 \
  --batch-size 64 --device cuda --out "$OUT/ray_gpu_resnet50.json" 2>&1 | grep -v Warning | tee "$OUT/ray_gpu.log"
timeout 120 python3 -m pytest -q -x -p no:cacheprovider tests/analyses/test_shuffle.py tests/engine/test_runtime.py -k "cuda" 2>&1 | tail -3 | tee "$OUT/gpu_tests.txt"
