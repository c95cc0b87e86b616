"""The state of `SpeculativeSampler`'s rows between rounds: both KV caches and which keys each may attend, the
current block, the tokens produced so far, and the round's bookkeeping (step 3 of the sampler: advance)."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from transformers import DynamicCache

from ..modeling.forward import decoder_hidden_states
from ..modeling.masks import block_attention_mask, position_ids_from_mask, prompt_block_ids
from .common import cut_at_eos, sample_tokens
from .output import SpeculativeOutput


if TYPE_CHECKING:
    from .speculative import SpeculativeSampler


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
        if self.shared_cache or sampler.draft_context == "causal":
            # fused: one cache, two views (`keys_written`); causal drafts: the drafter only reads the verifier's
            self.verifier_cache = self.drafter_cache
        elif sampler.self_speculative:
            # the prompt is causal under the block rule too, so one prefill serves both caches
            self.verifier_cache = copy.deepcopy(self.drafter_cache)
        else:
            self.verifier_cache = DynamicCache(config=sampler.verifier.config)
            hidden = decoder_hidden_states(sampler.verifier, prompt_ids, positions, allowed, self.verifier_cache)
        first = sampler._pad_vocab(
            sampler._log_probs(sampler.verifier, sampler.verifier_mask_id, hidden[:, -1], temperature)
        )
        if sampler.constraint is not None:  # nothing written yet: the constraint applies if its span is the whole text
            nothing = torch.zeros(batch, 0, dtype=torch.long, device=device)
            first = sampler.constraint.next_token(first, nothing, torch.zeros(batch, dtype=torch.long, device=device))
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

    def written_ids(self, extra: int = 0) -> torch.Tensor:
        """The active rows' tokens so far `(B, max produced + extra)`, left-aligned (zeros after a row's end)."""
        width = int(self.produced.max()) + extra if self.count else extra
        out = torch.zeros(self.count, width, dtype=torch.long, device=self.rows.device)
        for entry, row in enumerate(self.rows.tolist()):
            out[entry, : len(self.tokens[row])] = torch.tensor(self.tokens[row], dtype=torch.long)
        return out

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
