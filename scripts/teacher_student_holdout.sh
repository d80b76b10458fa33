#!/usr/bin/env bash
# Issue 9 "must show": train the teacher and distill the student on six nuScenes-mini scenes (and
# their variants), evaluate every planner on two held-out scenes (and their variants), non-reactive
# (log) and reactive (idm) agents. Usage: scripts/teacher_student_holdout.sh [OUT_DIR]
# Results: OUT/eval/summary.json (rows with cls, pdms, params, latency_ms) and OUT/eval/report.html.
set -euo pipefail
DATA="${AV_SHARED_DATA:-../shared/data}/nuscenes-mini"
OUT="${1:-runs/holdout}"
HOLDOUT="scene-0553,scene-1094"          # one Boston, one Singapore drive; never trained on
TRAIN="scene-0061,scene-0655,scene-0757,scene-0796,scene-1077,scene-1100"
VAL="scene-1100"                        # validation scene inside the training stores

av data import --dataroot "$DATA" --out "$OUT/train" --scenes "$TRAIN"
av data import --dataroot "$DATA" --out "$OUT/holdout" --scenes "$HOLDOUT"
av scenarios variants --store "$OUT/train" --out "$OUT/train_var" --per-scenario 7 --seed 0
av scenarios variants --store "$OUT/holdout" --out "$OUT/holdout_var" --per-scenario 7 --seed 1

av train teacher --store "$OUT/train_var" --out "$OUT/run" --val-scenes "$VAL" --max-epochs 11 --no-progress
# the distillation loss keeps its defaults: teacher's plan 0.3, its scores 1.0, the logged drive 1.0
av distill --teacher "$OUT/run/teacher.ckpt" --store "$OUT/train_var" --out "$OUT/run" --val-scenes "$VAL" \
    --stride 4 --max-epochs 15 --lr 1e-3 --weight-decay 0.01 --seed "${SEED:-0}" --no-progress

EVAL=(--store "$OUT/holdout_var" --out "$OUT/eval" --agents log,idm --threads 1 --worst 0 --no-progress --no-report)
av closedloop eval "${EVAL[@]}" --planner pdm_closed,idm,constant_velocity,log_replay
av closedloop eval "${EVAL[@]}" --planner teacher --checkpoint "$OUT/run/teacher.ckpt"
av export onnx --checkpoint "$OUT/run/student.ckpt" --out "$OUT/run/student.onnx" --store "$OUT/holdout"
av closedloop eval "${EVAL[@]/--no-report/--report}" --planner student,onnx \
    --planner-arg "student:checkpoint=$OUT/run/student.ckpt" --planner-arg "onnx:model=$OUT/run/student.onnx"
