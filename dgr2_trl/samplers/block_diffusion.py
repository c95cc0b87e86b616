"""KV-cached block-diffusion decoding with confidence-threshold parallel commits."""

from __future__ import annotations

import math
import time

import torch
from transformers import DynamicCache

from ..modeling.conversion import ensure_custom_mask_support, get_block_diffusion_settings
from ..modeling.forward import decoder_hidden_states, log_probs_without_mask
from ..modeling.masks import block_attention_mask, position_ids_from_mask, prompt_block_ids
from .common import (
    check_prompt_ids,
    check_steps_per_block,
    check_threshold,
    cut_at_eos,
    encode_prompts,
    eos_ids,
    sample_tokens,
    warn_without_eos,
)
from .output import GenerationOutput


FALLBACKS = ("confidence", "leftmost")


def select_commits(
    confidence: torch.Tensor, masked: torch.Tensor, threshold: float, min_commits: torch.Tensor,
    fallback: str = "confidence",
) -> torch.Tensor:
    """Which masked positions to commit this step: every one with confidence >= threshold, plus `min_commits`
    (per row) more, so each row with masks left makes progress.

    `fallback="confidence"` (the paper's rule) takes the most confident masked positions; `"leftmost"` takes the
    leftmost ones, so whatever no position is sure of is decoded in AR order, each token seeing every token before
    it (what an AR-initialised model predicts best; it stops parallel guesses of mutually dependent tokens such as
    a ranking's first two ids)."""
    if fallback == "leftmost":
        first = masked & (masked.long().cumsum(-1) <= min_commits[:, None])
        return masked & ((confidence >= threshold) | first)
    if fallback != "confidence":
        raise ValueError(f"fallback must be one of {FALLBACKS}, got {fallback!r}")
    scores = torch.where(masked, confidence, torch.full_like(confidence, -1.0))
    order = scores.argsort(dim=-1, descending=True, stable=True)
    ranks = torch.empty_like(order).scatter_(-1, order, torch.arange(order.shape[-1], device=order.device).expand_as(order))
    return masked & ((scores >= threshold) | (ranks < min_commits[:, None]))


