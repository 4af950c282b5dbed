#!/usr/bin/env bash
# DeiT-style distillation on MNIST: does a trained ResNet-18 teacher improve the small ViT
# (deit_tiny_patch4_28) over the same ViT trained without it, for the same epochs?
#
#   bash examples/deit_distillation_mnist.sh [DATA_DIR] [EPOCHS] [SEEDS...]
#   bash examples/deit_distillation_mnist.sh ../shared/data/mnist 3 0 1 2            # all 60,000 images
#   TRAIN_SUBSET=600 bash examples/deit_distillation_mnist.sh ../shared/data/mnist 100 0 1 2 3 4 5   # 1 %
#
# Trains the teacher once (resnet18, ImageNet stem at 32 px, on the same training images as the
# student), then for every seed the ViT twice with every other setting equal: without a teacher,
# and with DeiT's soft distillation (eq. 2: (1-α)·CE(student, y) + α·τ²·KL(teacher/τ ‖ student/τ),
# τ=3, α=0.5). The two runs of one seed start from the same weights and see the same batches; only
# the loss differs. Each run is one thread, so two can run side by side on two cores. Prints each
# run's final test accuracy (on all 10,000 test images), then the paired t-test over the seeds.
#
# TRAIN_SUBSET=N trains teacher and students on one fixed, class-stratified draw of N training
# images (`canon train --train-subset`); the teacher then trains for EPOCHS too, and both warm up
# for a tenth of the epochs. AUGMENT (none | default) applies to both ViT arms; the teacher always
# trains with the default augmentation. AMP=1 trains both ViT arms with `--amp` (bfloat16 autocast,
# about 2.5x faster on a CPU with AVX512-BF16); the teacher trains in float32 either way.
set -euo pipefail
DATA_DIR=${1:-../shared/data/mnist}
EPOCHS=${2:-3}
shift $(( $# > 2 ? 2 : $# )) || true
SEEDS=${*:-0 1 2}
CANON=${CANON:-canon}
AUGMENT=${AUGMENT:-none}
TRAIN_SUBSET=${TRAIN_SUBSET:-}
AMP_FLAG=()
if [ "${AMP:-0}" = 1 ]; then AMP_FLAG=(--amp); fi

if [ -n "$TRAIN_SUBSET" ]; then
  SUBSET=(--train-subset "$TRAIN_SUBSET" --eval-every $(( (EPOCHS + 3) / 4 )))
  TAG="sub${TRAIN_SUBSET}"
  TEACHER_EPOCHS=$EPOCHS
  TEACHER_WARMUP=$(python3 -c "print($EPOCHS / 10)")
  VIT_WARMUP=$TEACHER_WARMUP
else
  SUBSET=()
  TAG="full"
  TEACHER_EPOCHS=5
  TEACHER_WARMUP=0.2
  VIT_WARMUP=0.3
fi
TEACHER=runs/resnet18-mnist-teacher-$TAG

if [ ! -f "$TEACHER/best.safetensors" ]; then
  "$CANON" train resnet18 --data mnist --data-dir "$DATA_DIR" "${SUBSET[@]}" --input-size 32 \
    --epochs "$TEACHER_EPOCHS" --batch-size 128 --lr 0.1 --optimizer nesterov --scheduler cosine \
    --warmup-epochs "$TEACHER_WARMUP" --weight-decay 5e-4 --seed 0 --threads 1 --quiet --out "$TEACHER"
fi

vit() {  # vit RUN_NAME SEED [extra options]
  local name=$1 seed=$2; shift 2
  "$CANON" train deit_tiny_patch4_28 --data mnist --data-dir "$DATA_DIR" "${SUBSET[@]}" --epochs "$EPOCHS" \
    --batch-size 32 --lr 1e-3 --optimizer adamw --scheduler cosine --warmup-epochs "$VIT_WARMUP" \
    --weight-decay 0.05 --augment "$AUGMENT" "${AMP_FLAG[@]}" --seed "$seed" --threads 1 --quiet --out "runs/$name" "$@"
}

RUN=deit-mnist-$TAG-$AUGMENT-e$EPOCHS${AMP_FLAG:+-amp}
for seed in $SEEDS; do
  vit "$RUN-s$seed" "$seed" & plain=$!
  vit "$RUN-s$seed-distilled" "$seed" --teacher "$TEACHER" --distillation soft --distillation-alpha 0.5 & distilled=$!
  wait "$plain"; wait "$distilled"  # a failed run stops the script (a bare `wait` would hide it)
done

accuracy() {  # the test accuracy in the last row of a run's history.csv
  python3 -c "import csv, sys; print(list(csv.DictReader(open(sys.argv[1])))[-1]['test_accuracy'])" "$1/history.csv"
}
printf 'teacher %-44s test accuracy %s\n' "$TEACHER" "$(accuracy "$TEACHER")"
for seed in $SEEDS; do
  for run in "runs/$RUN-s$seed" "runs/$RUN-s$seed-distilled"; do
    printf '%-52s test accuracy %s\n' "$run" "$(accuracy "$run")"
  done
done

# With two seeds or more: the paired t-test over the seeds (examples/paired_seed_test.py; needs scipy).
set -- $SEEDS
if [ $# -ge 2 ]; then
  python3 "$(dirname "$0")/paired_seed_test.py" --pair "runs/$RUN-s{seed}" "runs/$RUN-s{seed}-distilled" "$(echo $SEEDS | tr ' ' ',')"
fi
