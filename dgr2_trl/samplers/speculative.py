"""Lossless speculative decoding: block-diffusion drafts verified by an AR model.

Each round, every row drafts the rest of its current block with the block-diffusion decoder (several tokens per
drafter pass), then one KV-cached causal forward of the verifier scores all drafted tokens at once. The row keeps the
longest drafted prefix the verifier agrees with plus one token of the verifier's own, so the output is the
verifier's: its greedy output at temperature 0, and a sample of its distribution at temperature > 0 (the standard
speculative-sampling rule). The verifier is an AR model (the teacher the student was distilled from) or, with
`verifier=None`, the drafter's own weights at block size 1 (self-speculation: one model in memory).

Rows advance by different amounts each round. Rather than cropping caches row by row, rejected tokens stay in the
verifier's cache as keys nobody may attend (`key_valid` False), and the drafter's cache only ever holds finished
blocks (a row that finished none this round writes an unattended placeholder block).

With `fuse_next_draft=True` (self-speculation, greedy) a verification whose drafts complete every row's block also
runs the next block's first denoising step in the same forward: the drafted block is written under the block rule and
the next block's masked queries see it, so where every draft is accepted (the only case in which that step is kept)
the step saw exactly the tokens the row keeps. Otherwise the step is discarded; the output is the verifier's either
way. One cache then holds both views (causal keys of kept tokens, block-rule keys of finished blocks), each query
attending only its own view's keys.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field

import torch
from transformers import DynamicCache

from ..modeling.conversion import ensure_custom_mask_support, get_block_diffusion_settings
from ..modeling.forward import decoder_hidden_states, log_probs_without_mask
from ..modeling.masks import block_attention_mask, position_ids_from_mask, prompt_block_ids
from .block_diffusion import FALLBACKS, min_commits_per_row, select_commits
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
from .output import GenerationOutput


@dataclass
class SpeculativeOutput(GenerationOutput):
    """`GenerationOutput` plus the cost split and acceptance statistics of speculative decoding.

    `num_forward_passes` is `drafter_passes + verifier_passes` (prefills apart); `steps_per_row` counts, per row, the
    drafter and verifier calls it took part in; `commit_step` holds, per token, the verification round that
    produced it.

    Attributes:
        drafter_passes: drafter calls after its prompt prefill.
        verifier_passes: verifier calls after its prompt prefill (one per round).
        accepted_per_round: per row, how many drafted tokens each verification kept (the verifier's own token
            comes on top).
        fused_passes: verifier calls that also ran the next block's first denoising step (`fuse_next_draft`).
        fused_kept: row-rounds whose fused step was kept (every draft of the block accepted).
    """

    drafter_passes: int = 0
    verifier_passes: int = 0
    accepted_per_round: list[list[int]] = field(default_factory=list)
    fused_passes: int = 0
    fused_kept: int = 0

    @property
    def mean_accepted_tokens(self) -> float:
        """Mean drafted tokens kept per verification, over every round of every row."""
        rounds = [a for row in self.accepted_per_round for a in row]
        return sum(rounds) / len(rounds) if rounds else float("nan")

    @property
    def tokens_per_verification(self) -> float:
        """Mean tokens a verification produced (kept drafts plus the verifier's own token), over every row's rounds;
        a row's last round can produce fewer when it stops at EOS or `max_new_tokens`."""
        rounds = sum(len(row) for row in self.accepted_per_round)
        return self.num_generated_tokens / rounds if rounds else float("nan")


def prefix_commits(confidence: torch.Tensor, todo: torch.Tensor, threshold: float, min_commits: torch.Tensor):
    """Left-to-right commits for sampled drafts: the leftmost `min_commits` positions still to draft, then every
    following one while its confidence stays >= `threshold`. Committing in prompt order makes each drafted token's
    commit-time distribution its conditional given the tokens before it, which the acceptance rule divides by;
    `confidence` must not depend on the sampled token (use the distribution's largest probability)."""
    first = todo & (todo.long().cumsum(-1) <= min_commits[:, None])
    passes = ~todo | first | (confidence >= threshold)
    return todo & passes.long().cumprod(-1).bool()


def accepted_lengths(agree: torch.Tensor, drafted: torch.Tensor) -> torch.Tensor:
    """How many leading drafted tokens each row keeps: the length of the run of `agree` from the first draft, within
    the row's `drafted` count. `agree` is `(B, W)`; `drafted` `(B,)`."""
    inside = torch.arange(agree.shape[1], device=agree.device) < drafted[:, None]
    return (agree & inside).long().cumprod(-1).sum(-1)


def residual_sample(p_log: torch.Tensor, q_log: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """A token from `normalise(max(p - q, 0))`, the speculative-sampling correction after a rejected draft
    (rows of `(N, V)` log-probs). Where p <= q everywhere (numerically) it falls back to p."""
    residual = (p_log.double().exp() - q_log.double().exp()).clamp_min(0)
    empty = residual.sum(-1, keepdim=True) <= 0
    residual = torch.where(empty, p_log.double().exp(), residual)
    return sample_tokens(residual.log(), 1.0, generator)


class SpeculativeSampler:
    """Decode with a block-diffusion drafter and an AR verifier; the output is the verifier's.

    Args:
        drafter: a converted (block-diffusion) model.
        tokenizer: the tokenizer both models share.
        verifier: an AR causal LM over the same vocabulary (e.g. the teacher), or None for the drafter's own
            weights at block size 1.
        block_size: draft block size; None uses the drafter's.
        threshold, fallback, max_steps_per_block: the block decoder's commit rule for greedy drafts (see
            `BlockDiffusionSampler`). Sampled drafts (temperature > 0) always commit left to right
            (`prefix_commits`), so the acceptance rule stays exact.
        eos_token_id: end-of-sequence id(s); default the tokenizer's.
        fuse_next_draft: self-speculation only, greedy only: a verification that can complete every row's block
            also runs the next block's first denoising step in the same forward (kept where every draft is
            accepted). Saves drafter calls at the cost of a wider verification; pays at batch 1 (module docstring).
    """

    def __init__(
        self,
        drafter,
        tokenizer,
        verifier=None,
        block_size: int | None = None,
        threshold: float = 0.9,
        fallback: str = "confidence",
        max_steps_per_block: int | None = None,
        eos_token_id: int | list[int] | None = None,
        fuse_next_draft: bool = False,
    ):
        settings, block_size = block_settings_of(drafter, block_size, "drafter")
        if fallback not in FALLBACKS:
            raise ValueError(f"fallback must be one of {FALLBACKS}, got {fallback!r}")
        self.verifier = drafter if verifier is None else verifier
        for model in {id(drafter): drafter, id(self.verifier): self.verifier}.values():
            ensure_custom_mask_support(model)
        drafter_vocab = drafter.get_output_embeddings().weight.shape[0]
        verifier_vocab = self.verifier.get_output_embeddings().weight.shape[0]
        if verifier_vocab > drafter_vocab:
            raise ValueError(
                f"the verifier's vocabulary ({verifier_vocab}) is larger than the drafter's ({drafter_vocab}); "
                "both must use the same tokenizer"
            )
        self.drafter = drafter
        self.tokenizer = tokenizer
        self.block_size = block_size
        self.mask_token_id = settings.mask_token_id
        verifier_settings = get_block_diffusion_settings(self.verifier)
        self.verifier_mask_id = verifier_settings.mask_token_id if verifier_settings else None
        self.threshold = check_threshold(threshold)
        self.fallback = fallback
        self.max_steps_per_block = check_steps_per_block(max_steps_per_block)
        self.eos = eos_ids(tokenizer, eos_token_id)
        warn_without_eos(self.eos)
        if fuse_next_draft and verifier is not None and verifier is not drafter:
            raise ValueError(
                "fuse_next_draft shares one forward between verifying and drafting, so it needs verifier=None "
                "(self-speculation); a separate verifier has other weights"
            )
        self.fuse_next_draft = bool(fuse_next_draft)

    @property
    def self_speculative(self) -> bool:
        return self.verifier is self.drafter

    @torch.no_grad()
    def generate(
        self,
        prompts,
        max_new_tokens: int = 128,
        temperature: float = 0.0,
        generator: torch.Generator | None = None,
    ) -> SpeculativeOutput:
        """Decode up to `max_new_tokens` per prompt (rows stop at EOS). Greedy when `temperature` <= 0."""
        check_max_new_tokens(max_new_tokens)
        start = time.perf_counter()
        device = next(self.drafter.parameters()).device
        prompt_ids, prompt_mask = encode_prompts(self.tokenizer, prompts, device)
        for model in (self.drafter, self.verifier):
            check_prompt_ids(model, prompt_ids, prompt_mask, max_new_tokens + self.block_size)
        rows = _Rows.start(self, prompt_ids, prompt_mask, max_new_tokens, temperature, generator)
        while rows.count:
            drafts = self._draft(rows, temperature, generator)
            kept, new_tokens, new_logprobs, next_draft = self._verify(rows, drafts, temperature, generator)
            rows.advance(kept, new_tokens, new_logprobs, next_draft)
        return rows.output(self.tokenizer, time.perf_counter() - start)

    # -- 1. draft: denoise the rest of each row's block ------------------------------------------------------------
    def _draft(self, rows: _Rows, temperature: float, generator) -> _Drafts:
        """Denoise every row's current block from its first undecided position to the block end (or the row's
        `max_new_tokens`), committing by the block decoder's rule, until nothing is left to draft. Returns the
        drafted tokens, how many each row drafted and (when sampling) their commit-time distributions."""
        size = self.block_size
        block = rows.block.clone()
        offsets = torch.arange(size, device=block.device)
        todo = (offsets >= rows.fixed[:, None]) & (offsets < (rows.fixed + rows.budget)[:, None])
        drafted = rows.predrafted & todo  # committed by a fused verification's denoising step
        todo &= ~drafted
        todo &= ~self._after_drafted_eos(block, drafted)
        q_log = None
        step = 0
        while todo.any():
            took_part = todo.any(-1)
            log_probs = self._drafter_log_probs(rows, block, temperature)
            if temperature > 0 and q_log is None:
                q_log = torch.zeros_like(log_probs)
            chosen = sample_tokens(log_probs, temperature, generator)
            chosen_prob = log_probs.gather(-1, chosen[..., None]).squeeze(-1).exp()
            min_commits = min_commits_per_row(todo, self.max_steps_per_block, step)
            if temperature > 0:
                commit = prefix_commits(log_probs.max(-1).values.exp(), todo, self.threshold, min_commits)
                q_log = torch.where(commit[..., None], log_probs, q_log)
            else:
                commit = select_commits(chosen_prob, todo, self.threshold, min_commits, self.fallback)
            block = torch.where(commit, chosen, block)
            drafted |= commit
            todo &= ~commit
            todo &= ~self._after_drafted_eos(block, drafted)
            rows.drafter_steps(took_part)
            step += 1
        # the draft is the contiguous run after the fixed prefix; drafts behind a drafted EOS are dropped
        run = offsets >= rows.fixed[:, None]
        contiguous = (~run | drafted).long().cumprod(-1).bool() & run
        contiguous &= ~self._after_drafted_eos(block, contiguous)
        return _Drafts(block=block, count=contiguous.sum(-1), q_log=q_log)

    def _after_drafted_eos(self, block: torch.Tensor, drafted: torch.Tensor) -> torch.Tensor:
        """Positions after a drafted end-of-sequence token: nothing there can be kept."""
        if not self.eos:
            return torch.zeros_like(drafted)
        eos_drafted = drafted & torch.isin(block, torch.tensor(self.eos, device=block.device))
        return (eos_drafted.long().cumsum(-1) - eos_drafted.long()) > 0

    def _drafter_log_probs(self, rows: _Rows, block: torch.Tensor, temperature: float) -> torch.Tensor:
        """One drafter call on the noisy block (after the pending clean block of rows that finished one): the
        log-probs `(B, S, V)` of every block position (position 0 from the last clean token; the AR shift)."""
        size = self.block_size
        device = block.device
        offsets = torch.arange(size, device=device)
        noisy_positions = rows.block_start[:, None] + offsets
        parts_ids, parts_pos, parts_blk, parts_noisy, parts_valid = [], [], [], [], []
        writes = rows.pending_valid.any()
        if writes:
            parts_ids.append(rows.pending)
            parts_pos.append(noisy_positions - size)
            parts_blk.append(torch.ones_like(rows.pending))
            parts_noisy.append(torch.zeros_like(rows.pending, dtype=torch.bool))
            parts_valid.append(rows.pending_valid[:, None].expand(-1, size))
        ones = torch.ones_like(block, dtype=torch.bool)
        parts_ids.append(block)
        parts_pos.append(noisy_positions)
        parts_blk.append(torch.full_like(block, 2))
        parts_noisy.append(ones)
        parts_valid.append(ones)
        ids, positions = torch.cat(parts_ids, 1), torch.cat(parts_pos, 1)
        blocks, noisy, valid = torch.cat(parts_blk, 1), torch.cat(parts_noisy, 1), torch.cat(parts_valid, 1)
        among = block_attention_mask(blocks, noisy, blocks, noisy, valid)
        cached = rows.drafter_key_valid[:, None, None, :].expand(-1, 1, ids.shape[1], -1)
        hidden = decoder_hidden_states(
            self.drafter, ids, positions, torch.cat([cached, among], -1), rows.drafter_cache
        )
        rows.drafter_cache.crop(-size)  # the noisy block's KV is never kept
        if writes:
            rows.keys_written(drafter=parts_valid[0])
            first = self._log_probs(self.drafter, self.mask_token_id, hidden[:, size - 1], temperature)
            rows.first_log_probs = torch.where(rows.pending_valid[:, None], first, rows.first_log_probs)
            rows.pending_valid = torch.zeros_like(rows.pending_valid)
            hidden = hidden[:, size:]
        later = self._log_probs(self.drafter, self.mask_token_id, hidden[:, : size - 1], temperature)
        return torch.cat([rows.first_log_probs[:, None], later], 1)

    # -- 2. verify: one causal forward over [last kept token, drafts] ----------------------------------------------
    def _verify(self, rows: _Rows, drafts: _Drafts, temperature: float, generator):
        """Score the drafts with the verifier and apply the acceptance rule. Returns per row the number of drafts
        kept, the new tokens (kept drafts, then the verifier's own token) with their verifier log-probs, and the
        next block's fused denoising step (`_NextDraft`, or None when this verification ran none)."""
        batch, device, size = rows.count, drafts.block.device, self.block_size
        width = 1 + int(drafts.count.max())
        columns = torch.arange(width, device=device)
        gather_at = (rows.fixed[:, None] + columns[None, :-1]).clamp(max=size - 1)
        draft_ids = drafts.block.gather(1, gather_at)  # (B, width - 1)
        ids = torch.cat([rows.last_token[:, None], draft_ids], 1)
        valid = columns < (1 + drafts.count)[:, None]
        positions = rows.last_position[:, None] + columns
        causal = torch.ones(width, width, dtype=torch.bool, device=device).tril()
        among = (causal[None] & valid[:, None, :])[:, None]  # padding queries still see the cached prompt
        cached = rows.verifier_key_valid[:, None, None, :].expand(-1, 1, width, -1)
        allowed = torch.cat([cached, among], -1)
        fuse = self._fused_rows(rows, drafts, temperature)
        if fuse is not None:
            ids, positions, allowed = self._with_next_block(rows, drafts, ids, positions, allowed)
        hidden = decoder_hidden_states(self.verifier, ids, positions, allowed, rows.verifier_cache)
        rows.verifier_passes += 1
        rows.verifier_steps()
        p_log = self._log_probs(self.verifier, self.verifier_mask_id, hidden[:, :width], temperature)
        p_log = self._pad_vocab(p_log)  # (B, width, V)
        draft_p = p_log[:, :-1].gather(-1, draft_ids[..., None]).squeeze(-1)
        if temperature > 0 and drafts.q_log is None:  # nothing drafted (block size 1): the verifier samples alone
            agree = torch.zeros_like(draft_ids, dtype=torch.bool)
        elif temperature > 0:
            q_at = drafts.q_log.gather(1, gather_at[..., None].expand(-1, -1, drafts.q_log.shape[-1]))
            draft_q = q_at.gather(-1, draft_ids[..., None]).squeeze(-1)
            uniform = torch.rand(draft_p.shape, dtype=torch.float64, generator=generator, device=device)
            agree = uniform < (draft_p.double() - draft_q.double()).exp()
        else:
            agree = draft_ids == p_log[:, :-1].argmax(-1)
        kept = accepted_lengths(agree, drafts.count)
        at_next = p_log[torch.arange(batch, device=device), kept]
        if temperature > 0:
            rejected = kept < drafts.count
            own = sample_tokens(at_next, 1.0, generator)
            if rejected.any():
                q_next = q_at[torch.arange(batch, device=device), kept.clamp(max=width - 2)]
                own = torch.where(rejected, residual_sample(at_next, q_next, generator), own)
        else:
            own = at_next.argmax(-1)
        new_tokens = torch.cat([draft_ids, own[:, None]], 1).scatter(1, kept[:, None], own[:, None])
        new_logprobs = torch.cat([draft_p, at_next.gather(-1, own[:, None])], 1).scatter(
            1, kept[:, None], at_next.gather(-1, own[:, None])
        )
        verified = columns[None, :] <= kept[:, None]
        if fuse is None:
            rows.keys_written(verifier=verified)
            return kept, new_tokens, new_logprobs, None
        # -- 2b. the fused step: kept only where the whole drafted block was accepted --------------------------
        rows.verifier_cache.crop(-size)  # the next block's noisy KV is never kept
        kept_block = fuse & (kept == drafts.count)
        no_keys = torch.zeros(batch, size, dtype=torch.bool, device=device)
        rows.keys_written(
            verifier=torch.cat([verified, no_keys], 1),
            drafter=torch.cat([torch.zeros_like(verified), kept_block[:, None].expand(-1, size)], 1),
        )
        rows.fused_passes += 1
        # position i > 0 of the next block is read at the noisy query i - 1 (the AR shift); position 0 is `own`
        later = self._log_probs(self.drafter, self.mask_token_id, hidden[:, width + size : -1], temperature)
        return kept, new_tokens, new_logprobs, _NextDraft(kept_block=kept_block, log_probs=later)

    def _fused_rows(self, rows: _Rows, drafts: _Drafts, temperature: float) -> torch.Tensor | None:
        """Rows whose verification runs the next block's first denoising step: drafts that reach the block end
        without an end-of-sequence token, with room left for another block. A drafter call is batch-wide, so the
        step can only save one when every row has it: None unless every row qualifies (and None when fusion is off,
        sampling, or the block is one token). Measured at batch 16, fusing the rows that qualify cost 25% of
        the throughput (a verification three times wider for every row) and saved no call."""
        if not self.fuse_next_draft or temperature > 0 or self.block_size == 1:
            return None
        size = self.block_size
        fills = rows.fixed + drafts.count == size
        room = rows.produced + drafts.count + 1 < rows.max_new_tokens
        if self.eos:
            # a draft stops at its first EOS, so one that fills the block can only hold an EOS in the last position
            fills &= ~torch.isin(drafts.block[:, -1], torch.tensor(self.eos, device=drafts.block.device))
        fuse = fills & room
        return fuse if fuse.all() else None

    def _with_next_block(self, rows: _Rows, drafts: _Drafts, ids, positions, allowed):
        """Append to the verification's queries the drafted block (clean, under the block rule) and the next block
        (every position masked). Those queries attend the drafter's view of the shared cache, the clean block
        bidirectionally and, for the noisy block, itself; the verification's queries attend neither."""
        size, device = self.block_size, ids.device
        batch, width = ids.shape
        offsets = torch.arange(size, device=device)
        clean = drafts.block
        noisy = torch.full_like(clean, self.mask_token_id)
        ids = torch.cat([ids, clean, noisy], 1)
        positions = torch.cat(
            [positions, rows.block_start[:, None] + offsets, rows.block_start[:, None] + size + offsets], 1
        )
        blocks = torch.cat([torch.ones_like(clean), torch.full_like(noisy, 2)], 1)
        is_noisy = torch.cat([torch.zeros_like(clean, dtype=torch.bool), torch.ones_like(noisy, dtype=torch.bool)], 1)
        among = block_attention_mask(blocks, is_noisy, blocks, is_noisy, torch.ones_like(is_noisy))
        cached = rows.drafter_key_valid[:, None, None, :].expand(-1, 1, 2 * size, -1)
        unseen = torch.zeros(batch, 1, 2 * size, width, dtype=torch.bool, device=device)
        draft_rows = torch.cat([cached, unseen, among], -1)
        verify_rows = torch.cat([allowed, torch.zeros(batch, 1, width, 2 * size, dtype=torch.bool, device=device)], -1)
        return ids, positions, torch.cat([verify_rows, draft_rows], 2)

    def _log_probs(self, model, mask_token_id, hidden: torch.Tensor, temperature: float) -> torch.Tensor:
        logits = model.get_output_embeddings()(hidden)
        return log_probs_without_mask(logits, mask_token_id, temperature)

    def _pad_vocab(self, log_probs: torch.Tensor) -> torch.Tensor:
        """Verifier log-probs over the drafter's vocabulary (rows it lacks get probability 0)."""
        extra = self.drafter.get_output_embeddings().weight.shape[0] - log_probs.shape[-1]
        if extra <= 0:
            return log_probs
        return torch.nn.functional.pad(log_probs, (0, extra), value=float("-inf"))


@dataclass
class _NextDraft:
    kept_block: torch.Tensor  # (B,) rows whose fused step is kept (their whole drafted block was accepted)
    log_probs: torch.Tensor  # (B, S - 1, V) the drafter's log-probs for next-block positions 1..S-1


@dataclass
class _Drafts:
    block: torch.Tensor  # (B, S) the block with the drafted tokens in place
    count: torch.Tensor  # (B,) drafted tokens after the fixed prefix, in order
    q_log: torch.Tensor | None  # (B, S, V) the drafter's commit-time log-probs (sampling only)


class _Rows:
    """The rows still decoding: both caches and which of their keys may be attended, the current block (its first
    `fixed` tokens are final), the clean block waiting to be written to the drafter's cache, the verifier's last kept
    token (not yet in its cache) and, per original row, the tokens produced so far."""

    @classmethod
    def start(cls, sampler: SpeculativeSampler, prompt_ids, prompt_mask, max_new_tokens, temperature, generator):
        """Prefill both models with the prompt; the verifier's first token opens the first block."""
        self = cls()
        self.sampler, self.max_new_tokens = sampler, max_new_tokens
        batch, device, size = len(prompt_ids), prompt_ids.device, sampler.block_size
        valid = prompt_mask.bool()
        positions = position_ids_from_mask(prompt_mask)
        blocks, clean = prompt_block_ids(prompt_mask), torch.zeros_like(valid)
        allowed = block_attention_mask(blocks, clean, blocks, clean, valid)
        self.drafter_cache = DynamicCache(config=sampler.drafter.config)
        hidden = decoder_hidden_states(sampler.drafter, prompt_ids, positions, allowed, self.drafter_cache)
        self.shared_cache = sampler.self_speculative and sampler.fuse_next_draft
        if self.shared_cache:
            self.verifier_cache = self.drafter_cache  # one cache, two views (`keys_written`)
        elif sampler.self_speculative:
            # the prompt is causal under the block rule too, so one prefill serves both caches
            self.verifier_cache = copy.deepcopy(self.drafter_cache)
        else:
            self.verifier_cache = DynamicCache(config=sampler.verifier.config)
            hidden = decoder_hidden_states(sampler.verifier, prompt_ids, positions, allowed, self.verifier_cache)
        first = sampler._pad_vocab(
            sampler._log_probs(sampler.verifier, sampler.verifier_mask_id, hidden[:, -1], temperature)
        )
        first_token = sample_tokens(first, temperature, generator)
        self.drafter_key_valid = self.verifier_key_valid = valid
        lengths = valid.sum(-1)
        self.rows = torch.arange(batch, device=device)
        self.block = torch.full((batch, size), sampler.mask_token_id, dtype=torch.long, device=device)
        self.fixed = torch.zeros(batch, dtype=torch.long, device=device)
        self.block_start = lengths.clone()
        self.pending = torch.zeros_like(self.block)
        self.pending_valid = torch.zeros(batch, dtype=torch.bool, device=device)
        self.predrafted = torch.zeros_like(self.block, dtype=torch.bool)
        self.first_log_probs = torch.zeros_like(first)  # only read for a block whose token 0 is undecided
        self.last_position = lengths - 1  # the verifier's own token is placed like a round's: after 0 kept drafts
        self.produced = torch.zeros(batch, dtype=torch.long, device=device)
        self.tokens = [[] for _ in range(batch)]
        self.logprobs = [[] for _ in range(batch)]
        self.rounds = [[] for _ in range(batch)]
        self.accepted = [[] for _ in range(batch)]
        self.steps = [0] * batch
        self.drafter_passes = self.verifier_passes = self.fused_passes = self.fused_kept = 0
        first_logprob = first.gather(-1, first_token[:, None])
        self._keep(torch.zeros_like(self.fixed), first_token[:, None], first_logprob, counts_as_round=False)
        return self

    @property
    def count(self) -> int:
        return len(self.rows)

    @property
    def budget(self) -> torch.Tensor:
        """How many tokens each row may still draft in its block (up to `max_new_tokens` in all). A block of one
        token is the AR model itself, so at block size 1 nothing is drafted and the verifier decodes alone."""
        size = self.sampler.block_size
        if size == 1:
            return torch.zeros_like(self.fixed)
        return torch.minimum(size - self.fixed, self.max_new_tokens - self.produced)

    def keys_written(self, drafter: torch.Tensor | None = None, verifier: torch.Tensor | None = None) -> None:
        """Record which of the keys just appended to a cache each view may attend (`(B, n)` masks). With one
        shared cache both views grow together; a view given no mask gets the other's width of unattended keys."""
        if self.shared_cache:
            width = (drafter if drafter is not None else verifier).shape[1]
            none = torch.zeros(self.count, width, dtype=torch.bool, device=self.rows.device)
            drafter = none if drafter is None else drafter
            verifier = none if verifier is None else verifier
        if drafter is not None:
            self.drafter_key_valid = torch.cat([self.drafter_key_valid, drafter], 1)
        if verifier is not None:
            self.verifier_key_valid = torch.cat([self.verifier_key_valid, verifier], 1)

    def drafter_steps(self, took_part: torch.Tensor) -> None:
        self.drafter_passes += 1
        for entry in torch.nonzero(took_part).flatten().tolist():
            self.steps[int(self.rows[entry])] += 1

    def verifier_steps(self) -> None:
        for row in self.rows.tolist():
            self.steps[row] += 1

    # -- 3. advance: keep the accepted tokens, roll full blocks over, retire finished rows --------------------------
    def advance(self, kept, new_tokens, new_logprobs, next_draft: _NextDraft | None = None) -> None:
        self._keep(kept, new_tokens, new_logprobs, counts_as_round=True, next_draft=next_draft)

    def _keep(self, kept, new_tokens, new_logprobs, counts_as_round: bool, next_draft=None) -> None:
        """Append each row's `kept` drafts and the verifier's own token (`new_tokens[:, :kept + 1]`), place them in
        the block (the own token opens the next block when the drafts filled this one; later positions are masked
        again), queue full blocks for the drafter's cache and retire rows that are done."""
        size, mask_id = self.sampler.block_size, self.sampler.mask_token_id
        for entry, row in enumerate(self.rows.tolist()):
            n = int(kept[entry]) + 1
            self.tokens[row].extend(new_tokens[entry, :n].tolist())
            self.logprobs[row].extend(new_logprobs[entry, :n].tolist())
            self.rounds[row].extend([self.verifier_passes] * n)
            if counts_as_round:
                self.accepted[row].append(n - 1)
        offsets = torch.arange(size, device=self.block.device)
        own = new_tokens.gather(1, kept[:, None]).squeeze(1)
        spot = self.fixed + kept
        block = torch.where(offsets < spot[:, None], self._drafted_block(kept, new_tokens), mask_id)
        block = torch.where(offsets == spot[:, None], own[:, None], block)
        self.last_token, self.last_position = own, self.last_position + kept + 1
        self.produced = self.produced + kept + 1
        fixed = spot + 1
        full = fixed >= size
        if full.any():
            self.pending = torch.where(full[:, None], block, self.pending)
            self.pending_valid = full
            overflow = fixed > size
            opened = torch.full_like(block, mask_id)
            opened[:, 0] = torch.where(overflow, own, mask_id)
            block = torch.where(full[:, None], opened, block)
            fixed = torch.where(full, overflow.long(), fixed)
            self.block_start = self.block_start + full.long() * size
        self.block, self.fixed = block, fixed
        self.predrafted = torch.zeros_like(self.predrafted)
        if next_draft is not None and next_draft.kept_block.any():
            self._predraft(next_draft)
        self._retire(self._finished(kept, new_tokens))

    def _predraft(self, next_draft: _NextDraft) -> None:
        """Rows whose fused step is kept: their finished block is already in the cache (no pending write) and the
        next block, opened by the verifier's token, takes that step's commits: every later position whose
        confidence reaches the threshold (the verifier's token is the step's one forced commit)."""
        sampler, kept_block = self.sampler, next_draft.kept_block
        self.fused_kept += int(kept_block.sum())
        self.pending_valid = self.pending_valid & ~kept_block
        log_probs = next_draft.log_probs  # positions 1..S-1
        chosen = log_probs.argmax(-1)
        confident = log_probs.gather(-1, chosen[..., None]).squeeze(-1).exp() >= sampler.threshold
        offsets = torch.arange(1, sampler.block_size, device=chosen.device)
        in_budget = offsets[None, :] < (1 + self.max_new_tokens - self.produced)[:, None]
        commit = torch.zeros_like(self.predrafted)
        commit[:, 1:] = confident & in_budget & kept_block[:, None]
        self.block[:, 1:] = torch.where(commit[:, 1:], chosen, self.block[:, 1:])
        self.predrafted = commit

    def _drafted_block(self, kept, new_tokens) -> torch.Tensor:
        """The block with the kept drafts written after the fixed prefix (they are `new_tokens[:, :kept]`)."""
        size = self.sampler.block_size
        offsets = torch.arange(size, device=self.block.device)
        index = (offsets[None, :] - self.fixed[:, None]).clamp(0, new_tokens.shape[1] - 1)
        from_new = new_tokens.gather(1, index)
        return torch.where(offsets[None, :] < self.fixed[:, None], self.block, from_new)

    def _finished(self, kept: torch.Tensor, new_tokens: torch.Tensor) -> torch.Tensor:
        """Rows at `max_new_tokens`, or whose tokens kept this round hold an EOS (earlier rounds' EOS rows are
        already retired)."""
        done = self.produced >= self.max_new_tokens
        if self.sampler.eos:
            kept_now = torch.arange(new_tokens.shape[1], device=new_tokens.device) <= kept[:, None]
            eos = torch.tensor(self.sampler.eos, device=new_tokens.device)
            done = done | (torch.isin(new_tokens, eos) & kept_now).any(-1)
        return done

    def _retire(self, done: torch.Tensor) -> None:
        if not done.any():
            return
        keep = torch.nonzero(~done).flatten()
        for cache in {id(c): c for c in (self.drafter_cache, self.verifier_cache)}.values():
            cache.batch_select_indices(keep)
        for name in (
            "rows", "block", "fixed", "block_start", "pending", "pending_valid", "predrafted", "first_log_probs",
            "last_token", "last_position", "produced", "drafter_key_valid", "verifier_key_valid",
        ):  # fmt: skip
            setattr(self, name, getattr(self, name)[keep])

    def output(self, tokenizer, elapsed: float) -> SpeculativeOutput:
        limit, eos = self.max_new_tokens, self.sampler.eos
        lengths = [cut_at_eos(row, eos, limit) for row in self.tokens]
        completion_ids = [row[:n] for row, n in zip(self.tokens, lengths)]
        return SpeculativeOutput(
            texts=tokenizer.batch_decode(completion_ids, skip_special_tokens=True),
            completion_ids=completion_ids,
            commit_step=[row[:n] for row, n in zip(self.rounds, lengths)],
            logprobs=[row[:n] for row, n in zip(self.logprobs, lengths)],
            num_forward_passes=self.drafter_passes + self.verifier_passes,
            num_prefill_passes=1 if self.sampler.self_speculative else 2,
            steps_per_row=self.steps,
            elapsed_s=elapsed,
            drafter_passes=self.drafter_passes,
            verifier_passes=self.verifier_passes,
            accepted_per_round=self.accepted,
            fused_passes=self.fused_passes,
            fused_kept=self.fused_kept,
        )
