"""Configuration of `DiffusionGRPOTrainer`."""

from __future__ import annotations

from dataclasses import dataclass, field

from trl import GRPOConfig

from .checks import check_rollout_settings


@dataclass
class DiffusionGRPOConfig(GRPOConfig):
    """`trl.GRPOConfig` plus the block-diffusion rollout and replay settings.

    TRL's defaults already match the method: `loss_type="dapo"` (token-level), `epsilon=0.2`, `num_generations=8`,
    `beta=0.0` (no KL term; set it > 0 to add one against a reference model). `use_vllm` must stay False: vLLM
    cannot serve a block-diffusion student.
    """

    block_size: int | None = field(
        default=None,
        metadata={"help": "Block size for rollouts and replay. None: the converted model's own block size."},
    )
    threshold: float = field(
        default=0.9,
        metadata={
            "help": "Confidence threshold of the block sampler: each step commits every masked position whose "
            "probability is >= threshold, plus the most confident one."
        },
    )
    max_steps_per_block: int | None = field(
        default=None, metadata={"help": "Optional cap on denoising steps per block during rollouts."}
    )
    fallback: str = field(
        default="confidence",
        metadata={
            "help": "What a rollout step commits when no masked position reaches the threshold: the most "
            "confident one ('confidence', the paper's rule) or the leftmost one ('leftmost')."
        },
    )
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
    mask_token: str = field(
        default="<|mask|>", metadata={"help": "Mask token added when a plain AR model is converted."}
    )
    rollout_seed: int | None = field(
        default=None,
        metadata={
            "help": "Seed of the rollout sampler's random generator (re-seeded with the global step, so a "
            "resumed run draws the same rollouts). None: `seed`."
        },
    )

    def __post_init__(self):
        super().__post_init__()
        if self.use_vllm:
            raise ValueError(
                "DiffusionGRPOConfig: use_vllm=True is not supported: vLLM cannot run a block-diffusion "
                "student; rollouts use dgr2_trl's BlockDiffusionSampler"
            )
        try:
            check_rollout_settings(self)
        except ValueError as error:
            raise ValueError(f"DiffusionGRPOConfig: {error}") from None
        if self.replay_merge_steps < 1:
            raise ValueError(f"DiffusionGRPOConfig: replay_merge_steps must be >= 1, got {self.replay_merge_steps}")
