#!/usr/bin/env bash
# One script for a CUDA machine: the CUDA tests, the benchmarks, one training step, and the
# pairwise_kl tuning sweep. Writes under $OUT (default bench/results/latest): gpu.txt,
# tests.log, results.json (+ benchmark.json, bench.log), train_step.json, tune.json; prints a
# short table last. Wheels in .whl/ (liger-kernel, cut-cross-entropy) are installed to
# /tmp/site first when present. Usage: bash bench/gpu_check.sh [tests] [bench] [train] [tune]
# (default: all four). Each stage has its own time limit (all four: under 8 minutes; on an H200
# they took 3.5); a failing stage does not stop the rest.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-bench/results/latest}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 TRITON_INTERPRET=0
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl \
        && export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
steps=" ${*:-tests bench train tune} "
status=0
nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.mem --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, triton, transformers; print('torch', torch.__version__, 'triton', triton.__version__, 'transformers', transformers.__version__)" | tee -a "$OUT/gpu.txt"

if [[ $steps == *" tests "* ]]; then
    timeout 120 python3 -m pytest -m cuda tests -q -p no:cacheprovider > "$OUT/tests.log" 2>&1 || status=1
    tail -4 "$OUT/tests.log"
fi
if [[ $steps == *" bench "* ]]; then
    MCCKD_BENCH_OUT="$OUT/results.json" timeout 200 python3 -m pytest bench -q -p no:cacheprovider \
        --benchmark-only --benchmark-json="$OUT/benchmark.json" > "$OUT/bench.log" 2>&1 || status=1
    tail -2 "$OUT/bench.log"
fi
if [[ $steps == *" train "* ]]; then
    timeout 80 python3 bench/train_step.py "$OUT/train_step.json" > "$OUT/train_step.log" 2>&1 || status=1
fi
if [[ $steps == *" tune "* ]]; then
    timeout 70 python3 bench/tune_pairwise_kl.py "$OUT/tune.json" > "$OUT/tune.log" 2>&1 || status=1
fi
echo "== summary =="
[[ -f "$OUT/tune.log" ]] && tail -13 "$OUT/tune.log"
[[ -f "$OUT/train_step.log" ]] && tail -3 "$OUT/train_step.log"
[[ -f "$OUT/results.json" ]] && python3 bench/report.py "$OUT/results.json"
exit $status
