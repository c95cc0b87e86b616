"""KV-cached autoregressive decoding with the same interface as the block-diffusion sampler."""

from __future__ import annotations

import time

import torch
from transformers import DynamicCache

from ..modeling.conversion import get_block_diffusion_settings
from ..modeling.forward import _cache_kwarg, log_probs_without_mask
from ..modeling.masks import position_ids_from_mask
from .common import (
    check_max_new_tokens,
    check_prompt_ids,
    cut_at_eos,
    encode_prompts,
    eos_ids,
    sample_tokens,
    warn_without_eos,
)
from .constraints import UniqueTokens
from .output import GenerationOutput


class ARSampler:
    """Left-to-right decoding, one token per model call, with a KV cache and per-row stopping at EOS.

    Works on any causal LM (converted or not); for a converted model the mask token is never produced. It uses the
    model's ordinary 2D attention mask, so it runs on every attention backend. With a `constraint`
    (`UniqueTokens`) each step chooses among the tokens the constraint allows after the row's tokens so far.
    """

    def __init__(
        self, model, tokenizer, eos_token_id: int | list[int] | None = None, constraint: UniqueTokens | None = None
    ):
        if constraint is not None and not isinstance(constraint, UniqueTokens):
            raise TypeError(f"constraint must be a dgr2_trl.samplers.UniqueTokens or None, got {type(constraint)}")
        self.constraint = constraint
        self.model = model
        self.tokenizer = tokenizer
        self.eos = eos_ids(tokenizer, eos_token_id)
        warn_without_eos(self.eos)
        settings = get_block_diffusion_settings(model)
        self.mask_token_id = settings.mask_token_id if settings else None

    def _constrained(self, log_probs: torch.Tensor, written: torch.Tensor) -> torch.Tensor:
        """The next token's log-probs under the constraint, given each row's tokens so far (`written`)."""
        lengths = torch.full((len(written),), written.shape[1], dtype=torch.long, device=written.device)
        return self.constraint.next_token(log_probs, written, lengths)

    def _forward(self, input_ids, attention_mask, position_ids, cache):
        kwargs = {_cache_kwarg(self.model): cache}
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=True,
            logits_to_keep=1,
            **kwargs,
        )
        return out.logits[:, -1]

    @torch.no_grad()
    def generate(
        self,
        prompts,
        max_new_tokens: int = 128,
        temperature: float = 0.0,
        generator: torch.Generator | None = None,
    ) -> GenerationOutput:
        """Decode up to `max_new_tokens` per prompt; greedy when `temperature` <= 0."""
        check_max_new_tokens(max_new_tokens)
        start = time.perf_counter()
        device = next(self.model.parameters()).device
        input_ids, attention_mask = encode_prompts(self.tokenizer, prompts, device)
        check_prompt_ids(self.model, input_ids, attention_mask, max_new_tokens)
        batch = input_ids.shape[0]
        tokens = [[] for _ in range(batch)]
        logprobs = [[] for _ in range(batch)]
        rows = torch.arange(batch, device=device)  # original row of each active batch entry
        cache = DynamicCache(config=self.model.config)
        logits = self._forward(input_ids, attention_mask, position_ids_from_mask(attention_mask), cache)
        next_position = attention_mask.sum(-1)
        written = torch.empty(batch, 0, dtype=torch.long, device=device)  # the active rows' tokens so far
        passes = 0
        for step in range(max_new_tokens):
            log_probs = log_probs_without_mask(logits, self.mask_token_id, temperature)
            if self.constraint is not None:
                log_probs = self._constrained(log_probs, written)
            chosen = sample_tokens(log_probs, temperature, generator)
            chosen_logprob = log_probs.gather(-1, chosen[:, None]).squeeze(-1)
            for entry, row in enumerate(rows.tolist()):
                tokens[row].append(int(chosen[entry]))
                logprobs[row].append(float(chosen_logprob[entry]))
            alive = ~torch.isin(chosen, torch.tensor(self.eos, device=device, dtype=chosen.dtype))
            if step == max_new_tokens - 1 or not alive.any():
                break
            written = torch.cat([written, chosen[:, None]], 1)
            if not alive.all():
                keep = torch.nonzero(alive).flatten()
                cache.batch_select_indices(keep)
                rows, chosen, written = rows[keep], chosen[keep], written[keep]
                attention_mask, next_position = attention_mask[keep], next_position[keep]
            attention_mask = torch.cat([attention_mask, attention_mask.new_ones(len(rows), 1)], dim=-1)
            logits = self._forward(chosen[:, None], attention_mask, next_position[:, None], cache)
            next_position = next_position + 1
            passes += 1
        lengths = [cut_at_eos(row, self.eos, max_new_tokens) for row in tokens]
        completion_ids = [row[:n] for row, n in zip(tokens, lengths)]
        return GenerationOutput(
            texts=self.tokenizer.batch_decode(completion_ids, skip_special_tokens=True),
            completion_ids=completion_ids,
            commit_step=[[0] * n for n in lengths],
            logprobs=[row[:n] for row, n in zip(logprobs, lengths)],
            num_forward_passes=passes,
            num_prefill_passes=1,
            steps_per_row=lengths,
            elapsed_s=time.perf_counter() - start,
        )
