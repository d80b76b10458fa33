#!/usr/bin/env bash
# Issue 13 "must show", small: teacher and student trained on six nuScenes-mini scenes (3 variants
# each), then 2 closed-loop fine-tuning iterations; scene-0553 and scene-1094 are held out of all of it.
# Usage: scripts/finetune_holdout.sh [OUT_DIR]. Results: OUT/finetune/report.html (scores per
# iteration on the training drives, hard variants and held-out drives; GIFs of failures fixed).
set -euo pipefail
DATA="${AV_SHARED_DATA:-../shared/data}/nuscenes-mini"
OUT="${1:-runs/finetune-holdout}"
TRAIN="scene-0061,scene-0655,scene-0757,scene-0796,scene-1077,scene-1100"
HOLDOUT="scene-0553,scene-1094"

av data import --dataroot "$DATA" --out "$OUT/train" --scenes "$TRAIN"
av data import --dataroot "$DATA" --out "$OUT/holdout" --scenes "$HOLDOUT"
av scenarios variants --store "$OUT/train" --out "$OUT/train_var" --per-scenario 3 --seed 0
av train teacher --store "$OUT/train_var" --out "$OUT/run" --val-scenes scene-1100 --max-epochs 8 --no-progress
av distill --teacher "$OUT/run/teacher.ckpt" --store "$OUT/train_var" --out "$OUT/run" --val-scenes scene-1100 \
    --stride 4 --max-epochs 6 --lr 3e-4 --weight-decay 0.01 --no-progress
av closedloop train --teacher "$OUT/run/teacher.ckpt" --student "$OUT/run/student.ckpt" \
    --store "$OUT/train" --store "$OUT/holdout" --heldout-scenes "$HOLDOUT" --out "$OUT/finetune" \
    --iterations 2 --plan-every 5 --label-stride 10 --hardest 2 --per-failure 2 --gifs 2
