import dataclasses
import random

import pytest
import torch
from datasets import Dataset
from trl import TrlParser

from dgr2_trl.modeling import get_block_diffusion_settings, tiny_causal_lm
from dgr2_trl.rewards import default_rl_reward
from dgr2_trl.tokenization import train_chat_tokenizer
from dgr2_trl.trainers.diffusion_grpo_config import DiffusionGRPOConfig
from dgr2_trl.trainers.diffusion_grpo_trainer import DiffusionGRPOTrainer, _pad_rows
from dgr2_trl.trainers.opd_config import OnPolicyDistillConfig
from dgr2_trl.trainers.rollout_config import BlockRolloutArguments


ITEM_TOKENS = [f"<i_{i}>" for i in range(12)]


@pytest.fixture(scope="module")
def setup():
    tokenizer = train_chat_tokenizer(
        ["rank these items into a ranking json list"] * 10, vocab_size=300, extra_special_tokens=ITEM_TOKENS
    )
    rng = random.Random(0)
    rows = []
    for _ in range(4):
        candidates = rng.sample(ITEM_TOKENS, 4)
        rows.append(
            {
                "prompt": [{"role": "user", "content": "rank: " + " ".join(candidates)}],
                "candidates": candidates,
                "target": candidates[1],
                "pre_rank": 1,
            }
        )
    return tokenizer, Dataset.from_list(rows)


def item_count_reward(prompts, completions, **kwargs):
    """A user's own reward: how many item tokens the completion mentions (varies across samples)."""
    texts = [c if isinstance(c, str) else c[-1]["content"] for c in completions]
    return [float(sum(t.count(tok) for tok in ITEM_TOKENS)) for t in texts]


def make_trainer(setup, tmp_path, trainer_class=DiffusionGRPOTrainer, block_size=4, reward_funcs=None, **overrides):
    tokenizer, dataset = setup
    model = tiny_causal_lm(len(tokenizer) + 1, "qwen3", initializer_range=0.5, seed=1)
    options = dict(
        output_dir=str(tmp_path),
        per_device_train_batch_size=8,
        num_generations=4,
        max_completion_length=10,
        max_steps=1,
        report_to="none",
        logging_steps=1,
        block_size=block_size,
        threshold=0.5,
        save_strategy="no",
        use_cpu=True,
        learning_rate=1e-2,
        temperature=1.0,
        bf16=False,
    )
    options.update(overrides)
    return trainer_class(
        model,
        reward_funcs=reward_funcs,
        args=DiffusionGRPOConfig(**options),
        train_dataset=dataset,
        processing_class=tokenizer,
    )


@pytest.mark.parametrize("block_size", [1, 4])
def test_replayed_logprobs_equal_recorded_ones(setup, tmp_path, block_size):
    """With unchanged weights the policy ratio is 1: TRL's old log-probs (our replay) equal the sampler's."""
    trainer = make_trainer(setup, tmp_path, block_size=block_size, num_iterations=2, reward_funcs=[item_count_reward])
    trainer.model.train()
    inputs = [row for row in setup[1] for _ in range(2)]  # a batch of 8 = 4 prompts x 2
    batch = trainer._generate_and_score_completions(inputs)
    mask = batch["completion_mask"].bool()
    assert mask.sum() > 20 and batch["commit_step"][mask].max() > 0 or block_size == 1
    torch.testing.assert_close(
        batch["old_per_token_logps"][mask], batch["sampling_per_token_logps"][mask], rtol=0, atol=2e-5
    )
    # and the loss-time call (after TRL's shuffle/split) finds the same values through the carried replay data
    trainer._active_replay = {k: batch[k] for k in ("commit_step", "trailing_ids", "trailing_commit_step")}
    ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], 1)
    attention = torch.cat([batch["prompt_mask"], batch["completion_mask"]], 1)
    logps, entropies, _ = trainer._get_per_token_logps_and_entropies(
        trainer.model, ids, attention, batch["completion_ids"].shape[1], batch_size=3, compute_entropy=True
    )
    torch.testing.assert_close(logps[mask], batch["sampling_per_token_logps"][mask], rtol=0, atol=2e-5)
    assert (entropies[mask] > 0).all()


