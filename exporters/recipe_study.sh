#!/usr/bin/env bash
# Train the LeNet-5 pair under several recipes at once (one process per recipe) and pack the ONNX
# files, model cards and logs into $OUT/study-RECIPE.tgz. Meant for a GPU machine:
#   DATA=DIR DEVICE=cuda OUT=runs bash exporters/recipe_study.sh
# (STUDY_ARGS="--limit 256 --epochs 1" for a smoke run); then, anywhere:
#   for f in runs/study-*.tgz; do tar xzf "$f" -C runs; done
#   python -m exporters.recipe_study runs/study --data DIR
set -uo pipefail
export PYTHONPATH=$PWD:${PYTHONPATH:-} PYTHONUNBUFFERED=1
DATA=${DATA:?folder with the four MNIST files} DEVICE=${DEVICE:-cuda} OUT=${OUT:-runs} WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
declare -A RECIPES=(  # every flag spelled out: the exporter's defaults may change
  [adam8-shift]="--epochs 8 --optimizer adam --max-lr 3e-3 --weight-decay 1e-4 --max-shift 2"
  [adam8-shift-seed1]="--epochs 8 --optimizer adam --max-lr 3e-3 --weight-decay 1e-4 --max-shift 2 --seed 1"
  [adam30-shift]="--epochs 30 --optimizer adam --max-lr 3e-3 --weight-decay 1e-4 --max-shift 2"
  [adam30]="--epochs 30 --optimizer adam --max-lr 1e-3 --weight-decay 0 --max-shift 0"
  [sgd30]="--epochs 30 --optimizer sgd --max-lr 0.05 --weight-decay 5e-4 --max-shift 0"
  [sgd30-seed1]="--epochs 30 --optimizer sgd --max-lr 0.05 --weight-decay 5e-4 --max-shift 0 --seed 1"
  [sgd60]="--epochs 60 --optimizer sgd --max-lr 0.05 --weight-decay 5e-4 --max-shift 0"
)
for name in "${!RECIPES[@]}"; do
  mkdir -p "$WORK/study/$name"
  # shellcheck disable=SC2086
  timeout "${STUDY_TIMEOUT:-480}" python3 -m exporters --data "$DATA" --out "$WORK/study/$name" --device "$DEVICE" \
    ${RECIPES[$name]} ${STUDY_ARGS:-} >"$WORK/study/$name.log" 2>&1 &
done
wait
tail -n 2 "$WORK"/study/*.log
mkdir -p "$OUT"  # one archive per recipe (a GPU machine's $OUT may cap each file's size)
for name in "${!RECIPES[@]}"; do tar czf "$OUT/study-$name.tgz" -C "$WORK" "study/$name" "study/$name.log"; done
