#!/usr/bin/env bash
# MCC-KD on GSM8K on the GPUs of one machine: teacher rationales -> prepared records -> student
# -> test accuracy.
#
#   TEACHER=gsm8k_teacher.jsonl TEST=gsm8k_test.json examples/train_gsm8k.sh [--set KEY=VALUE ...]
#
# TEACHER: raw teacher rationales, several per question (canonical records or the paper's
#          layout). Without it, set QUESTIONS (GSM8K train questions with their answers) and
#          ENDPOINT/TEACHER_MODEL (an OpenAI-compatible server) to sample them first.
# TEST:    the GSM8K test set (e.g. ../shared/data/mcckd-official/GSM8K/test.json).
# NGPU (default: all), OUT (default runs/gsm8k); extra arguments go to `mcckd train`.
set -euo pipefail
cd "$(dirname "$0")/.."

TEST=${TEST:?set TEST to the GSM8K test records}
OUT=${OUT:-runs/gsm8k}
NGPU=${NGPU:-$(nvidia-smi -L | wc -l)}
mkdir -p "$OUT"

if [[ -z "${TEACHER:-}" ]]; then
    TEACHER="$OUT/teacher.jsonl"
    mcckd generate "${QUESTIONS:?set TEACHER, or QUESTIONS and ENDPOINT}" --task gsm8k \
        --endpoint "${ENDPOINT:?set ENDPOINT}" --model "${TEACHER_MODEL:?set TEACHER_MODEL}" \
        --num-samples 10 --temperature 0.7 --out "$TEACHER"
fi

# 1. keep the correct rationales, the K = 4 most diverse per question
mcckd prepare "$TEACHER" --task gsm8k --k 4 --out "$OUT/train.jsonl"

# 2. train on every GPU (DDP; add --set train.distributed=fsdp for students too big for one)
torchrun --standalone --nproc_per_node "$NGPU" -m mcckd train --config configs/gpu.yaml \
    --set data.train="$OUT/train.jsonl" --set train.out_dir="$OUT/run" "$@"

# 3. accuracy of the final checkpoint on the test set
FINAL=$(ls -d "$OUT"/run/checkpoints/step-* | sort | tail -n 1)
mcckd eval --model "$FINAL" --data "$TEST" --task gsm8k --out "$OUT/eval"
