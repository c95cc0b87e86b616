"""TRL trainers for block-diffusion re-rankers (one file per trainer and its config)."""

from .diffusion_sft_config import DiffusionSFTConfig
from .diffusion_sft_data import DiffusionSFTCollator, answer_start
from .diffusion_sft_trainer import DiffusionSFTTrainer

__all__ = ["DiffusionSFTCollator", "DiffusionSFTConfig", "DiffusionSFTTrainer", "answer_start"]