def test_one_step_changes_weights_and_logs(setup, tmp_path):
    trainer = make_trainer(
        setup, tmp_path, reward_funcs=[default_rl_reward, item_count_reward], reward_weights=[1.0, 0.5]
    )
    assert get_block_diffusion_settings(trainer.model).block_size == 4  # the plain AR model was converted
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.train()
    assert any(not torch.equal(before[k], v) for k, v in trainer.model.state_dict().items())
    logs = trainer.state.log_history[0]
    for key in (
        "reward",
        "valid_rate",
        "clip_ratio/region_mean",
        "rewards/default_rl_reward/mean",
        "rewards/item_count_reward/mean",
        "rollout/tokens_per_second",
        "dropped_fraction",
    ):
        assert key in logs, key
    # mixed rewards with weights: the logged reward is the weighted sum of the per-function means
    expected = logs["rewards/default_rl_reward/mean"] + 0.5 * logs["rewards/item_count_reward/mean"]
    assert logs["reward"] == pytest.approx(expected, abs=1e-5)
    assert 0.0 <= logs["valid_rate"] <= 1.0


class GarbageRollout(DiffusionGRPOTrainer):
    """A user's subclass replacing the rollout: emits text that is not a ranking at all."""

    def rollout(self, prompts):
        out = super().rollout(prompts)
        garbage = self.processing_class("}{ ]] not json ,,", add_special_tokens=False)["input_ids"]
        out["completion_ids"] = [garbage + [self.processing_class.eos_token_id] for _ in prompts]
        out["logprobs"] = [[-1.0] * (len(garbage) + 1) for _ in prompts]
        out["commit_step"] = [[0] * (len(garbage) + 1) for _ in prompts]
        out["trailing_ids"] = [[] for _ in prompts]
        out["trailing_commit_step"] = [[] for _ in prompts]
        out["texts"] = ["}{ ]] not json ,,"] * len(prompts)
        return out


def test_garbage_rollout_is_scored_invalid_and_never_crashes(setup, tmp_path):
    trainer = make_trainer(setup, tmp_path, trainer_class=GarbageRollout)
    trainer.train()
    logs = trainer.state.log_history[0]
    assert logs["rewards/default_rl_reward/mean"] == -1.0 and logs["valid_rate"] == 0.0
    assert logs["dropped_fraction"] == 1.0 and logs["loss"] == 0.0  # all-equal groups carry no loss, and no NaN


class RewardOverride(DiffusionGRPOTrainer):
    """A user's subclass overriding TRL's reward computation seam."""

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        rewards = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        return rewards + torch.arange(rewards.shape[0], device=rewards.device)[:, None].float()


def test_subclass_overriding_rewards(setup, tmp_path):
    trainer = make_trainer(setup, tmp_path, trainer_class=RewardOverride)
    trainer.train()
    logs = trainer.state.log_history[0]
    assert logs["dropped_fraction"] == 0.0 and logs["reward_std"] > 0  # every group now has distinct rewards


def test_config_refuses_vllm_and_bad_values(tmp_path):
    with pytest.raises(ValueError, match="vLLM cannot run a block-diffusion"):
        DiffusionGRPOConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, use_vllm=True)
    with pytest.raises(ValueError, match="replay_merge_steps"):
        DiffusionGRPOConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, replay_merge_steps=0)


# ------------------------------------------------------------------------------ rollout settings shared with OPD
ROLLOUT_FIELDS = ("block_size", "threshold", "max_steps_per_block", "fallback")


def test_rollout_fields_are_one_shared_declaration():
    """Both configs take the rollout fields from BlockRolloutArguments: same names, types, defaults and help."""
    shared = {f.name: f for f in dataclasses.fields(BlockRolloutArguments)}
    assert tuple(shared) == ROLLOUT_FIELDS
    for config in (DiffusionGRPOConfig, OnPolicyDistillConfig):
        assert issubclass(config, BlockRolloutArguments)
        fields = {f.name: f for f in dataclasses.fields(config)}
        for name, field in shared.items():
            assert fields[name].default == field.default, (config.__name__, name)
            assert fields[name].metadata["help"] == field.metadata["help"], (config.__name__, name)
            assert fields[name].type == field.type, (config.__name__, name)
        # documented once, in BlockRolloutArguments' docstring (TRL's "Parameters:" format), not again per config
        assert all(f"    {name} (`" not in config.__doc__ for name in ROLLOUT_FIELDS), config.__name__
    assert all(f"    {name} (`" in BlockRolloutArguments.__doc__ for name in ROLLOUT_FIELDS)


