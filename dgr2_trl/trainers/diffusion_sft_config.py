"""Configuration of `DiffusionSFTTrainer` (conversion fine-tuning, CFT)."""

from __future__ import annotations

from dataclasses import dataclass, field

from trl import SFTConfig


NORMALIZATIONS = ("auto", "completion", "masked")
SCHEDULES = ("linear", "cosine")
# the validity probe's fields, now the arguments of `ValidRateCallback`
REMOVED_FIELDS = frozenset(
    {"valid_rate_num_prompts", "valid_rate_max_new_tokens", "valid_rate_threshold", "valid_rate_batch_size"}
)


@dataclass
class DiffusionSFTConfig(SFTConfig):
    r"""
    Configuration of [`DiffusionSFTTrainer`]: every [`trl.SFTConfig`] field, plus the block-diffusion ones below.

    The loss is the masked-diffusion loss on the completion, computed for every block in one forward pass over the
    `[prompt ; x_0 ; x_t]` layout of `dgr2_trl.modeling`. Only prompt-completion datasets are supported, without
    packing.

    Changed defaults: none (every [`trl.SFTConfig`] field keeps TRL's default). Task-specific settings are not
    defaulted here: the re-ranking answer's prefix and weight are passed by the recipe.

    Parameters:
        > Block diffusion

        block_size (`int`, *optional*):
            Tokens per block. `None`: the block size stored in an already converted model, or 32 for an AR model.
            Setting it on a converted model with another block size re-stores the new one (a warning says so).
        mask_token (`str`, *optional*):
            Mask token string. `None`: the converted model's own, or `"<|mask|>"` for an AR model (added to the
            tokenizer if new). A converted model with a different mask token is an error.
        noise_schedule (`str`, *optional*, defaults to `"linear"`):
            `"linear"` (mask probability t) or `"cosine"`.
        min_mask_ratio (`float`, *optional*, defaults to `0.1`):
            Lower end of the diffusion time t drawn per block (for the linear schedule: the masking rate). Must be
            `> 0` with `time_weighting` (its weight is 1/t).
        max_mask_ratio (`float`, *optional*, defaults to `1.0`):
            Upper end of t.
        antithetic_noise (`bool`, *optional*, defaults to `True`):
            Stratify the block times of a sequence (lower-variance loss, as in BD3-LM).
        time_weighting (`bool`, *optional*, defaults to `True`):
            Weight each masked token by the schedule's ELBO weight (1/t for the linear schedule).
        loss_normalization (`str`, *optional*, defaults to `"auto"`):
            Denominator of the token-level mean, summed over the whole accumulated batch (so gradient accumulation
            matches one large batch): `"completion"` (weights of all completion tokens, the ELBO estimate),
            `"masked"` (weights of the masked tokens), or `"auto"` (completion with time weighting, else masked).
        answer_weight (`float`, *optional*, defaults to `1.0`):
            Loss weight of answer tokens: from the last `answer_prefix` in the completion to its end (EOS included).
            A weight different from `reasoning_weight` needs `answer_prefix`. The paper weights the ranking answer
            higher; the recipe uses 2.0 with `answer_prefix=dgr2_trl.data.RANKING_ANSWER_PREFIX`.
        reasoning_weight (`float`, *optional*, defaults to `1.0`):
            Loss weight of the tokens before the answer (the reasoning trace).
        answer_prefix (`str`, *optional*):
            Text that starts the answer, e.g. `'{"ranking"'` for the re-ranking task. Located in the decoded
            completion and mapped back to tokens, so it works whatever the tokenizer merges around it. A completion
            without it is all reasoning. `None` (the default): no split, so `answer_weight` must equal
            `reasoning_weight`.
        ar_loss_weight (`float`, *optional*, defaults to `0.0`):
            Weight of a joint AR next-token loss on the same batch (`dgr2_trl.modeling.causal_lm_loss_sum`: one causal
            forward of prompt + completion, token weights as above, normalised like the diffusion loss). Keeps the
            model's block-size-1 mode close to the AR model, which self-speculative decoding
            (`SpeculativeSampler(verifier=None)`) verifies with. Costs a second, shorter forward per step.
        complementary_masking (`bool`, *optional*, defaults to `False`):
            Also train every sample with the inverse mask, as extra rows of the same forward pass, so each completion
            token is supervised once per step. The inverse rows use the time whose mask probability is `1 - p(t)`
            (for the linear schedule `1 - t`), clamped into `[min_mask_ratio, max_mask_ratio]`; use a range symmetric
            around 0.5 to avoid clamping.
        pad_completion_to_block (`bool`, *optional*, defaults to `True`):
            Cut each completion after its first EOS and pad it with EOS to a multiple of `block_size`, training the
            padding too: the sampler fills the positions after an EOS with EOS, so the model learns exactly that.
            A completion truncated by `max_length` (no EOS) is left as it is.

    > [!NOTE]
    > `packing=True` and `padding_free=True` are refused; `completion_only_loss` must be `None` or `True`.
    > The valid-rate probe is a callback, [`ValidRateCallback`]; the former `valid_rate_*` fields are refused.
    """

    block_size: int | None = field(
        default=None,
        metadata={"help": "Tokens per block. None: the converted model's block size, or 32 for an AR model."},
    )
    mask_token: str | None = field(
        default=None,
        metadata={"help": "Mask token. None: the converted model's, or '<|mask|>' for an AR model."},
    )
    noise_schedule: str = field(default="linear", metadata={"help": "Noise schedule.", "choices": list(SCHEDULES)})
    min_mask_ratio: float = field(
        default=0.1, metadata={"help": "Lowest diffusion time t per block (> 0 with time_weighting)."}
    )
    max_mask_ratio: float = field(default=1.0, metadata={"help": "Highest diffusion time t per block."})
    antithetic_noise: bool = field(
        default=True, metadata={"help": "Stratify the block times of each sequence (lower variance)."}
    )
    time_weighting: bool = field(
        default=True, metadata={"help": "Weight masked tokens by the ELBO weight (1/t for linear)."}
    )
    loss_normalization: str = field(
        default="auto",
        metadata={
            "help": "Denominator over the accumulated batch: completion token weights, masked token weights, or "
            "auto (completion with time weighting, else masked).",
            "choices": list(NORMALIZATIONS),
        },
    )
    answer_weight: float = field(
        default=1.0, metadata={"help": "Loss weight of the answer tokens (from `answer_prefix` on)."}
    )
    reasoning_weight: float = field(default=1.0, metadata={"help": "Loss weight of the reasoning tokens."})
    answer_prefix: str | None = field(
        default=None,
        metadata={
            "help": "Text that starts the answer at the end of a completion (the ranking task: '{\"ranking\"')."
        },
    )
    ar_loss_weight: float = field(
        default=0.0, metadata={"help": "Weight of a joint AR next-token loss on the same batch (0: none)."}
    )
    complementary_masking: bool = field(
        default=False, metadata={"help": "Also train each sample with the inverse mask (extra rows, same forward)."}
    )
    pad_completion_to_block: bool = field(
        default=True,
        metadata={"help": "Cut completions after the first EOS and pad them with EOS to a block multiple."},
    )

    def __new__(cls, *args, **kwargs):
        # Called before the dataclass __init__, which would refuse these with a TypeError that does not say where
        # the probe went.
        removed = sorted(REMOVED_FIELDS & kwargs.keys())
        if removed:
            raise TypeError(
                f"DiffusionSFTConfig no longer has {', '.join(removed)}: the valid-rate probe is a callback now. Use "
                "trainer.add_callback(ValidRateCallback(trainer, num_prompts=..., max_new_tokens=..., threshold=..., "
                "batch_size=...)) (from dgr2_trl.trainers); it logs eval_valid_rate at each evaluation."
            )
        return super().__new__(cls)

    def __post_init__(self):
        super().__post_init__()
        if self.block_size is not None and (
            isinstance(self.block_size, bool) or not isinstance(self.block_size, int) or self.block_size < 1
        ):
            raise ValueError(f"block_size must be an integer >= 1 (or None to inherit it), got {self.block_size!r}")
        if self.packing or self.eval_packing:
            raise ValueError(
                "packing=True is not supported by DiffusionSFTTrainer: the block-diffusion layout needs one "
                "completion per row (packed samples would attend across their boundaries). Set packing=False."
            )
        if self.padding_free:
            raise ValueError("padding_free=True is not supported by DiffusionSFTTrainer; set padding_free=False.")
        if self.completion_only_loss is False:
            raise ValueError(
                "completion_only_loss=False is not supported: the diffusion loss is defined on the completion only. "
                "Leave it as None or True."
            )
        if self.assistant_only_loss:
            raise ValueError(
                "assistant_only_loss=True is not supported: DiffusionSFTTrainer needs a prompt-completion dataset "
                "(columns 'prompt' and 'completion') and trains on the completion."
            )
        if self.noise_schedule not in SCHEDULES:
            raise ValueError(f"noise_schedule must be one of {SCHEDULES}, got {self.noise_schedule!r}")
        if self.loss_normalization not in NORMALIZATIONS:
            raise ValueError(f"loss_normalization must be one of {NORMALIZATIONS}, got {self.loss_normalization!r}")
        if not 0.0 <= self.min_mask_ratio <= self.max_mask_ratio <= 1.0 or self.max_mask_ratio <= 0.0:
            raise ValueError(
                "need 0 <= min_mask_ratio <= max_mask_ratio <= 1 and max_mask_ratio > 0, got "
                f"min_mask_ratio={self.min_mask_ratio}, max_mask_ratio={self.max_mask_ratio}"
            )
        if self.time_weighting and self.min_mask_ratio <= 0.0:
            raise ValueError("time_weighting=True needs min_mask_ratio > 0 (the weight of a masked token is 1/t)")
        if self.ar_loss_weight < 0:
            raise ValueError(f"ar_loss_weight must be >= 0, got {self.ar_loss_weight}")
        if self.answer_weight < 0 or self.reasoning_weight < 0 or self.answer_weight + self.reasoning_weight == 0:
            raise ValueError(
                "answer_weight and reasoning_weight must be >= 0 and not both 0, got "
                f"{self.answer_weight} and {self.reasoning_weight}"
            )
        if self.answer_weight != self.reasoning_weight and not self.answer_prefix:
            raise ValueError(
                f"answer_weight={self.answer_weight} differs from reasoning_weight={self.reasoning_weight}, but no "
                "answer_prefix says where the answer starts; pass answer_prefix (for the re-ranking task "
                "dgr2_trl.data.RANKING_ANSWER_PREFIX, '{\"ranking\"') or equal weights"
            )
        if self.loss_type != "nll":
            raise ValueError(f"loss_type={self.loss_type!r} is not supported by DiffusionSFTTrainer; use 'nll'")
