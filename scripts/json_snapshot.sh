#!/usr/bin/env bash
# The JSON (and CSV) every command writes for the shipped models, and for real exports when a folder of
# them is given, into OUT: run it before and after a refactor and compare the two folders with
#   for f in before/*; do cmp -s "$f" "after/${f##*/}" || echo "DIFF ${f##*/}"; done
# Usage: scripts/json_snapshot.sh OUT MNIST_DIR [REAL_MODELS_DIR]   (about 7 minutes on 2 cores)
set -u
out=$1 data=$2 real=${3:-}
mkdir -p "$out"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
: > "$out/rc.txt"
run() { local name=$1; shift; onnxredund "$@" > "$out/$name.json" 2> "$out/$name.err"; echo "$name rc=$?" >> "$out/rc.txt"; }
for m in lenet5 lenet5x10; do
  run "layers-$m" layers "models/$m.onnx" --json
  run "eval-$m" evaluate "models/$m.onnx" --data "$data" --limit 2000 --json --device cpu
  run "shuf-ch-$m" shuffle "models/$m.onnx" --layer conv2 --data "$data" --limit 1000 --json --device cpu
  run "shuf-px-$m" shuffle "models/$m.onnx" --layer 1 --mode pixel --data "$data" --limit 700 --batch-size 100 \
    --json --device cpu --repeats 2
  run "shuf-both-exact-$m" shuffle "models/$m.onnx" --layer conv2 --mode both --channels 0,2-4 --data "$data" \
    --limit 300 --exact-path --json --device cpu
  run "shuf-syn-$m" shuffle "models/$m.onnx" --layer conv2 --data synthetic:300 --json --device cpu
  run "imp-$m" impulse "models/$m.onnx" --json --device cpu
  run "imp-lin-$m" impulse "models/$m.onnx" --mode linear --zero-lag --json --device cpu
  run "imp-pos-$m" impulse "models/$m.onnx" --position 3,5 --layers conv2 --json --device cpu
  rm -rf "$work/audit"
  run "audit-$m" audit "models/$m.onnx" --data "$data" --limit 500 --json --device cpu --out "$work/audit"
  cp "$work/audit/results.json" "$out/audit-results-$m.json"
  for f in "$work"/audit/*.csv; do cp "$f" "$out/audit-$m-${f##*/}"; done
done
run reproduce reproduce --data "$data" --limit 1000 --json --device cpu --out "$work/reproduce"
cp "$work/reproduce/results.json" "$out/reproduce-results.json"
cp "$work/reproduce/claims.csv" "$out/reproduce-claims.csv"
if [ -n "$real" ]; then
  for f in "$real"/*.onnx; do
    n=$(basename "$f" .onnx)
    run "layers-$n" layers "$f" --json
    run "imp-$n" impulse "$f" --json --device cpu
  done
fi
cat "$out/rc.txt"