@pytest.mark.parametrize("config", [DiffusionGRPOConfig, OnPolicyDistillConfig])
def test_trl_parser_lists_each_rollout_field_once(tmp_path, config):
    parser = TrlParser((config,))
    options = [option for action in parser._actions for option in action.option_strings]
    for name in ROLLOUT_FIELDS:
        assert options.count(f"--{name}") == 1, name
    assert "Confidence threshold of the block sampler" in parser.format_help()
    (args,) = parser.parse_args_and_config(
        ["--output_dir", str(tmp_path), "--use_cpu", "--report_to", "none", "--threshold", "0.5", "--block_size", "4"]
        + ["--fallback", "leftmost", "--max_steps_per_block", "3"]
    )
    assert (args.threshold, args.block_size, args.fallback, args.max_steps_per_block) == (0.5, 4, "leftmost", 3)
    (default,) = parser.parse_args_and_config(["--output_dir", str(tmp_path), "--use_cpu", "--report_to", "none"])
    assert (default.threshold, default.block_size, default.fallback, default.max_steps_per_block) == (
        0.9,
        None,
        "confidence",
        None,
    )


@pytest.mark.parametrize("config", [DiffusionGRPOConfig, OnPolicyDistillConfig])
@pytest.mark.parametrize(
    "field,value",
    [("block_size", 0), ("block_size", 2.0), ("threshold", 1.5), ("max_steps_per_block", 0), ("fallback", "random")],
)
def test_bad_rollout_setting_names_the_config_and_the_field(tmp_path, config, field, value):
    with pytest.raises(ValueError, match=rf"^{config.__name__}: {field} must be"):
        config(output_dir=str(tmp_path), use_cpu=True, report_to="none", **{field: value})


def test_replay_rows_are_padded_to_exactly_the_completion_width():
    rows = [[1, 2, 3], [], [4]]
    assert _pad_rows(rows, 5, -1, "cpu").tolist() == [[1, 2, 3, -1, -1], [-1] * 5, [4, -1, -1, -1, -1]]
    assert _pad_rows(rows, 2, -1, "cpu").tolist() == [[1, 2], [-1, -1], [4, -1]]  # longer rows cut
    assert _pad_rows([[], []], 0, 7, "cpu").tolist() == [[7], [7]]  # never zero columns


def test_kl_term_with_an_in_memory_ar_model_uses_a_converted_reference(setup, tmp_path):
    """beta > 0 on a plain AR model object: the trainer converts it, and the KL reference must be that converted
    model (same block rule, frozen). Before the first update the policy's replayed log-probs then equal the
    reference's and the logged KL is 0 (an unconverted, causal reference would give KL > 0); after it, KL > 0."""

    def text_reward(prompts, completions, **kwargs):  # differs between (almost) any two different completions
        texts = [c if isinstance(c, str) else c[-1]["content"] for c in completions]
        return [float(sum(map(ord, t)) % 97) for t in texts]

    trainer = make_trainer(setup, tmp_path, beta=0.1, max_steps=2, reward_funcs=[text_reward])
    reference = trainer.ref_model
    assert reference is not None and reference is not trainer.model
    assert get_block_diffusion_settings(reference) == get_block_diffusion_settings(trainer.model)
    before = {k: v.clone() for k, v in reference.state_dict().items()}
    trainer.train()
    first, second = trainer.state.log_history[0], trainer.state.log_history[1]
    assert first["kl"] == pytest.approx(0.0, abs=1e-6)
    assert second["kl"] > 1e-6
    assert all(torch.equal(before[k], v) for k, v in reference.state_dict().items())  # frozen
    assert trainer.args.beta == 0.1 and trainer.beta == 0.1
