#!/usr/bin/env bash
# MCC-KD against its CE baseline on GSM8K, on the GPUs of one machine: teacher rationales ->
# prepared records -> two students trained with torchrun (alpha = 0: CE only, the paper's
# Std-CoT; alpha = ALPHA: MCC-KD) -> exported model folders -> each served with vLLM ->
# accuracy on GSM8K and on the out-of-distribution sets, side by side.
#
#   TEACHER=gsm8k_teacher.jsonl TEST_DIR=mcckd-official examples/train_gsm8k.sh [--set KEY=VALUE ...]
#
# TEACHER:  raw teacher rationales, several per question (canonical records or the paper's
#           layout). Without it, set QUESTIONS (GSM8K train questions with their answers) and
#           ENDPOINT/TEACHER_MODEL (an OpenAI-compatible server) to sample them first.
# TEST_DIR: a folder with GSM8K/test.json (in distribution), SVAMP/test.json and ASDiv/test.json
#           (out of distribution), in the paper's layout.
# NGPU (default: all), OUT (default runs/gsm8k), ALPHA (default 0.1), PORT (default 8000),
# MAX_NEW_TOKENS (default 512); extra arguments go to both `mcckd train` runs.
#
# Needs mcckd on this machine (`pip install -e .`) and vLLM for the serving step
# (`pip install vllm`); with SERVE=0 the students are evaluated in-process instead (slower).
# Every step resumes: rerun the script after a crash and finished steps are skipped.
set -euo pipefail
cd "$(dirname "$0")/.."

TEST_DIR=${TEST_DIR:?set TEST_DIR to the folder of the GSM8K, SVAMP and ASDiv test sets}
OUT=${OUT:-runs/gsm8k}
NGPU=${NGPU:-$(nvidia-smi -L | wc -l)}
ALPHA=${ALPHA:-0.1}
PORT=${PORT:-8000}
SERVE=${SERVE:-1}
MAX_NEW_TOKENS=${MAX_NEW_TOKENS:-512}
mkdir -p "$OUT"

if [[ -z "${TEACHER:-}" ]]; then
    TEACHER="$OUT/teacher.jsonl"
    mcckd generate "${QUESTIONS:?set TEACHER, or QUESTIONS and ENDPOINT}" --task gsm8k \
        --endpoint "${ENDPOINT:?set ENDPOINT}" --model "${TEACHER_MODEL:?set TEACHER_MODEL}" \
        --num-samples 10 --temperature 0.7 --out "$TEACHER"
fi

# 1. keep the correct rationales, the K = 4 most diverse per question
mcckd prepare "$TEACHER" --task gsm8k --k 4 --out "$OUT/train.jsonl"

# 2. train both students on every GPU (DDP; add --set train.distributed=fsdp for students too
#    big for one), then 3. export each final checkpoint as a bfloat16 folder to serve
for name in ce mcckd; do
    alpha=$([[ $name == ce ]] && echo 0.0 || echo "$ALPHA")
    if [[ ! -d "$OUT/$name/export" ]]; then
        resume=$(compgen -G "$OUT/$name/run/checkpoints/step-*" > /dev/null && echo --resume || true)
        torchrun --standalone --nproc_per_node "$NGPU" -m mcckd train --config configs/gpu.yaml \
            --set data.train="$OUT/train.jsonl" --set train.out_dir="$OUT/$name/run" \
            --set train.alpha="$alpha" $resume "$@"
        final=$(ls -d "$OUT/$name"/run/checkpoints/step-* | sort | tail -n 1)
        mcckd export "$final" --out "$OUT/$name/export" --dtype bfloat16
    fi
done

# 4. serve each student with vLLM and 5. evaluate it on all test sets in one command
TEST_SETS=(--data "$TEST_DIR/GSM8K/test.json" --task gsm8k
           --data "$TEST_DIR/SVAMP/test.json" --task svamp
           --data "$TEST_DIR/ASDiv/test.json" --task asdiv)
for name in ce mcckd; do
    if [[ $SERVE == 0 ]]; then
        mcckd eval --model "$OUT/$name/export" "${TEST_SETS[@]}" --out "$OUT/$name/eval" \
            --max-new-tokens "$MAX_NEW_TOKENS" --batch-size 64
        continue
    fi
    vllm serve "$OUT/$name/export" --served-model-name "$name" --port "$PORT" \
        --max-model-len 2048 > "$OUT/$name/vllm.log" 2>&1 &
    server=$!
    trap 'kill $server 2>/dev/null || true' EXIT
    for _ in $(seq 600); do  # at most 10 minutes to load
        curl -sf "http://127.0.0.1:$PORT/health" > /dev/null && break
        kill -0 $server 2>/dev/null || { echo "vllm serve stopped: see $OUT/$name/vllm.log" >&2; exit 1; }
        sleep 1
    done
    mcckd eval --endpoint "http://127.0.0.1:$PORT/v1" --model "$name" --tokenizer "$OUT/$name/export" \
        "${TEST_SETS[@]}" --out "$OUT/$name/eval" --max-new-tokens "$MAX_NEW_TOKENS" --concurrency 64
    kill $server
    wait $server 2>/dev/null || true
    trap - EXIT
done

# 6. CE and MCC-KD side by side
for name in ce mcckd; do
    echo "## $name"
    cat "$OUT/$name/eval/summary.md"
done
