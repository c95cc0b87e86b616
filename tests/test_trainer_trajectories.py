"""Loss / grad-norm trajectories of the three trainers, against committed reference values.

Each trainer (`DiffusionSFTTrainer`, `OnPolicyDistillTrainer`, `DiffusionGRPOTrainer`) trains three optimizer steps
on a tiny float64 model built from a config, with fixed seeds, and every logged step (`logging_steps=1`) must
reproduce the values stored in `tests/data/trainer_trajectories.json`: the loss and grad norm, and for OPD / GRPO
the other deterministic metrics of the step (KL, divergence, rewards, completion length, ...). The other trainer
tests check properties of the losses; this one catches any *silent* change of what the trainers compute (a
refactor that reorders a reduction is fine, one that changes a loss weight, a denominator, a rollout seed or the
optimizer state is not).

Everything here is self-contained (tokenizer, data, models and reward are built in this file, not borrowed from
the other test modules) so that editing another test's helpers can never move a reference.

Tolerance. All three trainers run in float64 (models and optimizer state), but some values pass through float32
by design: the Trainer's running `tr_loss` (so every logged `loss`), TRL's GRPO log-probs, rewards and advantages,
OPD's teacher log-probs and returned loss, SFT's logged mask ratio. On one machine the trajectory is bit-identical
run to run; another BLAS build or CPU may differ in the last float64 bits, which can move a float32 rounding by an
ulp (6e-8 relative). Values are compared at a relative tolerance of 1e-6, plus an absolute 1e-9 (1e-6 for the
GRPO loss: at a step that has just generated it is float32 round-off around 0; at step 1, 0.048, that is still
2e-5 relative). Measured: perturbing every
initial weight by a relative 1e-11 (far more than a BLAS change) moves no value by more than 3e-7 relative (no
rollout token flips), while a 1% change of the learning rate or of a loss parameter (SFT `answer_weight`, OPD
`jsd_beta`, GRPO `epsilon`) moves a loss or grad norm by 5e-5 to 2e-2 relative, 50x the tolerance or more
(`test_a_one_percent_change_is_detected`).

When to regenerate the references: only for a deliberate, reviewed change of what a trainer computes (a loss,
its normalization, the rollout sampling, a default) or a dependency upgrade that changes numerics; never to make a
refactor pass. Say why in the commit message, and regenerate with

    OMP_NUM_THREADS=1 python -m tests.test_trainer_trajectories --write

which reruns the three trainers and rewrites `tests/data/trainer_trajectories.json` (with the versions used).
"""

from __future__ import annotations

import copy
import json
import math
import random
import sys
import tempfile
from pathlib import Path

import pytest
import torch
from datasets import Dataset

from dgr2_trl.data import RANKING_ANSWER_PREFIX
from dgr2_trl.modeling import convert_to_block_diffusion, tiny_causal_lm
from dgr2_trl.rewards import default_rl_reward
from dgr2_trl.tokenization import train_chat_tokenizer
from dgr2_trl.trainers import DiffusionSFTConfig, DiffusionSFTTrainer
from dgr2_trl.trainers.diffusion_grpo_config import DiffusionGRPOConfig
from dgr2_trl.trainers.diffusion_grpo_trainer import DiffusionGRPOTrainer
from dgr2_trl.trainers.opd_config import OnPolicyDistillConfig
from dgr2_trl.trainers.opd_trainer import OnPolicyDistillTrainer


REFERENCE = Path(__file__).parent / "data" / "trainer_trajectories.json"
RTOL = 1e-6
ATOL = 1e-9
# GRPO's loss at a step that has just generated: the policy ratio is exactly 1, so the DAPO loss is minus the
# token-weighted mean advantage, 0 in exact arithmetic; what is logged is float32 round-off (~5e-8).
ATOL_OF = {("grpo", "loss"): 1e-6}
NUM_STEPS = 3
ITEMS = [f"<i_{k}>" for k in range(12)]

# Per trainer: the logged keys recorded at every step (all deterministic; timings and throughputs are not).
KEYS = {
    "sft": ["loss", "grad_norm", "mask_ratio", "num_tokens"],
    "opd": [
        "loss",
        "grad_norm",
        "kl",
        "divergence",
        "completions/mean_length",
        "teacher/token_logprob",
        "rollout/forward_passes_per_token",
    ],
    # the rollout metrics are logged only at the steps that generate (0 and 2: step 1 reuses step 0's rollouts)
    "grpo": [
        "loss",
        "grad_norm",
        "reward",
        "reward_std",
        "rewards/length_reward/mean",
        "frac_reward_zero_std",
        "entropy",
        "completions/mean_length",
        "rollout/forward_passes_per_token",
        "clip_ratio/region_mean",
        "dropped_fraction",
    ],
}


