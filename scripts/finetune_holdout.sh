#!/usr/bin/env bash
# Issue 13 "must show": closed-loop fine-tuning (DAgger) of the distilled student on the six training
# drives of scripts/teacher_student_holdout.sh, with hard-example mining; scene-0553 and scene-1094
# stay held out of all of it. Run that script first (SEED=2 gives the student of the README).
# Usage: scripts/finetune_holdout.sh [HOLDOUT_RUN_DIR] [OUT_DIR]
# Results: OUT/report.html and OUT/report.json (scores per iteration on the training drives, the
# hard variants mined around the starting student's failures and the held-out drives; GIFs of
# failures fixed).
set -euo pipefail
RUN="${1:-runs/holdout}"
OUT="${2:-runs/finetune-holdout}"

av closedloop train --teacher "$RUN/run/teacher.ckpt" --student "$RUN/run/student.ckpt" \
    --store "$RUN/train" --store "$RUN/holdout" --heldout-scenes scene-0553,scene-1094 --out "$OUT" \
    --iterations 3 --plan-every 5 --label-stride 10 --fail-below 0.9 --hardest 4 --per-failure 2 --gifs 2

# The fine-tuned student (the run's best iteration, chosen on the training drives and hard variants)
# on the held-out scenes' 16 scenarios, as the distilled one was evaluated, PyTorch and ONNX.
BEST=$(python -c "import json, sys; print(json.load(open(sys.argv[1]))['best_student'])" "$OUT/report.json")
av export onnx --checkpoint "$BEST" --out "$OUT/student.onnx" --store "$RUN/holdout"
av closedloop eval --store "$RUN/holdout_var" --out "$OUT/eval" --agents log,idm --threads 1 --worst 0 --no-progress \
    --planner student,onnx --planner-arg "student:checkpoint=$BEST" --planner-arg "onnx:model=$OUT/student.onnx"
