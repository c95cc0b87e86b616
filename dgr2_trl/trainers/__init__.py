"""TRL trainers for block-diffusion re-rankers (one file per trainer and its config)."""

from .diffusion_grpo_config import DiffusionGRPOConfig
from .diffusion_grpo_trainer import DiffusionGRPOTrainer
from .diffusion_sft_config import DiffusionSFTConfig
from .diffusion_sft_data import DiffusionSFTCollator, answer_start
from .diffusion_sft_trainer import DiffusionSFTTrainer
from .opd_config import OnPolicyDistillConfig
from .opd_trainer import OnPolicyDistillTrainer


__all__ = [
    "DiffusionGRPOConfig",
    "DiffusionGRPOTrainer",
    "DiffusionSFTCollator",
    "DiffusionSFTConfig",
    "DiffusionSFTTrainer",
    "OnPolicyDistillConfig",
    "OnPolicyDistillTrainer",
    "answer_start",
]