# ------------------------------------------------------------------------------------------------ fixtures
def ranking_rows(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        candidates = rng.sample(ITEMS, 4)
        rows.append(
            {
                "prompt": [{"role": "user", "content": "Candidates: " + " ".join(candidates) + "\nRank them."}],
                "completion": [
                    {
                        "role": "assistant",
                        "content": f"First is {candidates[0]}.\n" + json.dumps({"ranking": candidates}),
                    }
                ],
                "candidates": candidates,
                "target": candidates[1],
                "pre_rank": 1,
            }
        )
    return rows


def make_tokenizer():
    texts = [m["content"] for r in ranking_rows(64, seed=99) for m in r["prompt"] + r["completion"]]
    return train_chat_tokenizer(texts, vocab_size=300, extra_special_tokens=ITEMS)


def make_model(tokenizer, vocab_extra: int = 1, seed: int = 0, initializer_range: float = 0.5):
    return tiny_causal_lm(
        len(tokenizer) + vocab_extra,  # +1: room for the mask token, so conversion needs no resize
        "qwen3",
        dtype=torch.float64,
        seed=seed,
        initializer_range=initializer_range,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )


COMMON = dict(
    report_to="none",
    use_cpu=True,
    bf16=False,
    logging_steps=1,
    save_strategy="no",
    disable_tqdm=True,
    dataloader_num_workers=0,
    max_steps=NUM_STEPS,
    lr_scheduler_type="constant",
    warmup_steps=0,
    seed=0,
)


def length_reward(prompts, completions, **kwargs):
    """A completion's length in characters / 10: varies across a random model's samples, so groups have an
    advantage (the default reward is -1 for every invalid ranking, i.e. for every sample here)."""
    texts = [c if isinstance(c, str) else c[-1]["content"] for c in completions]
    return [len(t) / 10 for t in texts]


# ------------------------------------------------------------------------------------------------ trainers
def sft_trainer(output_dir, **overrides):
    tokenizer = make_tokenizer()
    rows = [{k: r[k] for k in ("prompt", "completion")} for r in ranking_rows(4 * NUM_STEPS, seed=1)]
    settings = {
        **COMMON,
        "per_device_train_batch_size": 4,
        "activation_checkpointing": False,
        "learning_rate": 1e-3,
        "block_size": 4,
        "answer_weight": 2.0,
        "answer_prefix": RANKING_ANSWER_PREFIX,
        "ar_loss_weight": 0.5,
        "complementary_masking": True,
    }
    args = DiffusionSFTConfig(output_dir=str(output_dir), **{**settings, **overrides})
    return DiffusionSFTTrainer(
        make_model(tokenizer), args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer
    )


def opd_trainer(output_dir, **overrides):
    tokenizer = make_tokenizer()
    # vocab = len(tokenizer): the student's mask token gets a row the teacher never had
    teacher = make_model(tokenizer, vocab_extra=0, seed=3)
    student, student_tokenizer = convert_to_block_diffusion(copy.deepcopy(teacher), copy.deepcopy(tokenizer), 4)
    prompts = [{"prompt": r["prompt"], "candidates": r["candidates"]} for r in ranking_rows(4, seed=2)]
    settings = {
        **COMMON,
        "per_device_train_batch_size": 2,
        "num_rollouts_per_prompt": 2,
        "max_completion_length": 12,
        "threshold": 0.5,
        "temperature": 1.0,
        "teacher_top_k": 8,
        "divergence": "jsd",  # the loss; the logged `kl` is the forward KL, a second quantity
        "learning_rate": 3e-3,
        "gradient_checkpointing": False,
    }
    args = OnPolicyDistillConfig(output_dir=str(output_dir), **{**settings, **overrides})
    return OnPolicyDistillTrainer(
        student, teacher, args=args, train_dataset=Dataset.from_list(prompts), processing_class=student_tokenizer
    )


def grpo_trainer(output_dir, **overrides):
    tokenizer = make_tokenizer()
    prompts = [{k: r[k] for k in ("prompt", "candidates", "target", "pre_rank")} for r in ranking_rows(4, seed=3)]
    settings = {
        **COMMON,
        "per_device_train_batch_size": 8,
        "num_generations": 4,
        "num_iterations": 2,  # step 1 reuses step 0's rollouts: the policy ratio and its clipping are exercised
        "max_completion_length": 10,
        "block_size": 4,
        "threshold": 0.5,
        "temperature": 1.0,
        "learning_rate": 1e-2,
        "reward_weights": [1.0, 0.5],
        "gradient_checkpointing": False,
    }
    args = DiffusionGRPOConfig(output_dir=str(output_dir), **{**settings, **overrides})
    # a plain AR model: the trainer converts it
    return DiffusionGRPOTrainer(
        make_model(tokenizer),
        reward_funcs=[default_rl_reward, length_reward],
        args=args,
        train_dataset=Dataset.from_list(prompts),
        processing_class=tokenizer,
    )


TRAINERS = {"sft": sft_trainer, "opd": opd_trainer, "grpo": grpo_trainer}


def trajectory(name: str, output_dir, **overrides) -> list[dict]:
    """Train `name` for NUM_STEPS steps; the recorded keys of each step's log."""
    trainer = TRAINERS[name](output_dir, **overrides)
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h and "train_runtime" not in h]
    assert [h["step"] for h in logs] == list(range(1, NUM_STEPS + 1)), (name, trainer.state.log_history)
    return [{key: float(h[key]) for key in KEYS[name] if key in h} for h in logs]


