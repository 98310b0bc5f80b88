#!/usr/bin/env bash
# The CUDA path's proof, one command on a machine with an NVIDIA GPU:
#
#     bash tools/gpu_check.sh [REPORT_DIR]        (default: gpu_report/)
#
# Makes sure detseg and its test dependencies import (installing them with pip when they do not:
# from PyPI, or with no network from the wheels that tools/gpu_wheels.sh puts in .whl/, installed
# without their dependencies beside the machine's own torch), then runs the GPU tests
# (tests/gpu, plus the op tests on the same device), the CUDA benchmarks of RoI pooling, RoIAlign
# and whole-model inference against torchvision's CUDA kernels (GPU_CHECK_TRAINING=1: and training
# from scratch against torchvision's detectors), and writes REPORT_DIR/report.md
# with every output. STEP_TIMEOUT (seconds, default 1200) bounds each step;
# GPU_CHECK_TESTS (default "tests/gpu tests/ops") picks the test paths.
# Exit status: 0 only if a GPU was found and every step passed.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-gpu_report}
# The output guard's rule in shell: a folder that holds files and no earlier report is the user's.
if [ -d "$OUT" ] && [ -n "$(ls -A "$OUT")" ] && [ ! -f "$OUT/steps.txt" ] && [ ! -f "$OUT/report.md" ]; then
    echo "error: $OUT: holds files that gpu_check did not write; choose an empty or new folder" >&2
    exit 2
fi
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 DETSEG_NO_PROGRESS=1

if ! "$PY" -c "import torch; assert torch.cuda.is_available()" 2>/dev/null; then
    echo "gpu_check: torch sees no CUDA device; nothing to check" | tee "$OUT/report.md"
    exit 1
fi
# cv2.ximgproc (selective search) is not needed here: no GPU test or benchmark uses it.
if ! "$PY" -c "import detseg, albumentations, pycocotools, pytest" 2>/dev/null; then
    if [ -d .whl ]; then
        # No network: only what the machine lacks, into a folder of its own, so that pip resolves
        # nothing against the machine's torch / opencv (whose versions differ from our pins).
        site="$(pwd)/$OUT/site"
        "$PY" -m pip install -q --no-index --no-deps --no-compile --upgrade --target "$site" .whl/*.whl || exit 1
        export PYTHONPATH="$site:$(pwd)${PYTHONPATH:+:$PYTHONPATH}"
        "$PY" -c "import detseg, albumentations, pycocotools, pytest" || exit 1
    else
        "$PY" -m pip install -q -e ".[dev]" || exit 1
    fi
fi

status=0
step() {  # step NAME COMMAND...: run, keep its output, remember a failure
    local name=$1; shift
    echo "== $name: $*"
    timeout "${STEP_TIMEOUT:-1200}" "$@" > "$OUT/$name.txt" 2>&1
    local rc=$?
    tail -n 40 "$OUT/$name.txt"
    [ $rc -eq 0 ] || { echo "== $name FAILED (exit $rc)"; status=1; }
    echo "$name $rc" >> "$OUT/steps.txt"
}
: > "$OUT/steps.txt"
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || true
# shellcheck disable=SC2086  # GPU_CHECK_TESTS is a list of paths
step tests "$PY" -m pytest -q -p no:cacheprovider ${GPU_CHECK_TESTS:-tests/gpu tests/ops}
# GPU_CHECK_WRITE=1: the benchmarks also write their tables into BENCHMARKS.md (CUDA sections).
WRITE=--no-write
[ "${GPU_CHECK_WRITE:-0}" = 1 ] && WRITE=
step roi_pool "$PY" benchmarks/roi_pool.py --device cuda $WRITE --json "$OUT/roi_pool_cuda.json"
step roi_align "$PY" benchmarks/roi_align.py --device cuda $WRITE --json "$OUT/roi_align_cuda.json"
step vs_torchvision "$PY" benchmarks/vs_torchvision.py --device cuda $WRITE --json "$OUT/vs_torchvision_cuda.json"
# GPU_CHECK_TRAINING=1: also train detseg's and torchvision's Faster / Mask R-CNN from scratch
# (two seeds each, GPU_CHECK_JOBS runs sharing the GPU at a time; box / mask AP, no timings)
if [ "${GPU_CHECK_TRAINING:-0}" = 1 ]; then
    step training "$PY" benchmarks/vs_torchvision_training.py --device cuda --jobs "${GPU_CHECK_JOBS:-8}" \
        --no-write --json "$OUT/vs_torchvision_training_cuda.json"
fi

{
    echo "# detseg GPU check"
    echo
    echo "$(date -u +%Y-%m-%dT%H:%MZ), $("$PY" -c 'import torch; print(torch.cuda.get_device_name(), "torch", torch.__version__)')"
    echo
    echo '| step | exit |'
    echo '|---|---|'
    while read -r name rc; do echo "| $name | $rc |"; done < "$OUT/steps.txt"
    for name in tests roi_pool roi_align vs_torchvision training; do
        [ -f "$OUT/$name.txt" ] || continue
        echo; echo "## $name"; echo; echo '```'; tail -n 60 "$OUT/$name.txt"; echo '```'
    done
} > "$OUT/report.md"
echo "gpu_check: report in $OUT/report.md (status $status)"
exit $status
