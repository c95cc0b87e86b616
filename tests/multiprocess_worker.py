"""One rank of `tests/test_multiprocess.py`: run a step of each trainer under `accelerate launch` and record what
this rank saw, for the test to compare across ranks.

    accelerate launch --cpu --num_processes 2 --num_machines 1 --mixed_precision no \
        tests/multiprocess_worker.py OUT_DIR [sft opd grpo]

Writes OUT_DIR/<trainer>_rank<r>.json with: a hash of the parameters before and after the step, the prompts this
rank decoded (and their completion lengths), the rows it trained on (SFT), the reward / validity values it computed,
and the trainer's log history. Validity is instrumented to be 1 on rank 0 and 0 on rank 1, so a metric that is
not gathered over processes shows up as 1.0 or 0.0 instead of 0.5.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import os
import sys
from pathlib import Path

import torch
from datasets import Dataset
from ranking_rows import ITEMS, ranking_rows  # tests/ is this script's sys.path[0]

import dgr2_trl.rewards.functions as functions_module
import dgr2_trl.trainers.diffusion_grpo_trainer as grpo_module
import dgr2_trl.trainers.opd_trainer as opd_module
from dgr2_trl.modeling import convert_to_block_diffusion, tiny_causal_lm
from dgr2_trl.samplers.block_diffusion import BlockDiffusionSampler
from dgr2_trl.tokenization import train_chat_tokenizer
from dgr2_trl.trainers import (
    DiffusionGRPOConfig,
    DiffusionGRPOTrainer,
    DiffusionSFTConfig,
    DiffusionSFTTrainer,
    OnPolicyDistillConfig,
    OnPolicyDistillTrainer,
    ValidRateCallback,
)


RANK = int(os.environ.get("RANK", 0))  # set by the launcher (torchrun) before any process group exists
RECORD: dict[str, list] = {"decoded": [], "completion_lengths": [], "validity": [], "rewards": [], "sample_index": []}


def prompt_key(prompt) -> str:
    return prompt if isinstance(prompt, str) else prompt[-1]["content"]


# ---- instruments ---------------------------------------------------------------------------------------------------
_generate = BlockDiffusionSampler.generate


def recording_generate(self, prompts, *args, **kwargs):
    out = _generate(self, prompts, *args, **kwargs)
    RECORD["decoded"].extend(prompt_key(p) for p in prompts)
    RECORD["completion_lengths"].extend(len(c) for c in out.completion_ids)
    return out


def rank_validity(text, candidates, *args, **kwargs):
    """parse_ranking's result with `valid` forced to (rank == 0): makes a non-gathered metric visible."""
    result = dataclasses.replace(_parse_ranking(text, candidates, *args, **kwargs), valid=RANK == 0)
    RECORD["validity"].append(float(RANK == 0))
    return result


_parse_ranking = functions_module.parse_ranking
BlockDiffusionSampler.generate = recording_generate
functions_module.parse_ranking = rank_validity  # what validity_reward, and so the SFT ValidRateCallback, calls
opd_module.parse_ranking = rank_validity
grpo_module.parse_ranking = rank_validity


def recorded_reward(prompts, completions, **kwargs):
    """Varies within a group (so the GRPO loss is not zero) and by rank (so a local mean differs from the global)."""
    texts = [c if isinstance(c, str) else c[-1]["content"] for c in completions]
    values = [10.0 * RANK + (len(t) % 7) for t in texts]
    RECORD["rewards"].extend(values)
    return values


# ---- data and models -----------------------------------------------------------------------------------------------
def rows(n: int = 8) -> Dataset:
    return ranking_rows(n)


def tokenizer():
    return train_chat_tokenizer(
        ["query rank these items into a ranking json list"] * 10, vocab_size=300, extra_special_tokens=ITEMS
    )


def tiny(tok, seed=0):
    return tiny_causal_lm(
        len(tok) + 1,
        "qwen3",
        hidden_size=32,
        num_layers=1,
        num_heads=2,
        num_kv_heads=1,
        intermediate_size=64,
        seed=seed,
        initializer_range=0.5,
    )


def common(out: Path, name: str) -> dict:
    return dict(
        output_dir=str(out / name),
        max_steps=1,
        per_device_train_batch_size=2,
        report_to="none",
        logging_steps=1,
        save_strategy="no",
        use_cpu=True,
        bf16=False,
        seed=0,
        learning_rate=1e-2,
        disable_tqdm=True,
        dataloader_num_workers=0,
    )


def param_hash(model) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().to("cpu", torch.float64).numpy().tobytes())
    return digest.hexdigest()


class RecordingSFT(DiffusionSFTTrainer):
    def compute_loss(self, model, inputs, *args, **kwargs):
        if model.training:
            RECORD["sample_index"].extend(inputs["sample_index"].tolist())
        return super().compute_loss(model, inputs, *args, **kwargs)


def build(name: str, out: Path):
    tok = tokenizer()
    if name == "sft":
        args = DiffusionSFTConfig(**common(out, name), block_size=4, activation_checkpointing=False)
        trainer = RecordingSFT(tiny(tok), args=args, train_dataset=rows(), eval_dataset=rows(), processing_class=tok)
        trainer.add_callback(ValidRateCallback(trainer, num_prompts=4, max_new_tokens=8))
        return trainer
    if name == "opd":
        student, student_tok = convert_to_block_diffusion(tiny(tok), copy.deepcopy(tok), block_size=4)
        args = OnPolicyDistillConfig(
            **common(out, name),
            max_completion_length=8,
            num_rollouts_per_prompt=2,
            teacher_top_k=4,
            temperature=1.0,
            gradient_checkpointing=False,
        )
        return OnPolicyDistillTrainer(
            student, tiny(tok, seed=1), args=args, train_dataset=rows(), processing_class=student_tok
        )
    if name == "grpo":
        options = {**common(out, name), "per_device_train_batch_size": 4}
        args = DiffusionGRPOConfig(
            **options, num_generations=4, max_completion_length=8, block_size=4, threshold=0.5, temperature=1.0
        )
        return DiffusionGRPOTrainer(
            tiny(tok), reward_funcs=[recorded_reward], args=args, train_dataset=rows(), processing_class=tok
        )
    raise ValueError(f"unknown trainer {name!r}")


def run(name: str, out: Path) -> None:
    for values in RECORD.values():
        values.clear()
    trainer = build(name, out)
    model = trainer.accelerator.unwrap_model(trainer.model)
    before = param_hash(model)
    trainer.train()
    if name == "sft":
        trainer.evaluate()
    result = {
        "trainer": name,
        "rank": RANK,
        "world_size": trainer.accelerator.num_processes,
        "hash_before": before,
        "hash_after": param_hash(trainer.accelerator.unwrap_model(trainer.model)),
        "log_history": trainer.state.log_history,
        **RECORD,
    }
    (out / f"{name}_rank{RANK}.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    out_dir = Path(sys.argv[1])
    out_dir.mkdir(parents=True, exist_ok=True)
    for trainer_name in sys.argv[2:] or ["sft", "opd", "grpo"]:
        run(trainer_name, out_dir)
    # An undestroyed gloo group can abort the interpreter at exit ("terminate called without an active exception").
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
