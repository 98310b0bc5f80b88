#!/usr/bin/env bash
# The wheels tools/gpu_check.sh installs on a GPU machine without a network whose Python already
# holds torch, torchvision, numpy, scipy, opencv, PyYAML and pytest (as the lent H100 / H200 images
# do): detseg's other needs, at the versions installed here, for CPython $PYVER (default 3.12)
# on x86-64 Linux, downloaded into .whl/ (git-ignored). Run here, where PyPI is reachable:
#
#     bash tools/gpu_wheels.sh            # then carry .whl/ with the working tree
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
PKGS="albumentations albucore pydantic pydantic_core annotated-types typing-inspection typing_extensions
      simsimd stringzilla pycocotools faster-coco-eval"
# shellcheck disable=SC2086  # PKGS is a list of names
specs=$("$PY" -c 'import sys
from importlib.metadata import version
print(" ".join(f"{n}=={version(n)}" for n in sys.argv[1:]))' $PKGS)
platforms=""
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
    platforms="$platforms --platform $p"
done
# shellcheck disable=SC2086
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "${PYVER:-3.12}" \
    --implementation cp $platforms -d .whl $specs
echo "gpu_wheels: $(ls .whl | wc -l) wheels in .whl/ ($specs)"
