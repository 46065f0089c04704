#!/usr/bin/env bash
# The project's one prepared GPU check, for a task that is lent a GPU machine: the CUDA-only
# tests, then bench_mix and bench_step on the GPU, sized for one 10-minute device call (not timed
# on a GPU yet: none has been lent to this project). Run it once, from
# the repository root, with a 10-minute limit:
#
#   bash benchmarks/gpu_check.sh
#
# It needs torch, lightning, torchmetrics, torchvision, numpy and pytest on the machine (the lent
# GPU image has them, and timm); the package itself is used from this checkout (PYTHONPATH), so
# nothing is installed. The outputs go to $OUT (set on the lent machine) or ./gpu_check_out:
# device.txt, tests.txt, bench_mix_cuda.md, bench_step_cuda.md. Copy the tables into
# benchmarks/README.md with the date and the device.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
python=${PYTHON:-python3}
out=${OUT:-gpu_check_out}

if ! "$python" -c 'import torch, lightning, torchmetrics' 2>/dev/null; then
    echo "gpu_check: $python cannot import torch, lightning and torchmetrics; set PYTHON." >&2
    exit 2
fi
if ! "$python" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    echo "gpu_check: torch sees no CUDA device here; run this on a machine with a GPU." >&2
    exit 2
fi
mkdir -p "$out"
{
    date -u '+%Y-%m-%d %H:%M UTC'
    git rev-parse --short HEAD 2>/dev/null || true
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
    "$python" -c 'import torch, lightning; print("torch", torch.__version__, "lightning", lightning.__version__)'
} | tee "$out/device.txt"

# The tests that only a GPU runs (the rest of these files runs too: a few seconds).
"$python" -m pytest -q -p no:cacheprovider tests/test_memory.py tests/test_reliability.py \
    2>&1 | tee "$out/tests.txt"

# CIFAR-sized and ImageNet-sized batches; CUDA events time every measurement.
"$python" benchmarks/bench_mix.py --device cuda --repeats 15 \
    --sizes 128x3x32x32,256x3x32x32,64x3x224x224,256x3x224x224 | tee "$out/bench_mix_cuda.md"
"$python" benchmarks/bench_step.py --device cuda --steps 50 --runs 3 | tee "$out/bench_step_cuda.md"
echo "gpu_check: done; outputs in $out"
