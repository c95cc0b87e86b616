"""Conversion, block-causal masks, noise schedules and the masked-diffusion loss."""

from .conversion import (
    BlockDiffusionSettings,
    check_custom_mask_support,
    convert_to_block_diffusion,
    ensure_custom_mask_support,
    get_block_diffusion_settings,
)
from .forward import decoder_hidden_states, forward_logits, log_probs_without_mask
from .loss import DiffusionLossOutput, causal_lm_loss_sum, masked_diffusion_loss
from .masks import (
    TrainingLayout,
    block_attention_mask,
    build_training_layout,
    position_ids_from_mask,
    to_additive_mask,
)
from .noise import BlockNoise, CosineSchedule, LinearSchedule, NoiseSchedule, get_schedule, sample_block_noise
from .replay import replay_logprobs
from .tiny import tiny_causal_lm


__all__ = [
    "BlockDiffusionSettings",
    "BlockNoise",
    "CosineSchedule",
    "DiffusionLossOutput",
    "LinearSchedule",
    "NoiseSchedule",
    "TrainingLayout",
    "block_attention_mask",
    "build_training_layout",
    "check_custom_mask_support",
    "convert_to_block_diffusion",
    "ensure_custom_mask_support",
    "decoder_hidden_states",
    "forward_logits",
    "get_block_diffusion_settings",
    "get_schedule",
    "log_probs_without_mask",
    "masked_diffusion_loss",
    "causal_lm_loss_sum",
    "position_ids_from_mask",
    "replay_logprobs",
    "sample_block_noise",
    "tiny_causal_lm",
    "to_additive_mask",
]
