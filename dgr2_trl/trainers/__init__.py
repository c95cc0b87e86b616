"""TRL trainers for block-diffusion re-rankers (one file per trainer and its config)."""

from ..compat import check_private_symbols


# before the trainer modules import TRL's internals: a changed TRL fails here, naming the symbol and tested version
check_private_symbols()

# ruff: noqa: E402 (the imports below come after the check on purpose)

from .callbacks import ValidRateCallback
from .diffusion_grpo_config import DiffusionGRPOConfig
from .diffusion_grpo_trainer import DiffusionGRPOTrainer
from .diffusion_sft_config import DiffusionSFTConfig
from .diffusion_sft_data import DiffusionSFTCollator, answer_start
from .diffusion_sft_trainer import DiffusionSFTTrainer
from .model_prep import prepare_block_diffusion_model
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
    "ValidRateCallback",
    "answer_start",
    "prepare_block_diffusion_model",
]
