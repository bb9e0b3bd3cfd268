#!/usr/bin/env bash
# One script for a CUDA machine: the CUDA tests, the kernel tuning sweep and the benchmarks.
# Writes under $OUT (default bench/results/latest): tests.log, tune.json, results.json,
# benchmark.json, bench.log; prints a short table last. Wheels in .whl/ (liger-kernel,
# cut-cross-entropy) are installed to /tmp/site first when present. Usage:
#   bash bench/gpu_check.sh [all|tests|tune|bench]...   (default: all)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-bench/results/latest}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 TRITON_INTERPRET=0
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl \
        && export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
steps=${*:-all}
want() { [[ " $steps " == *" all "* || " $steps " == *" $1 "* ]]; }
status=0

nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.mem --format=csv | tee "$OUT/gpu.txt"
if want tests; then
    timeout 300 python3 -m pytest -m cuda tests -q -p no:cacheprovider -x 2>&1 | tee "$OUT/tests.log" || status=1
fi
if want tune; then
    timeout 200 python3 bench/tune_pairwise_kl.py "$OUT/tune.json" 2>&1 | tee "$OUT/tune.log" || status=1
fi
if want bench; then
    MCCKD_BENCH_OUT="$OUT/results.json" timeout 400 python3 -m pytest bench -q -p no:cacheprovider \
        --benchmark-only --benchmark-json="$OUT/benchmark.json" 2>&1 | tee "$OUT/bench.log" | tail -5 || status=1
    python3 bench/report.py "$OUT/results.json" || status=1
fi
exit $status
