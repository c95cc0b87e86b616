"""Decoding constraints: the tokens a sampler may not choose at a position, given what a row has written so far.

`UniqueTokens` makes a ranking's candidate ids distinct: after the answer's start marker, each id token appears at
most once. Without it a re-ranker that reorders a list by hand ("the promoted ids, then the rest in the given
order") sometimes writes a promoted id twice, and the whole answer is invalid; in the block decoder two positions of
one step can also choose the same id without seeing each other. The constraint changes the sampled distribution
(the banned tokens' mass is renormalised away), so it is for inference and evaluation, not for the rollouts whose
log-probs training replays.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..data.prompts import RANKING_ANSWER_PREFIX


@dataclass(frozen=True)
class UniqueTokens:
    """After the first occurrence of `start_ids` in a completion, each token of `token_ids` may appear at most once.

    Args:
        token_ids (`Sequence[int]`):
            The tokens that must not repeat, e.g. the candidate ids of a ranking (each a single token).
        start_ids (`Sequence[int]`, *optional*, defaults to `()`):
            The token sequence that opens the constrained span (e.g. the tokens of `{"ranking":["`); empty: the span
            is the whole completion. Tokens before the span (a reasoning trace that names every candidate) are free.
    """

    token_ids: tuple[int, ...]
    start_ids: tuple[int, ...] = ()

    def __post_init__(self):
        object.__setattr__(self, "token_ids", tuple(int(t) for t in self.token_ids))
        object.__setattr__(self, "start_ids", tuple(int(t) for t in self.start_ids))
        if not self.token_ids:
            raise ValueError("UniqueTokens needs at least one token id")
        if len(set(self.token_ids)) != len(self.token_ids):
            raise ValueError(f"UniqueTokens token_ids repeat an id: {self.token_ids}")

    @classmethod
    def from_texts(cls, tokenizer, texts: Sequence[str], start_text: str = "") -> UniqueTokens:
        """The constraint for id strings (e.g. `["[1]", ..., "[10]"]`) as `tokenizer` encodes them; every id must
        be one token (a multi-token id would need a constraint on sequences)."""
        token_ids = []
        for text in texts:
            ids = tokenizer.encode(text, add_special_tokens=False)
            if len(ids) != 1:
                raise ValueError(
                    f"UniqueTokens needs every id to be one token; {text!r} encodes to {len(ids)} tokens {ids}"
                )
            token_ids.append(ids[0])
        start_ids = tokenizer.encode(start_text, add_special_tokens=False) if start_text else []
        return cls(tuple(token_ids), tuple(start_ids))

    @classmethod
    def for_ranking(cls, tokenizer, candidate_ids: Sequence[str], answer_example: str) -> UniqueTokens:
        """Distinct candidate ids in a ranking answer: `candidate_ids` (every id of the task, each one token) may
        appear once after the answer's opening tokens, read off `answer_example` (an answer as the model is trained
        to write it, e.g. a training completion: its tokens from `{"ranking"` up to the first id). The reasoning
        before the answer may name the ids freely."""
        at = answer_example.rfind(RANKING_ANSWER_PREFIX)
        if at < 0:
            raise ValueError(f"answer_example holds no {RANKING_ANSWER_PREFIX!r}: {answer_example[-80:]!r}")
        ids = cls.from_texts(tokenizer, sorted(set(candidate_ids)))
        answer = tokenizer.encode(answer_example[at:], add_special_tokens=False)
        first_id = next((i for i, t in enumerate(answer) if t in ids.token_ids), None)
        if not first_id:
            raise ValueError(f"answer_example's answer holds none of the candidate ids: {answer_example[at:]!r}")
        return cls(ids.token_ids, tuple(answer[:first_id]))

    def span_state(self, tokens: torch.Tensor, known: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Where the constraint applies and what it bans, for completions `tokens` `(B, L)` of which `known`
        `(B, L)` are written (the others are still masked). Returns `in_span` `(B, L)`: positions after a fully
        written start marker (the first one), and `used` `(B, K)`: which of `token_ids` are written inside the
        span (what a position in the span may no longer choose)."""
        batch, length = tokens.shape
        device = tokens.device
        span_start = torch.zeros(batch, dtype=torch.long, device=device)  # first position of the span
        if self.start_ids and length < len(self.start_ids):
            span_start.fill_(length)
        elif self.start_ids:
            width = len(self.start_ids)
            marker = torch.tensor(self.start_ids, device=device)
            here = (tokens.unfold(1, width, 1) == marker).all(-1) & known.unfold(1, width, 1).all(-1)  # (B, L-w+1)
            first = here.long().argmax(-1)  # the first written marker (0 when there is none: masked below)
            span_start = torch.where(here.any(-1), first + width, length)
        in_span = torch.arange(length, device=device)[None, :] >= span_start[:, None]
        ids = torch.tensor(self.token_ids, device=device)
        written = (tokens[:, :, None] == ids) & (known & in_span)[:, :, None]  # (B, L, K)
        return in_span, written.any(1)

    def ban(self, log_probs: torch.Tensor, used: torch.Tensor) -> torch.Tensor:
        """`log_probs` `(N, V)` with the `used` `(N, K)` tokens removed. Their mass goes to the unused tokens of
        `token_ids` in proportion to theirs, so the probability of writing one of them at all is unchanged (a
        ranking's id slot stays an id slot rather than becoming `""` or a stray token); the other tokens keep
        theirs. With every one of `token_ids` used (or of zero probability), the rest is renormalised."""
        ids = torch.tensor(self.token_ids, device=log_probs.device)
        id_log_probs = log_probs[:, ids]  # (N, K)
        unused = id_log_probs.masked_fill(used, float("-inf"))
        # log of (mass of all ids) / (mass of the unused ones): what each unused id's probability is scaled by
        scale = torch.logsumexp(id_log_probs, -1, keepdim=True) - torch.logsumexp(unused, -1, keepdim=True)
        some_unused = torch.isfinite(scale)
        out = log_probs.clone()
        out[:, ids] = torch.where(some_unused, unused + scale.nan_to_num(0.0, posinf=0.0), unused)
        possible = torch.isfinite(out).any(-1, keepdim=True)
        renormalised = torch.log_softmax(out.masked_fill(~possible, 0.0), -1)
        # nothing allowed at all (only used ids had mass): keep the distribution, there is nothing else to choose
        return torch.where(some_unused, out, torch.where(possible, renormalised, log_probs))

    def drop_repeats(
        self, tokens: torch.Tensor, known: torch.Tensor, commit: torch.Tensor, confidence: torch.Tensor
    ) -> torch.Tensor:
        """Which of the positions one parallel step commits `(B, L)` to keep: a commit inside the span (as it stands
        after the step) whose constrained token the span already holds, or another commit of the step holds with
        higher confidence (the earlier position among ties), is dropped; it stays masked and chooses again, seeing
        the kept one. `tokens` hold the step's choices at the `commit` positions, `known` the positions written
        before it; `confidence` ranks the commits (a probability or a log-prob). Each row keeps at least one commit (see `BlockDiffusionSampler`)."""
        in_span, _ = self.span_state(tokens, known | commit)
        ids = torch.tensor(self.token_ids, device=tokens.device)
        holds = in_span[:, :, None] & (tokens[:, :, None] == ids)  # (B, L, K)
        old = (holds & known[:, :, None]).any(1)  # (B, K): already written in the span
        new = holds & commit[:, :, None]
        score = torch.where(new, confidence[:, :, None], torch.full_like(new, float("-inf"), dtype=confidence.dtype))
        best = score.argmax(1)  # (B, K): the most confident new position of each token (the first among ties)
        positions = torch.arange(tokens.shape[1], device=tokens.device)[None, :, None]
        repeated = new & (old[:, None, :] | (positions != best[:, None, :]))
        return commit & ~repeated.any(-1)
