"""The masked-diffusion loss on completions, in one forward pass over the `[prompt ; x_0 ; x_t]` layout."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .forward import decoder_hidden_states, log_probs_without_mask
from .masks import block_attention_mask, build_training_layout, position_ids_from_mask
from .noise import BlockNoise, NoiseSchedule, get_schedule


@dataclass
class DiffusionLossOutput:
    """Parts of the loss, kept apart so a trainer can normalise across gradient-accumulation steps.

    Attributes:
        loss_sum: sum over masked tokens of weight x time-weight x cross-entropy (a differentiable scalar).
        masked_weight: sum of the per-token weights of the masked tokens (the "masked" normaliser).
        completion_weight: sum of the per-token weights of all real completion tokens (the ELBO normaliser
            that matches 1/t weighting).
        num_masked_tokens: how many tokens carried a loss.
    """

    loss_sum: torch.Tensor
    masked_weight: torch.Tensor
    completion_weight: torch.Tensor
    num_masked_tokens: int

    def loss(self, normalization: str = "auto", time_weighting: bool = True) -> torch.Tensor:
        """Token-level mean. `auto`: over all completion tokens with 1/t weighting (an ELBO estimate), over the
        masked tokens without it."""
        if normalization == "auto":
            normalization = "completion" if time_weighting else "masked"
        denominator = self.completion_weight if normalization == "completion" else self.masked_weight
        return self.loss_sum / denominator.clamp(min=1e-8)


def masked_diffusion_loss(
    model: torch.nn.Module,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    completion_ids: torch.Tensor,
    completion_mask: torch.Tensor,
    noise: BlockNoise,
    mask_token_id: int,
    block_size: int,
    schedule: str | NoiseSchedule = "linear",
    time_weighting: bool = True,
    token_weights: torch.Tensor | None = None,
) -> DiffusionLossOutput:
    """Cross-entropy of every masked completion token, predicted (AR-shifted) in its block's noisy state.

    Logits are computed only at the columns that predict a masked token. `token_weights` (B, R) lets answer tokens
    weigh more than reasoning tokens.
    """
    layout = build_training_layout(
        prompt_ids, prompt_mask, completion_ids, completion_mask, noise.noisy_mask, mask_token_id, block_size
    )
    selected = noise.noisy_mask.bool() & completion_mask.bool()
    rows, offsets = torch.nonzero(selected, as_tuple=True)
    hidden = decoder_hidden_states(model, layout.input_ids, layout.position_ids, layout.attention_mask)
    logits = model.get_output_embeddings()(hidden[rows, layout.predictor_column[rows, offsets]])
    log_probs = log_probs_without_mask(logits, mask_token_id)
    token_nll = F.nll_loss(log_probs, completion_ids[rows, offsets], reduction="none")

    weights = torch.ones_like(completion_ids, dtype=token_nll.dtype) if token_weights is None else token_weights
    weights = weights.to(token_nll.dtype) * completion_mask.to(token_nll.dtype)
    scale = weights[rows, offsets]
    if time_weighting:
        scale = scale * get_schedule(schedule).loss_weight(noise.t[rows, offsets].to(token_nll.dtype))
    return DiffusionLossOutput(
        loss_sum=(scale * token_nll).sum(),
        masked_weight=weights[rows, offsets].sum(),
        completion_weight=weights.sum(),
        num_masked_tokens=int(rows.numel()),
    )


def causal_lm_loss_sum(
    model: torch.nn.Module,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    completion_ids: torch.Tensor,
    completion_mask: torch.Tensor,
    mask_token_id: int | None = None,
    token_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Weighted sum over completion tokens of the plain AR next-token cross-entropy (a causal forward of prompt +
    completion, the model's block-size-1 mode). Added to the diffusion loss it keeps the student's AR mode close to
    its AR start, which self-speculative decoding verifies with. Prompts may be padded on either side; completions
    must be right-padded."""
    batch, prompt_len = prompt_ids.shape
    completion_len = completion_ids.shape[1]
    valid = torch.cat([prompt_mask.bool(), completion_mask.bool()], 1)
    columns = torch.arange(prompt_len + completion_len, device=prompt_ids.device).expand(batch, -1)
    clean = torch.zeros_like(valid)
    allowed = block_attention_mask(columns, clean, columns, clean, valid)  # each column its own block: causal
    input_ids = torch.cat([prompt_ids, completion_ids], 1)
    hidden = decoder_hidden_states(model, input_ids, position_ids_from_mask(valid), allowed)
    # completion token r is predicted by the column before it; token 0 by the last real prompt token
    last_prompt = (prompt_mask.long() * torch.arange(prompt_len, device=prompt_ids.device)).argmax(-1)
    predictor = prompt_len + torch.arange(completion_len, device=prompt_ids.device) - 1
    predictor = torch.where(predictor[None] < prompt_len, last_prompt[:, None], predictor[None]).expand(batch, -1)
    rows, offsets = torch.nonzero(completion_mask.bool(), as_tuple=True)
    logits = model.get_output_embeddings()(hidden[rows, predictor[rows, offsets]])
    nll = F.nll_loss(log_probs_without_mask(logits, mask_token_id), completion_ids[rows, offsets], reduction="none")
    weights = torch.ones_like(nll) if token_weights is None else token_weights[rows, offsets].to(nll.dtype)
    return (weights * nll).sum()
