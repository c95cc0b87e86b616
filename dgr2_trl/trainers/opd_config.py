"""Configuration of `OnPolicyDistillTrainer` (OPD: the block-diffusion student decodes, an AR teacher scores)."""

from __future__ import annotations

from dataclasses import dataclass, field

from trl import DistillationConfig

from ..teachers.distill_loss import DIVERGENCES
from .checks import check_rollout_settings


@dataclass
class OnPolicyDistillConfig(DistillationConfig):
    r"""
    Configuration of [`OnPolicyDistillTrainer`]: every [`trl.DistillationConfig`] field (TRL 1.16), plus the ones
    below. Inherited fields with an OPD meaning: `temperature` (rollout sampling temperature; the loss itself always
    compares temperature-1 distributions), `max_completion_length` (max new tokens per rollout),
    `teacher_model_name_or_path` (an in-process teacher loaded from a path). The inherited `beta` is not used:
    `divergence` picks the loss. `use_vllm` must stay False (vLLM cannot serve a block-diffusion student; the
    teacher may be served by vLLM through `teacher_url`).

    Parameters:
        num_rollouts_per_prompt (`int`, defaults to 4): student rollouts per prompt; a micro-batch of
            `per_device_train_batch_size` prompts trains on that many times more completions.
        block_size (`int`, *optional*): block size of the rollouts (and of their replay); default: the model's.
        threshold (`float`, defaults to 0.9): confidence threshold of the block sampler.
        max_steps_per_block (`int`, *optional*): cap on denoising steps per block.
        fallback (`str`, defaults to `"confidence"`): which masked position a step commits when none reaches the
            threshold: the most confident (`"confidence"`) or the leftmost (`"leftmost"`).
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
    block_size: int | None = field(default=None, metadata={"help": "Rollout block size (default: the model's)."})
    threshold: float = field(default=0.9, metadata={"help": "Block sampler confidence threshold."})
    max_steps_per_block: int | None = field(default=None, metadata={"help": "Cap on denoising steps per block."})
    fallback: str = field(
        default="confidence",
        metadata={
            "help": "Commit when no position reaches the threshold: 'confidence' (most confident) or 'leftmost'."
        },
    )
    teacher_top_k: int = field(default=20, metadata={"help": "Teacher top-k log-probs per token (+ a tail bucket)."})
    divergence: str = field(default="forward_kl", metadata={"help": f"One of {DIVERGENCES}."})
    jsd_beta: float = field(default=0.5, metadata={"help": "Teacher-side weight of the JSD mixture."})
    teacher_url: str | None = field(default=None, metadata={"help": "vLLM server URL of the AR teacher."})
    teacher_timeout: float = field(default=300.0, metadata={"help": "Seconds per teacher request."})
    teacher_max_retries: int = field(default=4, metadata={"help": "Retries of a failed teacher request."})
    teacher_backoff_s: float = field(default=0.5, metadata={"help": "First retry delay (doubles each retry)."})
    teacher_batch_size: int = field(default=32, metadata={"help": "Sequences per teacher call."})

    def __post_init__(self):
        super().__post_init__()
        check_rollout_settings(self)
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
