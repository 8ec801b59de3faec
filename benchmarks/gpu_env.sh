# Sourced by the gpu_*.sh scripts on the device machine, after the calls that copied onnxruntime-gpu's first
# parts to /tmp/ortc (../shared/tools/ort-gpu-prepare): adds the last part (the highest .ortgpuN folder here),
# unpacks the wheel into /tmp/site, puts it and the project on PYTHONPATH, sets OUT and writes $OUT/env.txt.
last=$(ls -d .ortgpu* 2>/dev/null | sort -V | tail -1)
[ -n "$last" ] || { echo "no .ortgpuN folder was carried" >&2; exit 1; }
mkdir -p /tmp/ortc /tmp/site && cp "$last"/* /tmp/ortc/ && cat /tmp/ortc/part.* | xz -d -T8 | tar x -C /tmp/site || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}
{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  python3 -c "import onnxruntime as o, torch, numpy; o.preload_dlls(); print('onnxruntime', o.__version__, o.get_available_providers(), 'torch', torch.__version__, 'numpy', numpy.__version__)"
  nproc
} 2>&1 | tee "$OUT/env.txt"
