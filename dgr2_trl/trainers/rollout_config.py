"""The block-diffusion rollout settings shared by `OnPolicyDistillConfig` and `DiffusionGRPOConfig`."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..modeling.conversion import DEFAULT_BLOCK_SIZE
from ..samplers.block_diffusion import FALLBACKS
from ..samplers.common import check_steps_per_block, check_threshold


@dataclass
class BlockRolloutArguments:
    r"""
    How the student decodes its own rollouts with [`~dgr2_trl.samplers.BlockDiffusionSampler`], and the block size
    their trajectory replay uses. Mixed into [`OnPolicyDistillConfig`] and [`DiffusionGRPOConfig`] (listed first
    among their bases, so these fields come after TRL's and are checked after TRL's own `__post_init__`); both keep
    the defaults below.

    Parameters:
        block_size (`int`, *optional*):
            Block size of the rollouts and of their trajectory replay, and the one a plain AR student is converted
            with ([`~dgr2_trl.trainers.prepare_block_diffusion_model`]). `None`: the converted model's own block
            size, or `DEFAULT_BLOCK_SIZE` (32) for an AR model. Set on a converted model with another block size, it
            is stored in the model's config instead (a warning says so).
        threshold (`float`, defaults to `0.9`):
            Confidence threshold of the block sampler, a probability in [0, 1]: each denoising step commits every
            masked position of the block whose probability is at least `threshold`, and at least one (see
            `fallback`).
        max_steps_per_block (`int`, *optional*):
            Cap on the denoising steps per block (an integer >= 1). `None`: no cap.
        fallback (`str`, defaults to `"confidence"`):
            Which masked positions a step commits when too few reach the threshold (one per step, more under
            `max_steps_per_block`): the most confident ones (`"confidence"`, the paper's rule) or the leftmost ones
            (`"leftmost"`).

    The configs' inherited `max_completion_length` (the rollout budget in new tokens) is checked with these fields.
    """

    block_size: int | None = field(
        default=None,
        metadata={
            "help": "Block size of the rollouts and of their trajectory replay, and the one a plain AR student is "
            f"converted with. None: the converted model's own block size, or {DEFAULT_BLOCK_SIZE} for an AR model."
        },
    )
    threshold: float = field(
        default=0.9,
        metadata={
            "help": "Confidence threshold of the block sampler, in [0, 1]: each denoising step commits every masked "
            "position whose probability is >= threshold, and at least one (see fallback)."
        },
    )
    max_steps_per_block: int | None = field(
        default=None,
        metadata={"help": "Cap on the denoising steps per block (an integer >= 1). None: no cap."},
    )
    fallback: str = field(
        default="confidence",
        metadata={
            "help": "Which masked positions a step commits when too few reach the threshold (one per step, more "
            "under max_steps_per_block): the most confident ones ('confidence', the paper's rule) or the leftmost "
            "ones ('leftmost')."
        },
    )

    def __post_init__(self):
        # cooperative: the TRL config this is mixed into runs its own checks (and derived defaults) first
        parent = getattr(super(), "__post_init__", None)
        if parent is not None:
            parent()
        self.check_rollout_arguments()

    def check_rollout_arguments(self) -> None:
        """Check the rollout fields as the sampler checks them, so that a bad value fails when the config is built
        (with an error naming the config and the field) rather than at the first rollout."""
        try:
            block_size = self.block_size
            if block_size is not None and (
                isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1
            ):
                raise ValueError(f"block_size must be None (the model's own) or an integer >= 1, got {block_size!r}")
            check_threshold(self.threshold)
            check_steps_per_block(self.max_steps_per_block)
            if self.fallback not in FALLBACKS:
                raise ValueError(f"fallback must be one of {FALLBACKS}, got {self.fallback!r}")
            if hasattr(self, "max_completion_length"):  # a field of the TRL config this is mixed into
                length = self.max_completion_length
                if isinstance(length, bool) or not isinstance(length, int) or length < 1:
                    raise ValueError(
                        f"max_completion_length must be an integer >= 1 (the rollout budget in tokens), got {length!r}"
                    )
        except ValueError as error:
            raise ValueError(f"{type(self).__name__}: {error}") from None
