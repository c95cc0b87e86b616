"""dgr2-trl: block-diffusion re-rankers for Hugging Face TRL (Diffusion-GR2)."""

from .modeling import (
    BlockDiffusionSettings,
    convert_to_block_diffusion,
    get_block_diffusion_settings,
    masked_diffusion_loss,
    sample_block_noise,
)
from .samplers import ARSampler, BlockDiffusionSampler, GenerationOutput, SpeculativeSampler
from .trainers import (
    DiffusionGRPOConfig,
    DiffusionGRPOTrainer,
    DiffusionSFTConfig,
    DiffusionSFTTrainer,
    OnPolicyDistillConfig,
    OnPolicyDistillTrainer,
)


__version__ = "0.1.0"

__all__ = [
    "ARSampler",
    "BlockDiffusionSampler",
    "SpeculativeSampler",
    "BlockDiffusionSettings",
    "DiffusionGRPOConfig",
    "DiffusionGRPOTrainer",
    "DiffusionSFTConfig",
    "DiffusionSFTTrainer",
    "OnPolicyDistillConfig",
    "OnPolicyDistillTrainer",
    "GenerationOutput",
    "convert_to_block_diffusion",
    "get_block_diffusion_settings",
    "masked_diffusion_loss",
    "sample_block_noise",
]