class BlockDiffusionSampler:
    """Decode a converted model block by block.

    The prompt is encoded once into a KV cache. Each block starts fully masked; every step runs the block against the
    cache and commits each masked position whose confidence (probability of its chosen token) is >= `threshold`,
    plus at least the most confident one (or the leftmost, `fallback="leftmost"`), until the block is full. The finished block's clean KV is then stored in
    the same model call as the next block's first denoising step, so a block costs exactly its number of steps. With
    `block_size=1` this is KV-cached AR decoding.

    Rows stop at the first end-of-sequence token; once a row commits one, the masked positions after it are filled
    with it (what the model is trained to produce there) and finished rows leave the batch after their block.
    """

    def __init__(
        self,
        model,
        tokenizer,
        block_size: int | None = None,
        threshold: float = 0.9,
        max_steps_per_block: int | None = None,
        eos_token_id: int | list[int] | None = None,
        fallback: str = "confidence",
    ):
        settings = get_block_diffusion_settings(model)
        if settings is None:
            raise ValueError(
                "the model is not a block-diffusion model; convert it first with "
                "dgr2_trl.convert_to_block_diffusion(model, tokenizer)"
            )
        if block_size is not None and (isinstance(block_size, bool) or not isinstance(block_size, int)
                                       or block_size < 1):
            raise ValueError(f"block_size must be None (the model's {settings.block_size}) or an integer >= 1, "
                             f"got {block_size!r}")
        # a converted model moved to an attention backend that ignores 4D masks would decode causally
        ensure_custom_mask_support(model)
        self.model = model
        self.tokenizer = tokenizer
        self.block_size = block_size or settings.block_size
        self.mask_token_id = settings.mask_token_id
        self.threshold = check_threshold(threshold)
        if fallback not in FALLBACKS:
            raise ValueError(f"fallback must be one of {FALLBACKS}, got {fallback!r}")
        self.fallback = fallback
        self.max_steps_per_block = check_steps_per_block(max_steps_per_block)
        self.eos = eos_ids(tokenizer, eos_token_id)
        warn_without_eos(self.eos)

    @torch.no_grad()
    def generate(
        self,
        prompts,
        max_new_tokens: int = 128,
        temperature: float = 0.0,
        threshold: float | None = None,
        max_steps_per_block: int | None = None,
        generator: torch.Generator | None = None,
    ) -> GenerationOutput:
        """Decode `ceil(max_new_tokens / block_size)` blocks per prompt (stopping rows at EOS) and cut each
        completion to `max_new_tokens`. Greedy when `temperature` <= 0."""
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        threshold = self.threshold if threshold is None else check_threshold(threshold)
        max_steps = check_steps_per_block(max_steps_per_block) or self.max_steps_per_block
        start = time.perf_counter()
        model, size, mask_id = self.model, self.block_size, self.mask_token_id
        device = next(model.parameters()).device
        eos = torch.tensor(self.eos, dtype=torch.long, device=device)

        prompt_ids, prompt_mask = encode_prompts(self.tokenizer, prompts, device)
        check_prompt_ids(model, prompt_ids, prompt_mask, math.ceil(max_new_tokens / size) * size)
        batch, prompt_width = prompt_ids.shape
        cache = DynamicCache(config=model.config)
        rows = torch.arange(batch, device=device)  # original row of each active batch entry
        key_valid = torch.empty(batch, 0, dtype=torch.bool, device=device)  # which cached keys are real tokens
        # The clean tokens still to be written to the cache: the prompt, then each finished block.
        pending = dict(
            ids=prompt_ids,
            positions=position_ids_from_mask(prompt_mask),
            blocks=prompt_block_ids(prompt_mask),
            valid=prompt_mask.bool(),
        )
        block_start = prompt_mask.sum(-1)  # position id of the current block's first token
        offsets = torch.arange(size, device=device)
        out_tokens = [[] for _ in range(batch)]
        out_steps = [[] for _ in range(batch)]
        out_logprobs = [[] for _ in range(batch)]
        steps_per_row = [0] * batch
        passes = 0

        for block_index in range(math.ceil(max_new_tokens / size)):
            active = len(rows)
            tokens = torch.full((active, size), mask_id, dtype=torch.long, device=device)
            commit_step = torch.full((active, size), -1, dtype=torch.long, device=device)
            token_logprob = torch.zeros(active, size, dtype=torch.float64, device=device)
            block_id = prompt_width + block_index
            noisy_blocks = torch.full((active, size), block_id, dtype=torch.long, device=device)
            noisy_positions = block_start[:, None] + offsets
            first_log_probs = None
            step = 0
            while (masked := commit_step < 0).any():
                # Query: [pending clean tokens] + [the noisy block] (the noisy part is not needed at block size 1).
                q_ids, q_pos, q_blocks, q_noisy, q_valid, keep = [], [], [], [], [], []
                if pending is not None:
                    q_ids.append(pending["ids"])
                    q_pos.append(pending["positions"])
                    q_blocks.append(pending["blocks"])
                    q_noisy.append(torch.zeros_like(pending["valid"]))
                    q_valid.append(pending["valid"])
                    keep.append(pending["ids"].shape[1] - 1)
                width = sum(t.shape[1] for t in q_ids)
                if size > 1:
                    q_ids.append(tokens)
                    q_pos.append(noisy_positions)
                    q_blocks.append(noisy_blocks)
                    q_noisy.append(torch.ones_like(tokens, dtype=torch.bool))
                    q_valid.append(torch.ones_like(tokens, dtype=torch.bool))
                    keep.extend(range(width, width + size - 1))
                q_ids, q_pos = torch.cat(q_ids, 1), torch.cat(q_pos, 1)
                q_blocks, q_noisy, q_valid = torch.cat(q_blocks, 1), torch.cat(q_noisy, 1), torch.cat(q_valid, 1)
                keep = torch.tensor(keep, device=device)
                busy = masked.any(-1)
                # Rows that have finished this block sit its remaining steps out (not in the step that writes the
                # pending clean tokens: every row needs those in the cache).
                busy = None if pending is not None or busy.all() else torch.nonzero(busy).flatten()
                hidden = self._step_hidden(busy, q_ids, q_pos, q_blocks, q_noisy, q_valid, key_valid, keep, cache)
                passes += 1
                if pending is not None:
                    key_valid = torch.cat([key_valid, pending["valid"]], 1)
                    # AR shift: the last clean token predicts the block's first token, in every step of the block.
                    first_log_probs = self._log_probs(hidden[:, 0], temperature)
                    hidden = hidden[:, 1:]
                    pending = None
                candidates, candidate_logprob, eos_logprob = self._score_masked(
                    first_log_probs, hidden, masked, temperature, generator
                )
                remaining = masked.sum(-1)
                min_commits = (remaining > 0).long()
                if max_steps is not None:
                    min_commits = torch.maximum(min_commits, -(-remaining // max(max_steps - step, 1)))
                commit = select_commits(candidate_logprob.exp(), masked, threshold, min_commits, self.fallback)
                tokens = torch.where(commit, candidates, tokens)
                token_logprob = torch.where(commit, candidate_logprob, token_logprob)
                commit_step = torch.where(commit, step, commit_step)
                # After a committed EOS the row is over: fill its later masked positions with EOS.
                is_eos = torch.isin(tokens, eos) & (commit_step >= 0)
                after_eos = (is_eos.long().cumsum(-1) - is_eos.long()) > 0
                fill = after_eos & (commit_step < 0)
                if fill.any():
                    eos_id = self.eos[0]
                    tokens = torch.where(fill, eos_id, tokens)
                    token_logprob = torch.where(fill, eos_logprob, token_logprob)
                    commit_step = torch.where(fill, step, commit_step)
                for entry in torch.nonzero(remaining > 0).flatten().tolist():
                    steps_per_row[int(rows[entry])] += 1
                step += 1

            finished = torch.zeros(active, dtype=torch.bool, device=device)
            for entry, row in enumerate(rows.tolist()):
                out_tokens[row].extend(tokens[entry].tolist())
                out_steps[row].extend(commit_step[entry].tolist())
                out_logprobs[row].extend(token_logprob[entry].tolist())
                finished[entry] = bool(torch.isin(tokens[entry], eos).any())
            pending = dict(
                ids=tokens,
                positions=noisy_positions,
                blocks=noisy_blocks,
                valid=torch.ones_like(tokens, dtype=torch.bool),
            )
            block_start = block_start + size
            if finished.all():
                break
            if finished.any():
                keep_rows = torch.nonzero(~finished).flatten()
                cache.batch_select_indices(keep_rows)
                rows, block_start = rows[keep_rows], block_start[keep_rows]
                key_valid = key_valid[keep_rows]
                pending = {name: value[keep_rows] for name, value in pending.items()}

        lengths = [cut_at_eos(row, self.eos, max_new_tokens) for row in out_tokens]
        completion_ids = [row[:n] for row, n in zip(out_tokens, lengths)]
        block_ends = [-(-n // size) * size for n in lengths]
        return GenerationOutput(
            texts=self.tokenizer.batch_decode(completion_ids, skip_special_tokens=True),
            completion_ids=completion_ids,
            commit_step=[row[:n] for row, n in zip(out_steps, lengths)],
            logprobs=[row[:n] for row, n in zip(out_logprobs, lengths)],
            num_forward_passes=passes - 1,
            num_prefill_passes=1,
            steps_per_row=steps_per_row,
            elapsed_s=time.perf_counter() - start,
            trailing_ids=[row[n:end] for row, n, end in zip(out_tokens, lengths, block_ends)],
            trailing_commit_step=[row[n:end] for row, n, end in zip(out_steps, lengths, block_ends)],
        )

    def _log_probs(self, hidden: torch.Tensor, temperature: float) -> torch.Tensor:
        logits = self.model.get_output_embeddings()(hidden)
        return log_probs_without_mask(logits, self.mask_token_id, temperature)

    def _score_masked(self, first_log_probs, noisy_hidden, masked, temperature, generator):
        """The chosen token, its log-prob and the EOS log-prob at every masked position of the block (zeros
        elsewhere). Token 0 is predicted by the last clean token (`first_log_probs`), token j > 0 by noisy position
        j - 1. The LM head and softmax run only where a token is still masked: a committed position's prediction
        would go unused, and on a small model the head is a large share of a step."""
        rows, cols = torch.nonzero(masked, as_tuple=True)
        at_first = cols == 0
        log_probs = first_log_probs.new_empty((len(rows), first_log_probs.shape[-1]))
        log_probs[at_first] = first_log_probs[rows[at_first]]
        later = ~at_first
        if later.any():
            log_probs[later] = self._log_probs(noisy_hidden[rows[later], cols[later] - 1], temperature).to(log_probs.dtype)
        chosen = sample_tokens(log_probs, temperature, generator)
        candidates = torch.zeros_like(masked, dtype=torch.long)
        candidate_logprob = torch.zeros_like(masked, dtype=log_probs.dtype)
        eos_logprob = torch.zeros_like(candidate_logprob)
        candidates[rows, cols] = chosen
        candidate_logprob[rows, cols] = log_probs.gather(-1, chosen[:, None]).squeeze(-1)
        if self.eos:
            eos_logprob[rows, cols] = log_probs[:, self.eos[0]]
        return candidates, candidate_logprob, eos_logprob

    def _step_hidden(self, busy, q_ids, q_pos, q_blocks, q_noisy, q_valid, key_valid, keep, cache):
        """Last hidden states `(B, len(keep), H)` of one step. With `busy` (row indices), only those rows run,
        against a copy of their cache rows, and the other rows get zeros (they have nothing left to commit)."""
        step_cache = cache
        if busy is not None:
            step_cache = DynamicCache(config=self.model.config)
            for layer_index, layer in enumerate(cache.layers):
                step_cache.update(layer.keys[busy], layer.values[busy], layer_index)
            q_ids, q_pos, q_blocks, q_noisy, q_valid = (t[busy] for t in (q_ids, q_pos, q_blocks, q_noisy, q_valid))
            key_valid = key_valid[busy]
        # Every cached key is a clean token of an earlier block (the prompt or a finished block), which the block
        # rule lets every query attend; only the queries among themselves need the rule.
        among_queries = block_attention_mask(q_blocks, q_noisy, q_blocks, q_noisy, q_valid)
        cached = key_valid[:, None, None, :].expand(-1, 1, q_ids.shape[1], -1)
        allowed = torch.cat([cached, among_queries], -1)
        hidden = decoder_hidden_states(self.model, q_ids, q_pos, allowed, step_cache)[:, keep]
        if busy is None:
            if self.block_size > 1:
                cache.crop(-self.block_size)  # the noisy block's KV is never kept
            return hidden
        full = hidden.new_zeros((cache.layers[0].keys.shape[0], *hidden.shape[1:]))
        full[busy] = hidden
        return full