def mismatches(name: str, actual: list[dict], reference: list[dict]) -> list[tuple[int, str, str]]:
    """(step, key, message) for every value out of tolerance, and for a step whose logged keys differ."""
    if len(actual) != len(reference):
        return [(-1, "steps", f"{name}: {len(actual)} logged steps, reference {len(reference)}")]
    problems = []
    for step, (got, want) in enumerate(zip(actual, reference)):
        if set(got) != set(want):
            problems.append((step, "keys", f"{name} step {step}: keys {sorted(got)}, reference {sorted(want)}"))
            continue
        for key, value in want.items():
            if not math.isclose(got[key], value, rel_tol=RTOL, abs_tol=ATOL_OF.get((name, key), ATOL)):
                problems.append((step, key, f"{name} step {step} {key}: got {got[key]!r}, reference {value!r}"))
    return problems


def load_reference() -> dict:
    return json.loads(REFERENCE.read_text())


def versions() -> dict:
    import accelerate
    import transformers
    import trl

    return {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "trl": trl.__version__,
        "accelerate": accelerate.__version__,
    }


# ------------------------------------------------------------------------------------------------ tests
@pytest.mark.parametrize("name", list(TRAINERS))
def test_trajectory_matches_reference(name, tmp_path):
    data = load_reference()
    problems = mismatches(name, trajectory(name, tmp_path), data["trajectories"][name])
    assert not problems, (
        f"{name} trajectory differs from {REFERENCE.name} (see this module's docstring before regenerating it); "
        f"reference versions {data['versions']}, running {versions()}:\n"
        + "\n".join(message for _, _, message in problems)
    )


@pytest.mark.parametrize(
    "name,override",
    [
        ("sft", {"learning_rate": 1.01e-3}),
        ("sft", {"answer_weight": 2.02}),
        ("opd", {"learning_rate": 3.03e-3}),
        ("opd", {"jsd_beta": 0.505}),
        ("grpo", {"learning_rate": 1.01e-2}),
        ("grpo", {"epsilon": 0.202}),
    ],
    ids=["sft-lr", "sft-answer_weight", "opd-lr", "opd-jsd_beta", "grpo-lr", "grpo-epsilon"],
)
def test_a_one_percent_change_is_detected(name, override, tmp_path):
    """The tolerance is tight enough: a 1% change of the learning rate or of a loss parameter moves the loss or the
    grad norm out of it (a learning rate only from step 1 on: step 0 is computed before the first update)."""
    reference = load_reference()["trajectories"][name]
    problems = mismatches(name, trajectory(name, tmp_path, **override), reference)
    moved = {(step, key) for step, key, _ in problems if key in ("loss", "grad_norm")}
    assert moved, f"{name} with {override}: no loss or grad norm left the tolerance"
    if "learning_rate" in override:
        assert all(step >= 1 for step, _, _ in problems), problems


# ------------------------------------------------------------------------------------------------ regeneration
def write_reference() -> None:
    with tempfile.TemporaryDirectory() as output_dir:
        trajectories = {name: trajectory(name, Path(output_dir) / name) for name in TRAINERS}
    data = {
        "comment": "Generated by `python -m tests.test_trainer_trajectories --write`; see that module's docstring.",
        "versions": versions(),
        "num_steps": NUM_STEPS,
        "trajectories": trajectories,
    }
    REFERENCE.parent.mkdir(parents=True, exist_ok=True)
    REFERENCE.write_text(json.dumps(data, indent=2) + "\n")
    print(f"wrote {REFERENCE}")


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        sys.exit("usage: python -m tests.test_trainer_trajectories --write")
    write_reference()
