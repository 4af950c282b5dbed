#!/usr/bin/env bash
# The degradation problem (He et al. 2015, "Deep Residual Learning for Image Recognition",
# arXiv:1512.03385, Fig. 6) on CIFAR-10: plain 20- and 56-layer nets without shortcuts beside
# ResNet-20 and ResNet-56, all on the same short schedule. The paper's claim: the deeper plain net
# has the higher training error; the deeper residual net does not.
#
#   bash examples/resnet_cifar_degradation.sh [EPOCHS] [TRAIN_SUBSET] [WARMUP_EPOCHS] [MODELS]
#   bash examples/resnet_cifar_degradation.sh 7 15000     # the default: 7 epochs on 15,000 images
#   bash examples/resnet_cifar_degradation.sh 10 ""       # all 45,000 training images
#   bash examples/resnet_cifar_degradation.sh 7 15000 1   # with a 1-epoch linear lr warm-up
#
# Every run uses examples/configs/resnet20-cifar10-short.yaml (the paper's SGD, momentum 0.9,
# weight decay 1e-4, batch 128, lr 0.1, crop-and-flip augmentation; cosine decay) with --epochs
# EPOCHS, so the cosine schedule spans the EPOCHS, and with --train-subset TRAIN_SUBSET (one fixed,
# class-stratified draw from the 45,000 training images of the 45k/5k split, the same for the four
# models; empty for all 45,000), and --warmup-epochs WARMUP_EPOCHS (default 0, the config's; the
# paper warms its 110-layer net up at lr 0.01). MODELS (default "plain20 plain56 resnet20
# resnet56") sets the order in which they run. The same --seed, so the four see the same batches in the same
# order. Each run is one thread (--threads 1); the validation split (the 5,000 held-out training
# images) is evaluated only after the last epoch. Then examples/plot_degradation.py draws the four
# training-error curves and prints the final training errors.
set -euo pipefail
EPOCHS=${1:-7}
TRAIN_SUBSET=${2-15000}
CANON=${CANON:-canon}
PYTHON=${PYTHON:-python}
WARMUP=${3:-0}
MODELS=${4:-plain20 plain56 resnet20 resnet56}
OUT=${OUT:-docs/figures/resnet-cifar-degradation.png}
SUBSET=()
if [ -n "$TRAIN_SUBSET" ]; then SUBSET=(--train-subset "$TRAIN_SUBSET"); fi

RUNS=()
WARMUP_TAG=""
if [ "$WARMUP" != "0" ]; then WARMUP_TAG="-w${WARMUP}"; fi
for model in $MODELS; do
  run_dir="runs/degradation-${model}-e${EPOCHS}-sub${TRAIN_SUBSET:-all}${WARMUP_TAG}"
  echo "== ${model}_cifar -> ${run_dir} ($(date -Is))"
  $CANON train "${model}_cifar" --config examples/configs/resnet20-cifar10-short.yaml \
    --epochs "$EPOCHS" "${SUBSET[@]}" --warmup-epochs "$WARMUP" --eval-every "$EPOCHS" --threads 1 --quiet --out "$run_dir"
  RUNS+=(--run "${model}=${run_dir}")
done
echo "== done ($(date -Is))"
$PYTHON examples/plot_degradation.py "${RUNS[@]}" --out "$OUT"
