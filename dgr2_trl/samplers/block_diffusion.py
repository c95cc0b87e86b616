"""KV-cached block-diffusion decoding with confidence-threshold parallel commits."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, fields

import torch
from transformers import DynamicCache

from ..modeling.conversion import ensure_custom_mask_support
from ..modeling.forward import decoder_hidden_states, log_probs_without_mask
from ..modeling.masks import block_attention_mask, position_ids_from_mask, prompt_block_ids
from .common import (
    block_settings_of,
    check_max_new_tokens,
    check_prompt_ids,
    check_steps_per_block,
    check_threshold,
    cut_at_eos,
    encode_prompts,
    eos_ids,
    sample_tokens,
    warn_without_eos,
)
from .constraints import UniqueTokens
from .output import GenerationOutput


FALLBACKS = ("confidence", "leftmost")


def select_commits(
    confidence: torch.Tensor,
    masked: torch.Tensor,
    threshold: float,
    min_commits: torch.Tensor,
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
    arange = torch.arange(order.shape[-1], device=order.device).expand_as(order)
    ranks = torch.empty_like(order).scatter_(-1, order, arange)
    return masked & ((scores >= threshold) | (ranks < min_commits[:, None]))


def min_commits_per_row(masked: torch.Tensor, max_steps: int | None, step: int) -> torch.Tensor:
    """How many positions each row must commit at `step` (0-based) of a block: one while it has masks left, and
    under a cap of `max_steps` steps per block enough to finish in time (its masks over the steps left, rounded
    up)."""
    remaining = masked.sum(-1)
    min_commits = (remaining > 0).long()
    if max_steps is not None:
        min_commits = torch.maximum(min_commits, -(-remaining // max(max_steps - step, 1)))
    return min_commits


def fill_after_eos(
    tokens: torch.Tensor, committed: torch.Tensor, eos_token_ids: Sequence[int] | torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """A row that has committed an end-of-sequence token is over: its uncommitted positions after that token get
    the first EOS id (what the model is trained to produce there). Returns the tokens with those positions filled
    and the mask of the filled positions (for the caller to commit). `tokens` and `committed` are `(B, L)`;
    with no `eos_token_ids` nothing is filled."""
    eos = torch.as_tensor(eos_token_ids, dtype=torch.long, device=tokens.device)
    if eos.numel() == 0:
        return tokens, torch.zeros_like(committed)
    is_eos = (torch.isin(tokens, eos) & committed).long()
    after_eos = (is_eos.cumsum(-1) - is_eos) > 0
    filled = after_eos & ~committed
    return torch.where(filled, int(eos[0]), tokens), filled


@dataclass
class Query:
    """The tokens of one model call, one row per active prompt: ids, position ids, block ids (for the block
    attention rule), whether each is a noisy token of the block being denoised, and whether it is a real token
    (False on a prompt's left padding)."""

    ids: torch.Tensor
    positions: torch.Tensor
    block_ids: torch.Tensor
    noisy: torch.Tensor
    valid: torch.Tensor

    @property
    def width(self) -> int:
        return self.ids.shape[1]

    def select_rows(self, rows: torch.Tensor) -> Query:
        return Query(**{f.name: getattr(self, f.name)[rows] for f in fields(self)})

    @staticmethod
    def concat(parts: list[Query]) -> Query:
        return Query(**{f.name: torch.cat([getattr(p, f.name) for p in parts], 1) for f in fields(Query)})


@dataclass
class _Block:
    """The block being denoised, one row per active prompt: its tokens (the mask token until committed), the step
    each was committed at (-1: still masked) and its log-prob then."""

    tokens: torch.Tensor
    commit_step: torch.Tensor
    logprob: torch.Tensor
    positions: torch.Tensor
    block_ids: torch.Tensor
    first_log_probs: torch.Tensor | None = None  # the last clean token's prediction of token 0, from the first step

    @classmethod
    def fully_masked(cls, mask_token_id: int, start: torch.Tensor, size: int, block_id: int) -> _Block:
        rows, device = len(start), start.device
        return cls(
            tokens=torch.full((rows, size), mask_token_id, dtype=torch.long, device=device),
            commit_step=torch.full((rows, size), -1, dtype=torch.long, device=device),
            logprob=torch.zeros(rows, size, dtype=torch.float64, device=device),
            positions=start[:, None] + torch.arange(size, device=device),
            block_ids=torch.full((rows, size), block_id, dtype=torch.long, device=device),
        )

    @property
    def masked(self) -> torch.Tensor:
        return self.commit_step < 0

    def commit(self, where: torch.Tensor, tokens: torch.Tensor, logprob: torch.Tensor, step: int) -> None:
        self.tokens = torch.where(where, tokens, self.tokens)
        self.logprob = torch.where(where, logprob, self.logprob)
        self.commit_step = torch.where(where, step, self.commit_step)

    def as_query(self, noisy: bool) -> Query:
        flag = torch.ones_like(self.tokens, dtype=torch.bool)
        return Query(self.tokens, self.positions, self.block_ids, flag if noisy else ~flag, flag)


@dataclass
class _ActiveRows:
    """The prompts still decoding: their KV cache, original batch rows, which cached keys are real tokens, the clean
    tokens still to be written to the cache (the prompt, then each finished block; None once written), the
    position id of the current block's first token and the finished blocks' tokens (what a constraint reads)."""

    cache: DynamicCache
    rows: torch.Tensor
    key_valid: torch.Tensor
    pending: Query | None
    block_start: torch.Tensor
    written: torch.Tensor

    @classmethod
    def for_prompts(cls, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, cache: DynamicCache) -> _ActiveRows:
        valid = prompt_mask.bool()
        prompt = Query(
            prompt_ids,
            position_ids_from_mask(prompt_mask),
            prompt_block_ids(prompt_mask),
            torch.zeros_like(valid),
            valid,
        )
        batch, device = len(prompt_ids), prompt_ids.device
        return cls(
            cache=cache,
            rows=torch.arange(batch, device=device),
            key_valid=torch.empty(batch, 0, dtype=torch.bool, device=device),
            pending=prompt,
            block_start=prompt_mask.sum(-1),
            written=torch.empty(batch, 0, dtype=torch.long, device=device),
        )

    def next_block(self, finished_block: _Block, retire: torch.Tensor) -> None:
        """Queue the finished block's clean tokens for the cache (written in the next block's first step, so a
        block costs exactly its number of steps) and drop the `retire` rows (they reached EOS)."""
        self.pending = finished_block.as_query(noisy=False)
        self.block_start = self.block_start + finished_block.tokens.shape[1]
        self.written = torch.cat([self.written, finished_block.tokens], 1)
        if retire.any():
            keep = torch.nonzero(~retire).flatten()
            self.cache.batch_select_indices(keep)
            self.rows, self.block_start, self.key_valid = self.rows[keep], self.block_start[keep], self.key_valid[keep]
            self.written = self.written[keep]
            self.pending = self.pending.select_rows(keep)


class _Transcript:
    """What decoding produced for each original row (every block's tokens, commit steps and log-probs, and how many
    steps it took part in) and how many model calls it made."""

    def __init__(self, batch: int):
        self.tokens = [[] for _ in range(batch)]
        self.commit_step = [[] for _ in range(batch)]
        self.logprobs = [[] for _ in range(batch)]
        self.steps_per_row = [0] * batch
        self.model_calls = 0

    def count_step(self, rows: torch.Tensor, took_part: torch.Tensor) -> None:
        self.model_calls += 1
        for entry in torch.nonzero(took_part).flatten().tolist():
            self.steps_per_row[int(rows[entry])] += 1

    def add_block(self, rows: torch.Tensor, block: _Block) -> None:
        for entry, row in enumerate(rows.tolist()):
            self.tokens[row].extend(block.tokens[entry].tolist())
            self.commit_step[row].extend(block.commit_step[entry].tolist())
            self.logprobs[row].extend(block.logprob[entry].tolist())


@dataclass(frozen=True)
class _DecodeSettings:
    """The per-call settings of `generate` (its arguments, resolved against the sampler's defaults)."""

    threshold: float
    max_steps: int | None
    temperature: float
    generator: torch.Generator | None
    eos: torch.Tensor


class BlockDiffusionSampler:
    """Decode a converted model block by block.

    The prompt is encoded once into a KV cache. Each block starts fully masked; every step runs the block against the
    cache and commits each masked position whose confidence (probability of its chosen token) is >= `threshold`,
    plus at least the most confident one (or the leftmost, `fallback="leftmost"`), until the block is full. The
    finished block's clean KV is then stored in the same model call as the next block's first denoising step, so a
    block costs exactly its number of steps. With `block_size=1` this is KV-cached AR decoding.

    Rows stop at the first end-of-sequence token; once a row commits one, the masked positions after it are filled
    with EOS (`fill_after_eos`: what the model is trained to produce there) and finished rows leave the batch after
    their block.

    With a `constraint` (`UniqueTokens`, e.g. distinct candidate ids in a ranking), every masked position in the
    constrained span chooses among the tokens the row has not written there (the others' probability renormalised
    away), and of the positions one step commits that chose the same token only the most confident is kept; with a
    separator, an id slot (after the marker or a written separator, before a written separator or end token)
    chooses only among unused ids, and a step's commits that would leave a slot empty are dropped
    (`UniqueTokens.drop_empty_slots`). Confidences and log-probs are then those of the constrained distribution.
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
        constraint: UniqueTokens | None = None,
    ):
        settings, block_size = block_settings_of(model, block_size, "model")
        # a converted model moved to an attention backend that ignores 4D masks would decode causally
        ensure_custom_mask_support(model)
        self.model = model
        self.tokenizer = tokenizer
        self.block_size = block_size
        self.mask_token_id = settings.mask_token_id
        self.threshold = check_threshold(threshold)
        if fallback not in FALLBACKS:
            raise ValueError(f"fallback must be one of {FALLBACKS}, got {fallback!r}")
        self.fallback = fallback
        if constraint is not None and not isinstance(constraint, UniqueTokens):
            raise TypeError(f"constraint must be a dgr2_trl.samplers.UniqueTokens or None, got {type(constraint)}")
        self.constraint = constraint
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
        check_max_new_tokens(max_new_tokens)
        start = time.perf_counter()
        device = next(self.model.parameters()).device
        settings = _DecodeSettings(
            threshold=self.threshold if threshold is None else check_threshold(threshold),
            max_steps=check_steps_per_block(max_steps_per_block) or self.max_steps_per_block,
            temperature=temperature,
            generator=generator,
            eos=torch.tensor(self.eos, dtype=torch.long, device=device),
        )
        prompt_ids, prompt_mask = encode_prompts(self.tokenizer, prompts, device)
        num_blocks = math.ceil(max_new_tokens / self.block_size)
        check_prompt_ids(self.model, prompt_ids, prompt_mask, num_blocks * self.block_size)
        # The prompt is encoded into the cache in the first block's first step, as each finished block is in the
        # next block's first step.
        active = _ActiveRows.for_prompts(prompt_ids, prompt_mask, DynamicCache(config=self.model.config))
        transcript = _Transcript(len(prompt_ids))
        for block_index in range(num_blocks):
            block_id = prompt_ids.shape[1] + block_index  # after every prompt position's block id
            block = _Block.fully_masked(self.mask_token_id, active.block_start, self.block_size, block_id)
            step = 0
            while block.masked.any():
                took_part = self._denoise_step(active, block, step, settings)
                transcript.count_step(active.rows, took_part)
                step += 1
            transcript.add_block(active.rows, block)
            reached_eos = torch.isin(block.tokens, settings.eos).any(-1)
            if reached_eos.all():
                break
            active.next_block(block, retire=reached_eos)
        return self._output(transcript, max_new_tokens, start)

    def _denoise_step(self, active: _ActiveRows, block: _Block, step: int, settings: _DecodeSettings) -> torch.Tensor:
        """One model call on the block: score every masked position, commit the confident ones (`select_commits`),
        then fill each row after a committed EOS. Returns which rows had masks left (took part in the step)."""
        masked = block.masked
        noisy_hidden = self._forward_block(active, block, settings.temperature)
        ban = None
        if self.constraint is not None:
            tokens, known = self._row_tokens(active, block)
            in_span, used = self.constraint.span_state(tokens, known)
            id_slot = self.constraint.id_slots(tokens, known, in_span)
            rule = self.constraint.format_rule(tokens, known, in_span)
            if rule is not None:
                rule = tuple(r[:, -self.block_size :] for r in rule)
            ban = (in_span[:, -self.block_size :], used, id_slot[:, -self.block_size :], rule)
        candidates, candidate_logprob, eos_logprob = self._score_masked(
            block.first_log_probs, noisy_hidden, masked, settings.temperature, settings.generator, ban
        )
        min_commits = min_commits_per_row(masked, settings.max_steps, step)
        commit = select_commits(candidate_logprob.exp(), masked, settings.threshold, min_commits, self.fallback)
        if self.constraint is not None:
            commit = self._drop_repeats(active, block, commit, candidates, candidate_logprob)
        block.commit(commit, candidates, candidate_logprob, step)
        filled_tokens, filled = fill_after_eos(block.tokens, ~block.masked, settings.eos)
        block.commit(filled, filled_tokens, eos_logprob, step)
        return masked.any(-1)

    @staticmethod
    def _row_tokens(active: _ActiveRows, block: _Block) -> tuple[torch.Tensor, torch.Tensor]:
        """Each active row's completion so far (finished blocks, then the current one) and which of it is written."""
        tokens = torch.cat([active.written, block.tokens], 1)
        known = torch.cat([torch.ones_like(active.written, dtype=torch.bool), ~block.masked], 1)
        return tokens, known

    def _drop_repeats(self, active, block, commit, candidates, candidate_logprob) -> torch.Tensor:
        """`UniqueTokens.drop_repeats`, `drop_empty_slots` and `drop_format_conflicts` on the step's commits. A row left with no commit (only
        when every token it could choose was banned) keeps its commits, so that it still makes progress."""
        tokens, known = self._row_tokens(active, block)
        size = self.block_size
        tokens[:, -size:] = torch.where(commit, candidates, block.tokens)
        pad = torch.zeros_like(active.written, dtype=torch.bool)
        confidence = torch.cat([pad.double(), candidate_logprob.double()], 1)
        commits = torch.cat([pad, commit], 1)
        kept = self.constraint.drop_repeats(tokens, known, commits, confidence)
        kept &= self.constraint.drop_empty_slots(tokens, known, commits)
        kept = (kept & self.constraint.drop_format_conflicts(tokens, known, commits))[:, -size:]
        stuck = commit.any(-1) & ~kept.any(-1)
        return torch.where(stuck[:, None], commit, kept)

    def _forward_block(self, active: _ActiveRows, block: _Block, temperature: float) -> torch.Tensor:
        """Run the block against the cache. Returns the hidden states of its noisy positions 0..size-2 (position j
        predicts token j + 1). In a block's first step the query starts with the clean tokens still to be cached
        (the prompt or the previous block): their KV is kept, and the last of them predicts token 0 for every step
        of the block (`block.first_log_probs`; the AR shift)."""
        writes_pending = active.pending is not None
        query, read = self._step_query(active.pending, block)
        has_masks = block.masked.any(-1)
        # Rows that have finished this block sit its remaining steps out (not in the step that writes the pending
        # clean tokens: every row needs those in the cache).
        busy = None if writes_pending or has_masks.all() else torch.nonzero(has_masks).flatten()
        hidden = self._step_hidden(busy, query, active.key_valid, read, active.cache)
        if writes_pending:
            active.key_valid = torch.cat([active.key_valid, active.pending.valid], 1)
            active.pending = None
            block.first_log_probs = self._log_probs(hidden[:, 0], temperature)
            hidden = hidden[:, 1:]
        return hidden

    def _step_query(self, pending: Query | None, block: _Block) -> tuple[Query, torch.Tensor]:
        """The query of one step, `[pending clean tokens] + [the noisy block]`, and the columns whose hidden states
        predict the block's tokens: the last clean token (token 0), then noisy positions 0..size-2. At block size 1
        the noisy part is left out: the clean token's prediction is all the block needs."""
        parts, read = [], []
        if pending is not None:
            parts.append(pending)
            read.append(pending.width - 1)
        if self.block_size > 1:
            start = pending.width if pending is not None else 0
            parts.append(block.as_query(noisy=True))
            read.extend(range(start, start + self.block_size - 1))
        return Query.concat(parts), torch.tensor(read, device=block.tokens.device)

    def _output(self, transcript: _Transcript, max_new_tokens: int, start: float) -> GenerationOutput:
        """Cut each row after its first EOS (at most `max_new_tokens` tokens); the rest of its last block is kept
        apart as the trailing part (replay needs the block as it was decoded)."""
        lengths = [cut_at_eos(row, self.eos, max_new_tokens) for row in transcript.tokens]
        block_ends = [-(-n // self.block_size) * self.block_size for n in lengths]
        kept = lambda rows: [row[:n] for row, n in zip(rows, lengths)]  # noqa: E731
        trailing = lambda rows: [row[n:end] for row, n, end in zip(rows, lengths, block_ends)]  # noqa: E731
        completion_ids = kept(transcript.tokens)
        return GenerationOutput(
            texts=self.tokenizer.batch_decode(completion_ids, skip_special_tokens=True),
            completion_ids=completion_ids,
            commit_step=kept(transcript.commit_step),
            logprobs=kept(transcript.logprobs),
            num_forward_passes=transcript.model_calls - 1,  # the first call is the prompt's prefill
            num_prefill_passes=1,
            steps_per_row=transcript.steps_per_row,
            elapsed_s=time.perf_counter() - start,
            trailing_ids=trailing(transcript.tokens),
            trailing_commit_step=trailing(transcript.commit_step),
        )

    def _log_probs(self, hidden: torch.Tensor, temperature: float) -> torch.Tensor:
        logits = self.model.get_output_embeddings()(hidden)
        return log_probs_without_mask(logits, self.mask_token_id, temperature)

    def _score_masked(self, first_log_probs, noisy_hidden, masked, temperature, generator, ban=None):
        """The chosen token, its log-prob and the EOS log-prob at every masked position of the block (zeros
        elsewhere). Token 0 is predicted by the last clean token (`first_log_probs`), token j > 0 by noisy position
        j - 1. The LM head and softmax run only where a token is still masked: a committed position's prediction
        would go unused, and on a small model the head is a large share of a step. `ban` (the block's in-span
        positions and each row's used tokens) applies the constraint before choosing."""
        rows, cols = torch.nonzero(masked, as_tuple=True)
        at_first = cols == 0
        log_probs = first_log_probs.new_empty((len(rows), first_log_probs.shape[-1]))
        log_probs[at_first] = first_log_probs[rows[at_first]]
        later = ~at_first
        if later.any():
            predicting = noisy_hidden[rows[later], cols[later] - 1]  # noisy position j - 1 predicts token j
            log_probs[later] = self._log_probs(predicting, temperature).to(log_probs.dtype)
        if ban is not None:
            in_span, used, id_slot, rule = ban
            spanned = in_span[rows, cols]
            slot = id_slot[rows, cols][spanned]
            log_probs[spanned] = self.constraint.ban(log_probs[spanned], used[rows[spanned]], slot)
            if rule is not None:  # the answer's shape (UniqueTokens.answer_format), in the span and before it
                forced, closing = rule
                log_probs = self.constraint.keep_format(log_probs, forced[rows, cols], closing[rows, cols])
        chosen = sample_tokens(log_probs, temperature, generator)
        candidates = torch.zeros_like(masked, dtype=torch.long)
        candidate_logprob = torch.zeros_like(masked, dtype=log_probs.dtype)
        eos_logprob = torch.zeros_like(candidate_logprob)
        candidates[rows, cols] = chosen
        candidate_logprob[rows, cols] = log_probs.gather(-1, chosen[:, None]).squeeze(-1)
        if self.eos:
            eos_logprob[rows, cols] = log_probs[:, self.eos[0]]
        return candidates, candidate_logprob, eos_logprob

    def _step_hidden(self, busy, query: Query, key_valid, read, cache):
        """Last hidden states `(B, len(read), H)` of one step at the query columns `read`. With `busy` (row
        indices), only those rows run, against a copy of their cache rows, and the other rows get zeros (they have
        nothing left to commit)."""
        step_cache = cache
        if busy is not None:
            step_cache = DynamicCache(config=self.model.config)
            for layer_index, layer in enumerate(cache.layers):
                step_cache.update(layer.keys[busy], layer.values[busy], layer_index)
            query, key_valid = query.select_rows(busy), key_valid[busy]
        # Every cached key is a clean token of an earlier block (the prompt or a finished block), which the block
        # rule lets every query attend; only the queries among themselves need the rule.
        among_queries = block_attention_mask(query.block_ids, query.noisy, query.block_ids, query.noisy, query.valid)
        cached = key_valid[:, None, None, :].expand(-1, 1, query.width, -1)
        allowed = torch.cat([cached, among_queries], -1)
        hidden = decoder_hidden_states(self.model, query.ids, query.positions, allowed, step_cache)[:, read]
        if busy is None:
            if self.block_size > 1:
                cache.crop(-self.block_size)  # the noisy block's KV is never kept
            return hidden
        full = hidden.new_zeros((cache.layers[0].keys.shape[0], *hidden.shape[1:]))
        full[busy] = hidden
        return full
