"""dgr2-trl: block-diffusion re-rankers for Hugging Face TRL (Diffusion-GR2)."""

from .modeling import (
    BlockDiffusionSettings,
    convert_to_block_diffusion,
    get_block_diffusion_settings,
    masked_diffusion_loss,
    sample_block_noise,
)
from .samplers import ARSampler, BlockDiffusionSampler, GenerationOutput, SpeculativeSampler, UniqueTokens


__version__ = "0.1.0"

# The trainers are imported on first use: importing them checks the private TRL symbols they rely on
# (`dgr2_trl.compat`), which conversion and the samplers do not need.
_TRAINERS = {
    "DiffusionGRPOConfig",
    "DiffusionGRPOTrainer",
    "DiffusionSFTConfig",
    "DiffusionSFTTrainer",
    "OnPolicyDistillConfig",
    "OnPolicyDistillTrainer",
    "ValidRateCallback",
}


def __getattr__(name):
    if name in _TRAINERS:
        from . import trainers

        return getattr(trainers, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "ARSampler",
    "BlockDiffusionSampler",
    "SpeculativeSampler",
    "UniqueTokens",
    "BlockDiffusionSettings",
    *sorted(_TRAINERS),
    "GenerationOutput",
    "convert_to_block_diffusion",
    "get_block_diffusion_settings",
    "masked_diffusion_loss",
    "sample_block_noise",
]
