#!/usr/bin/env bash
# The one prepared script for a CUDA machine: under 8 minutes on one H200 with every stage at its
# limit. Each stage has its own time limit, and a failing stage does not stop the rest:
#   tests          pytest -m cuda tests                                        95 s
#   kernels        pytest bench: pairwise_sym_kl, fused_linear_mcc            105 s
#   train          bench/train_step.py at the Qwen2.5-0.5B, then 1.5B shape    65 s + 125 s
#   tune           bench/tune_pairwise_kl.py, bench/tune_chunk_size.py         35 s + 25 s
# Writes into $OUT (default bench/results/latest) seven files, no subfolder:
#   gpu-check.log                       the card, the versions and every stage's output
#   results.json, results.png           the kernel benchmarks (bench/results/<gpu>.json's format)
#   train-step.json, train-step.png     the training steps (<gpu>-train-step.json's format)
#   tune-pairwise.json, tune-chunk.json the two sweeps
# and prints the tables last. Every benchmark writes its JSON as it goes, so a stage stopped at
# its limit keeps what it measured. Wheels in .whl/ (bash bench/fetch_wheels.sh: liger-kernel,
# cut-cross-entropy) are installed into /tmp/site first.
# Usage: bash bench/gpu_check.sh [tests] [kernels] [train] [tune]   (default: all four)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-bench/results/latest}
mkdir -p "$OUT"
LOG="$OUT/gpu-check.log"
: > "$LOG"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 TRITON_INTERPRET=0
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        .whl/*.whl >>"$LOG" 2>&1 && export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
steps=" ${*:-tests kernels train tune} "
status=0

stage() {  # stage NAME SECONDS COMMAND...: run COMMAND under its limit, its output into the log
    local name=$1 limit=$2 started=$SECONDS rc
    shift 2
    echo "== $name (limit ${limit} s): $*" >>"$LOG"
    timeout -k 10 "$limit" "$@" >>"$LOG" 2>&1
    rc=$?
    echo "== $name: exit $rc after $((SECONDS - started)) s$([[ $rc == 124 ]] && echo ', stopped at its limit')" \
        | tee -a "$LOG"
    [[ $rc == 0 ]] || status=1
}

{
    nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.mem,driver_version --format=csv
    python3 -c "import torch, triton, transformers as t; print(torch.__version__, triton.__version__, t.__version__)"
    python3 -c "import liger_kernel, cut_cross_entropy; print('liger-kernel and cut-cross-entropy import')"
} 2>&1 | tee -a "$LOG"

if [[ $steps == *" tests "* ]]; then
    stage tests 95 python3 -m pytest -m cuda tests -q -p no:cacheprovider
fi
if [[ $steps == *" kernels "* ]]; then
    stage kernels 105 env MCCKD_BENCH_OUT="$OUT/results.json" python3 -m pytest bench -q -p no:cacheprovider \
        --benchmark-only
fi
if [[ $steps == *" train "* ]]; then
    stage train-0.5b 65 python3 bench/train_step.py "$OUT/train-step.json" --shape qwen2.5-0.5b --sync-check
    stage train-1.5b 125 python3 bench/train_step.py "$OUT/train-step.json" --shape qwen2.5-1.5b
fi
if [[ $steps == *" tune "* ]]; then
    stage tune-pairwise 35 python3 bench/tune_pairwise_kl.py "$OUT/tune-pairwise.json"
    stage tune-chunk 25 python3 bench/tune_chunk_size.py "$OUT/tune-chunk.json"
fi

echo "== summary =="
grep -E "^[0-9]+ (passed|failed|error)" "$LOG" | tail -2  # the tests' and the kernels' pytest
for results in results train-step; do
    [[ -f "$OUT/$results.json" ]] && python3 bench/report.py "$OUT/$results.json" --plot "$OUT/$results.png" \
        2>&1 | tee -a "$LOG"
done
grep -E "^(fwd|bwd) G=|^N=[0-9]+ d=" "$LOG" | tail -20
exit $status
