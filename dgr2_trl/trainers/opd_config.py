"""Configuration of `OnPolicyDistillTrainer` (OPD: the block-diffusion student decodes, an AR teacher scores)."""

from __future__ import annotations

from dataclasses import dataclass, field

from trl import DistillationConfig

from ..teachers.distill_loss import DIVERGENCES
from .rollout_config import BlockRolloutArguments


@dataclass
class OnPolicyDistillConfig(BlockRolloutArguments, DistillationConfig):
    r"""
    Configuration of [`OnPolicyDistillTrainer`]: every [`trl.DistillationConfig`] field (TRL 1.16), the rollout
    settings of [`BlockRolloutArguments`] (`block_size`, `threshold`, `max_steps_per_block`, `fallback`, shared with
    [`DiffusionGRPOConfig`]), plus the ones below. Inherited fields with an OPD meaning: `temperature` (rollout
    sampling temperature; the loss itself always compares temperature-1 distributions), `max_completion_length`
    (max new tokens per rollout), `teacher_model_name_or_path` (an in-process teacher loaded from a path). The
    inherited `beta` is not used: `divergence` picks the loss. `use_vllm` must stay False (vLLM cannot serve a
    block-diffusion student; the teacher may be served by vLLM through `teacher_url`).

    Changed defaults: none (TRL's fields keep `DistillationConfig`'s defaults, the rollout settings
    [`BlockRolloutArguments`]').

    Parameters:
        num_rollouts_per_prompt (`int`, defaults to 4): student rollouts per prompt; a micro-batch of
            `per_device_train_batch_size` prompts trains on that many times more completions.
        teacher_top_k (`int`, defaults to 20): teacher log-probs kept per token; the rest of its mass forms one tail
            bucket.
        divergence (`str`, defaults to `"forward_kl"`): `"forward_kl"` = KL(teacher || student), `"reverse_kl"` =
            KL(student || teacher), `"jsd"` (weight `jsd_beta` on the teacher side), all on the k+1 buckets.
        jsd_beta (`float`, defaults to 0.5).
        teacher_url (`str`, *optional*): base URL of a vLLM server serving the AR teacher, e.g.
            `http://127.0.0.1:8000` (see scripts/start_teacher_server.sh). Takes precedence over a teacher path.
        teacher_timeout (`float`, defaults to 300): seconds per teacher request.
        teacher_max_retries (`int`, defaults to 4): retries of a failed teacher request, exponential back-off from
            `teacher_backoff_s`.
        teacher_backoff_s (`float`, defaults to 0.5).
        teacher_batch_size (`int`, defaults to 32): sequences per teacher forward / HTTP request.
    """

    num_rollouts_per_prompt: int = field(default=4, metadata={"help": "Student rollouts per prompt."})
    teacher_top_k: int = field(default=20, metadata={"help": "Teacher top-k log-probs per token (+ a tail bucket)."})
    divergence: str = field(default="forward_kl", metadata={"help": f"One of {DIVERGENCES}."})
    jsd_beta: float = field(default=0.5, metadata={"help": "Teacher-side weight of the JSD mixture."})
    teacher_url: str | None = field(default=None, metadata={"help": "vLLM server URL of the AR teacher."})
    teacher_timeout: float = field(default=300.0, metadata={"help": "Seconds per teacher request."})
    teacher_max_retries: int = field(default=4, metadata={"help": "Retries of a failed teacher request."})
    teacher_backoff_s: float = field(default=0.5, metadata={"help": "First retry delay (doubles each retry)."})
    teacher_batch_size: int = field(default=32, metadata={"help": "Sequences per teacher call."})

    def __post_init__(self):
        super().__post_init__()  # DistillationConfig's checks, then the rollout settings' (BlockRolloutArguments)
        if self.num_rollouts_per_prompt < 1:
            raise ValueError(f"num_rollouts_per_prompt must be >= 1, got {self.num_rollouts_per_prompt}")
        if self.divergence not in DIVERGENCES:
            raise ValueError(f"divergence must be one of {DIVERGENCES}, got {self.divergence!r}")
        if self.divergence == "jsd" and not 0.0 < self.jsd_beta < 1.0:
            raise ValueError(f"jsd_beta must be in (0, 1), got {self.jsd_beta}")
        if self.teacher_top_k < 1:
            raise ValueError(f"teacher_top_k must be >= 1, got {self.teacher_top_k}")
        if self.use_vllm:
            raise ValueError(
                "use_vllm=True would serve the student with vLLM, which cannot run a block-diffusion model; the "
                "student decodes with BlockDiffusionSampler. To serve the AR teacher with vLLM, set teacher_url."
            )
