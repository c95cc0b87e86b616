"""Configuration of `DiffusionGRPOTrainer`."""

from __future__ import annotations

from dataclasses import dataclass, field

from trl import GRPOConfig

from .rollout_config import BlockRolloutArguments


@dataclass
class DiffusionGRPOConfig(BlockRolloutArguments, GRPOConfig):
    r"""
    Configuration of [`DiffusionGRPOTrainer`]: every [`trl.GRPOConfig`] field (TRL 1.16), the rollout settings of
    [`BlockRolloutArguments`] (`block_size`, `threshold`, `max_steps_per_block`, `fallback`, shared with
    [`OnPolicyDistillConfig`]), plus the replay settings below. `use_vllm` must stay False: vLLM cannot serve a
    block-diffusion student.

    Changed defaults: none. TRL's defaults already match the method: `loss_type="dapo"` (token-level),
    `epsilon=0.2`, `num_generations=8`, `beta=0.0` (no KL term; set it > 0 to add one against a reference model);
    the rollout settings keep [`BlockRolloutArguments`]' defaults.

    Parameters:
        replay_merge_steps (`int`, defaults to `1`):
            Denoising steps whose tokens trajectory replay scores in one forward pass, all in the state of the first
            of them. `1` is exact; larger values cost fewer passes but are biased.
        drop_zero_advantage_groups (`bool`, defaults to `True`):
            Leave completions with advantage exactly 0 out of the loss and of the DAPO token count (DAPO's dynamic
            sampling).
        mask_token (`str`, *optional*):
            Mask token added when a plain AR model is converted. `None`: `"<|mask|>"` (`DEFAULT_MASK_TOKEN`) for an
            AR model, the converted model's own otherwise; a converted model with a different mask token is an
            error.
        rollout_seed (`int`, *optional*):
            Seed of the rollout sampler's generator, re-seeded with the global step. `None`: `seed`.
    """

    replay_merge_steps: int = field(
        default=1,
        metadata={
            "help": "Trajectory replay scores the tokens of `replay_merge_steps` consecutive denoising steps in "
            "one forward pass, all in the state of the first of them. 1 (default) is exact: each token is "
            "scored in the state it was committed in. Larger values cost fewer passes but are biased: a "
            "token committed at a later step is scored without seeing tokens committed at the earlier "
            "steps of the same group."
        },
    )
    drop_zero_advantage_groups: bool = field(
        default=True,
        metadata={
            "help": "Leave completions with advantage exactly 0 (in particular every completion of a group "
            "whose rewards are all equal) out of the loss and out of the DAPO token count, as in DAPO's "
            "dynamic sampling."
        },
    )
    mask_token: str | None = field(
        default=None,
        metadata={
            "help": "Mask token added when a plain AR model is converted. None: '<|mask|>' for an AR model, the "
            "converted model's own otherwise."
        },
    )
    rollout_seed: int | None = field(
        default=None,
        metadata={
            "help": "Seed of the rollout sampler's random generator (re-seeded with the global step, so a "
            "resumed run draws the same rollouts). None: `seed`."
        },
    )

    def __post_init__(self):
        super().__post_init__()  # GRPOConfig's checks, then the rollout settings' (BlockRolloutArguments)
        if self.use_vllm:
            raise ValueError(
                "DiffusionGRPOConfig: use_vllm=True is not supported: vLLM cannot run a block-diffusion "
                "student; rollouts use dgr2_trl's BlockDiffusionSampler"
            )
        if self.replay_merge_steps < 1:
            raise ValueError(f"DiffusionGRPOConfig: replay_merge_steps must be >= 1, got {self.replay_merge_steps}")
