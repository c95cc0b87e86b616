"""RL stage: GRPO/DAPO on a block-diffusion re-ranker with trajectory-replay log-probs.

Out of the box (CPU, a few minutes): bundled Amazon Beauty re-ranking prompts, a small model built from a config
(converted to block diffusion), the default reward (rank promotion + 0.2 x conditional format, -1 if invalid). Start
from a CFT or OPD checkpoint with `--model_name_or_path PATH` (a folder with model + tokenizer; an AR model is
converted with `--block_size`). `--reward_funcs` takes reward names from `dgr2_trl.rewards` (ndcg_reward,
recall_reward, validity_reward, rank_promotion_reward, conditional_format_reward, default_rl_reward) or dotted import
paths (`my_rewards.my_reward`, importable from the working directory), with TRL's reward signature; several are
summed with `--reward_weights`. Data: `--dataset_name` (needs the `prompt`, `candidates`, `target` and `pre_rank`
columns the rewards read). Every `DiffusionGRPOConfig` and `ModelConfig` field can be set on the command line (or in
a `--config` YAML file); the CPU defaults are small (per step 2 prompts x 4 generations of at most 32 tokens, 10
steps; `--per_device_train_batch_size` must be a multiple of `--num_generations`): raise `--max_completion_length`
for answers with a full reasoning trace:

    python examples/grpo.py
    accelerate launch examples/grpo.py --max_steps 20 --output_dir outputs/grpo
    python examples/grpo.py --model_name_or_path outputs/opd --threshold 0.9 --num_generations 8
    python examples/grpo.py --model_name_or_path outputs/opd --reward_funcs dgr2_trl.rewards.ndcg_reward recall_reward
    python examples/grpo.py --model_name_or_path outputs/opd --use_peft --lora_r 16 --output_dir outputs/grpo-lora

Logs TRL's GRPO metrics (reward per function, `clip_ratio`, ...) plus `rollout/tokens_per_second`; saves model (or
LoRA adapter) + tokenizer to `output_dir`.
"""

from __future__ import annotations

import importlib
import os
import sys
from dataclasses import dataclass, field

from _common import RerankScriptArguments, device_defaults, load_model_and_tokenizer, load_rerank_datasets
from trl import ModelConfig, TrlParser, get_peft_config

from dgr2_trl import rewards
from dgr2_trl.trainers import DiffusionGRPOConfig, DiffusionGRPOTrainer


REWARDS = ("ndcg_reward", "recall_reward", "validity_reward", "rank_promotion_reward", "conditional_format_reward",
           "default_rl_reward")  # fmt: skip


@dataclass
class GRPOScriptArguments(RerankScriptArguments):
    """The data and small-model arguments, plus the reward functions."""

    reward_funcs: list[str] | None = field(
        default=None,
        metadata={
            "help": f"Reward functions: names from dgr2_trl.rewards ({', '.join(REWARDS)}) or dotted import "
            "paths (e.g. 'my_rewards.my_reward'). None: default_rl_reward."
        },
    )


CPU_DEFAULTS = dict(
    output_dir="outputs/grpo", per_device_train_batch_size=8, num_generations=4, max_completion_length=32,
    max_steps=10, learning_rate=1e-5, logging_steps=1, save_strategy="no", report_to="none",
    activation_checkpointing=False, seed=0, num_layers=4,
)  # fmt: skip


def load_reward_funcs(names: list[str] | None) -> list | None:
    """The reward functions named on the command line (None: the trainer's default reward)."""
    if not names:
        return None
    funcs = []
    for name in names:
        if name in REWARDS:
            funcs.append(getattr(rewards, name))
            continue
        if "." not in name:
            raise ValueError(
                f"--reward_funcs {name!r}: expected one of {list(REWARDS)} or a dotted import path "
                "such as 'my_rewards.my_reward'"
            )
        module_name, attribute = name.rsplit(".", 1)
        if os.getcwd() not in sys.path:
            sys.path.insert(0, os.getcwd())  # a rewards module in the working directory
        try:
            func = getattr(importlib.import_module(module_name), attribute)
        except (ImportError, AttributeError) as error:
            raise ValueError(
                f"--reward_funcs {name!r}: cannot import {attribute!r} from {module_name!r} ({error})"
            ) from error
        if not callable(func):
            raise ValueError(
                f"--reward_funcs {name!r}: expected a callable reward function, got {type(func).__name__}"
            )
        funcs.append(func)
    return funcs


def main(script_args: GRPOScriptArguments, training_args: DiffusionGRPOConfig, model_args: ModelConfig):
    reward_funcs = load_reward_funcs(script_args.reward_funcs)
    data = load_rerank_datasets(script_args, seed=training_args.seed)
    model, tokenizer = load_model_and_tokenizer(model_args, training_args, data, script_args)
    # the trainer converts an AR model with `block_size`
    trainer = DiffusionGRPOTrainer(
        model, reward_funcs=reward_funcs, args=training_args, train_dataset=data.train, processing_class=tokenizer,
        peft_config=get_peft_config(model_args),
    )  # fmt: skip
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.accelerator.print("Training completed.")
    trainer.save_model(training_args.output_dir)
    tokenizer.save_pretrained(training_args.output_dir)
    trainer.accelerator.print(f"Model saved to {training_args.output_dir}.")


def make_parser() -> TrlParser:
    parser = TrlParser((GRPOScriptArguments, DiffusionGRPOConfig, ModelConfig))
    parser.set_defaults(**CPU_DEFAULTS, **device_defaults())
    return parser


if __name__ == "__main__":
    main(*make_parser().parse_args_and_config())
