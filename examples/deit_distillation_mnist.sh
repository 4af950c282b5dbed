#!/usr/bin/env bash
# DeiT-style distillation on MNIST: does a trained ResNet-18 teacher improve the small ViT
# (deit_tiny_patch4_28) over the same ViT trained without it, for the same epochs?
#
#   bash examples/deit_distillation_mnist.sh [DATA_DIR] [EPOCHS] [SEEDS...]
#   bash examples/deit_distillation_mnist.sh ../shared/data/mnist 3 0 1 2
#
# Trains the teacher once (resnet18, ImageNet stem at 32 px, 5 epochs), then for every seed the
# ViT twice with every other setting equal: without a teacher, and with DeiT's soft distillation
# (eq. 2: (1-α)·CE(student, y) + α·τ²·KL(teacher/τ ‖ student/τ), τ=3, α=0.5). The two runs of one
# seed start from the same weights and see the same batches; only the loss differs. Each run is
# one thread, so two can run side by side on two cores. Prints each run's final test accuracy.
set -euo pipefail
DATA_DIR=${1:-../shared/data/mnist}
EPOCHS=${2:-3}
shift $(( $# > 2 ? 2 : $# )) || true
SEEDS=${*:-0 1 2}
CANON=${CANON:-canon}
TEACHER=runs/resnet18-mnist-teacher

if [ ! -f "$TEACHER/best.safetensors" ]; then
  "$CANON" train resnet18 --data mnist --data-dir "$DATA_DIR" --input-size 32 --epochs 5 --batch-size 128 \
    --lr 0.1 --optimizer nesterov --scheduler cosine --warmup-epochs 0.2 --weight-decay 5e-4 --seed 0 \
    --threads 1 --quiet --out "$TEACHER"
fi

vit() {  # vit RUN_NAME SEED [extra options]
  local name=$1 seed=$2; shift 2
  "$CANON" train deit_tiny_patch4_28 --data mnist --data-dir "$DATA_DIR" --epochs "$EPOCHS" --batch-size 32 \
    --lr 1e-3 --optimizer adamw --scheduler cosine --warmup-epochs 0.3 --weight-decay 0.05 --augment none \
    --seed "$seed" --threads 1 --quiet --out "runs/$name" "$@"
}

for seed in $SEEDS; do
  vit "deit-mnist-e${EPOCHS}-s${seed}" "$seed" & plain=$!
  vit "deit-mnist-e${EPOCHS}-s${seed}-distilled" "$seed" \
    --teacher "$TEACHER" --distillation soft --distillation-alpha 0.5 & distilled=$!
  wait "$plain"; wait "$distilled"  # a failed run stops the script (a bare `wait` would hide it)
done

for seed in $SEEDS; do
  for run in "runs/deit-mnist-e${EPOCHS}-s${seed}" "runs/deit-mnist-e${EPOCHS}-s${seed}-distilled"; do
    printf '%-40s test accuracy %s\n' "$run" "$(tail -n 1 "$run/history.csv" | cut -d, -f7)"
  done
done
