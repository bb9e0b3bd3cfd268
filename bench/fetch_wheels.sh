#!/usr/bin/env bash
# Download the peers' wheels for a GPU machine that has no package registry: liger-kernel and
# cut-cross-entropy, both pure Python (py3-none-any), without their dependencies (torch and
# triton are on the machine). They land in .whl/ (ignored by git); bench/gpu_check.sh installs
# whatever it finds there. Usage: bash bench/fetch_wheels.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
WHEELS=("liger-kernel==0.8.5" "cut-cross-entropy==25.1.1")
mkdir -p .whl
"$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform any -d .whl "${WHEELS[@]}"
ls -l .whl
