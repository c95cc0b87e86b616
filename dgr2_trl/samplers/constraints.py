"""Decoding constraints: the tokens a sampler may not choose at a position, given what a row has written so far.

`UniqueTokens` makes a ranking's candidate ids distinct: after the answer's start marker, each id token appears at
most once. Without it a re-ranker that reorders a list by hand ("the promoted ids, then the rest in the given
order") sometimes writes a promoted id twice, and the whole answer is invalid; in the block decoder two positions of
one step can also choose the same id without seeing each other. With a separator token it also keeps every slot of
the list an id: an unsure re-ranker otherwise writes an empty slot (`"[4]","","[5]"`: two separators in a row).
The constraint changes the sampled distribution (the banned tokens' mass is renormalised away), so it is for
inference and evaluation, not for the rollouts whose log-probs training replays.
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
        separator_id (`int`, *optional*):
            The token between two ids (`","` in `["[2]","[4]"]`). With it, a span position right after the marker or
            a written separator, or right before a written separator or `end_id`, is an id slot: it may only hold an
            unused id (see `id_slots`). None: only the repeats are banned.
        end_id (`int`, *optional*):
            The token after the last id (`"]}`); only read with `separator_id`.
        answer_format (`bool`, *optional*, defaults to `False`):
            Also keep the answer's shape (needs `start_ids` and `separator_id`): a completion that has written the
            first tokens of the marker writes the rest of it (`{"ranking` is followed by `":["`), and inside the
            span the token after an id is a separator or the end token (two ids never share a slot). Without it a
            block decoder that commits many tokens per step at a low threshold can write `{"rankingranking[3]` (no
            span ever opens, so nothing is constrained) or `"[10][3][5]"` (three ids in one slot).
    """

    token_ids: tuple[int, ...]
    start_ids: tuple[int, ...] = ()
    separator_id: int | None = None
    end_id: int | None = None
    answer_format: bool = False

    def __post_init__(self):
        object.__setattr__(self, "token_ids", tuple(int(t) for t in self.token_ids))
        object.__setattr__(self, "start_ids", tuple(int(t) for t in self.start_ids))
        if not self.token_ids:
            raise ValueError("UniqueTokens needs at least one token id")
        if len(set(self.token_ids)) != len(self.token_ids):
            raise ValueError(f"UniqueTokens token_ids repeat an id: {self.token_ids}")
        for name in ("separator_id", "end_id"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, int(value))
            if value is not None and int(value) in self.token_ids:
                raise ValueError(f"UniqueTokens {name} {value} is one of the ids {self.token_ids}")
        if self.end_id is not None and self.separator_id is None:
            raise ValueError("UniqueTokens end_id needs a separator_id (it only marks the end of the last id slot)")
        if self.answer_format and (self.separator_id is None or not self.start_ids):
            raise ValueError("UniqueTokens answer_format needs start_ids and a separator_id (the shape it keeps)")

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
    def for_ranking(
        cls, tokenizer, candidate_ids: Sequence[str], answer_example: str, id_slots: bool = True
    ) -> UniqueTokens:
        """Distinct candidate ids in a ranking answer: `candidate_ids` (every id of the task, each one token) may
        appear once after the answer's opening tokens, read off `answer_example` (an answer as the model is trained
        to write it, e.g. a training completion: its tokens from `{"ranking"` up to the first id). The reasoning
        before the answer may name the ids freely. With `id_slots`, the separator between the example's first two
        ids and the token after its last id are read off too (when each is one token), so every slot of the list
        holds an id."""
        at = answer_example.rfind(RANKING_ANSWER_PREFIX)
        if at < 0:
            raise ValueError(f"answer_example holds no {RANKING_ANSWER_PREFIX!r}: {answer_example[-80:]!r}")
        ids = cls.from_texts(tokenizer, sorted(set(candidate_ids)))
        answer = tokenizer.encode(answer_example[at:], add_special_tokens=False)
        at_ids = [i for i, t in enumerate(answer) if t in ids.token_ids]
        if not at_ids or not at_ids[0]:
            raise ValueError(f"answer_example's answer holds none of the candidate ids: {answer_example[at:]!r}")
        separator = end = None
        if id_slots and len(at_ids) > 1 and at_ids[1] - at_ids[0] == 2:
            separator = answer[at_ids[0] + 1]
            end = answer[at_ids[-1] + 1] if at_ids[-1] + 1 < len(answer) else None
        return cls(ids.token_ids, tuple(answer[: at_ids[0]]), separator, end, answer_format=separator is not None)

    def span_state(self, tokens: torch.Tensor, known: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Where the constraint applies and what it bans, for completions `tokens` `(B, L)` of which `known`
        `(B, L)` are written (the others are still masked). Returns `in_span` `(B, L)`: positions after a fully
        written start marker (the first one; with `answer_format`, the marker's length after its first written
        first token), and `used` `(B, K)`: which of `token_ids` are written inside the
        span (what a position in the span may no longer choose)."""
        batch, length = tokens.shape
        device = tokens.device
        span_start = torch.zeros(batch, dtype=torch.long, device=device)  # first position of the span
        if self.start_ids and length < len(self.start_ids):
            span_start.fill_(length)
        elif self.start_ids:
            width = len(self.start_ids)
            if self.answer_format:
                # the marker's first token commits the row to the whole marker (`format_rule` forces the rest), so
                # the span is fixed once it is written: ids a block decoder writes right of it before the marker is
                # complete are already counted
                here = (tokens == self.start_ids[0]) & known
                here = here[:, : length - width + 1]
            else:
                marker = torch.tensor(self.start_ids, device=device)
                here = (tokens.unfold(1, width, 1) == marker).all(-1) & known.unfold(1, width, 1).all(-1)
            first = here.long().argmax(-1)  # the first written marker (0 when there is none: masked below)
            span_start = torch.where(here.any(-1), first + width, length)
        in_span = torch.arange(length, device=device)[None, :] >= span_start[:, None]
        ids = torch.tensor(self.token_ids, device=device)
        written = (tokens[:, :, None] == ids) & (known & in_span)[:, :, None]  # (B, L, K)
        return in_span, written.any(1)

    def id_slots(self, tokens: torch.Tensor, known: torch.Tensor, in_span: torch.Tensor) -> torch.Tensor:
        """Span positions `(B, L)` that may only hold an id, given what is written (`known`): the first position of
        the span, one right after a written separator, one right before a written separator or end token. All
        False without a `separator_id`."""
        if self.separator_id is None:
            return torch.zeros_like(in_span)
        closing = self._closes_slot(tokens) & known & in_span
        before_closing = torch.zeros_like(closing)
        before_closing[:, :-1] = closing[:, 1:]
        return in_span & (self._opens_slot(tokens, known, in_span) | before_closing)

    def _opens_slot(self, tokens, known, in_span) -> torch.Tensor:
        """Positions right after the marker (the span's first) or after a written separator."""
        after = torch.zeros_like(in_span)
        after[:, 1:] = (in_span & known & (tokens == self.separator_id))[:, :-1]
        first = in_span.clone()
        first[:, 1:] &= ~in_span[:, :-1]
        return first | after

    def _closes_slot(self, tokens) -> torch.Tensor:
        closing = tokens == self.separator_id
        return closing | (tokens == self.end_id) if self.end_id is not None else closing

    def format_rule(self, tokens: torch.Tensor, known: torch.Tensor, in_span: torch.Tensor):
        """With `answer_format`, what the answer's shape allows at each position `(B, L)`, given the written
        (`known`) tokens: `forced` the one token a position must hold (-1: any), the next marker token right after
        a written proper prefix of the marker (before the span opens); `closing` True where only the separator or
        the end token may stand, right after a written id inside the span. None without `answer_format`."""
        if not self.answer_format:
            return None
        batch, length = tokens.shape
        forced = torch.full_like(tokens, -1)
        written_ids = known & torch.isin(tokens, torch.tensor(self.token_ids, device=tokens.device))
        for k in range(1, len(self.start_ids)):  # the longest matching prefix wins (k ascending, overwritten)
            if length <= k:
                break
            match = torch.ones(batch, length - k, dtype=torch.bool, device=tokens.device)
            for i in range(k):
                match &= (tokens[:, i : length - k + i] == self.start_ids[i]) & known[:, i : length - k + i]
            forced[:, k:] = torch.where(match, self.start_ids[k], forced[:, k:])
        forced = forced.masked_fill(in_span, -1)
        closing = torch.zeros_like(in_span)
        closing[:, 1:] = written_ids[:, :-1] & in_span[:, :-1]
        return forced, closing & in_span

    def keep_format(self, log_probs: torch.Tensor, forced: torch.Tensor, closing: torch.Tensor) -> torch.Tensor:
        """`log_probs` `(N, V)` restricted by `format_rule`'s `forced` / `closing` `(N,)`: a forced row keeps only
        its token, a closing row only the separator and end token (renormalised; unchanged where they have no
        mass)."""
        allowed = torch.zeros_like(log_probs, dtype=torch.bool)
        rows = torch.nonzero(forced >= 0, as_tuple=True)[0]
        allowed[rows, forced[rows]] = True
        allowed[closing, self.separator_id] = True
        if self.end_id is not None:
            allowed[closing, self.end_id] = True
        restricted = (forced >= 0) | closing
        kept = log_probs.masked_fill(~allowed, float("-inf"))
        total = torch.logsumexp(kept, -1, keepdim=True)
        usable = restricted[:, None] & torch.isfinite(total)
        return torch.where(usable, kept - total.nan_to_num(0.0, neginf=0.0), log_probs)

    def drop_format_conflicts(self, tokens: torch.Tensor, known: torch.Tensor, commit: torch.Tensor) -> torch.Tensor:
        """Which of one parallel step's commits `(B, L)` to keep so that the answer keeps its shape (see
        `answer_format`): after the step, a token that breaks the marker or follows an id in its slot is a conflict
        with the token(s) before it that made the rule; where it is new it is dropped, else the new token before it
        is. Keeps every commit without `answer_format`."""
        if not self.answer_format:
            return commit
        after = known | commit
        in_span, _ = self.span_state(tokens, after)
        forced, closing = self.format_rule(tokens, after, in_span)
        is_closing = tokens == self.separator_id
        if self.end_id is not None:
            is_closing |= tokens == self.end_id
        broken = after & (((forced >= 0) & (tokens != forced)) | (closing & ~is_closing))
        drop = broken & commit
        # an old token broken by new ones before it: drop the new ones within the marker's reach to its left
        old_broken = broken & ~commit
        for shift in range(1, max(len(self.start_ids), 2)):
            left = torch.zeros_like(old_broken)
            left[:, :-shift] = old_broken[:, shift:]
            drop |= left & commit
        return commit & ~drop

    def next_token(self, log_probs: torch.Tensor, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """The log-probs `(N, V)` of the token each row writes next, under the constraint, when row `n` has written
        `tokens[n, :lengths[n]]` (`tokens` `(N, L)`; what lies beyond a row's length is ignored). What the left-to-
        right samplers (AR, and the verifier of speculative decoding) choose from."""
        batch, width = tokens.shape
        tokens = torch.cat([tokens, tokens.new_zeros(batch, 1)], 1)  # room for the upcoming token
        positions = torch.arange(width + 1, device=tokens.device)[None, :]
        known = positions < lengths[:, None]
        in_span, used = self.span_state(tokens, known)
        upcoming = positions == lengths[:, None]
        id_slot = (self.id_slots(tokens, known, in_span) & upcoming).any(-1)
        banned = self.ban(log_probs, used, id_slot)
        out = torch.where((in_span & upcoming).any(-1, keepdim=True), banned, log_probs)
        rule = self.format_rule(tokens, known, in_span)
        if rule is None:
            return out
        forced, closing = rule
        forced_next = torch.where(upcoming, forced, torch.full_like(forced, -1)).max(-1).values
        return self.keep_format(out, forced_next, (closing & upcoming).any(-1))

    def ban(self, log_probs: torch.Tensor, used: torch.Tensor, id_slot: torch.Tensor | None = None) -> torch.Tensor:
        """`log_probs` `(N, V)` with the `used` `(N, K)` tokens removed. Their mass goes to the unused tokens of
        `token_ids` in proportion to theirs, so the probability of writing one of them at all is unchanged (a
        ranking's id slot stays an id slot rather than becoming `""` or a stray token); the other tokens keep
        theirs. With every one of `token_ids` used (or of zero probability), the rest is renormalised. Rows where
        `id_slot` `(N,)` is True keep only the unused ids, renormalised among themselves (unless none has mass)."""
        banned = self._ban_used(log_probs, used)
        if id_slot is None or not id_slot.any():
            return banned
        ids = torch.tensor(self.token_ids, device=log_probs.device)
        unused = log_probs[:, ids].masked_fill(used, float("-inf"))
        total = torch.logsumexp(unused, -1, keepdim=True)
        only_ids = torch.full_like(log_probs, float("-inf"))
        only_ids[:, ids] = unused - total.nan_to_num(0.0, neginf=0.0)
        return torch.where(id_slot[:, None] & torch.isfinite(total), only_ids, banned)

    def _ban_used(self, log_probs: torch.Tensor, used: torch.Tensor) -> torch.Tensor:
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

    def drop_empty_slots(self, tokens: torch.Tensor, known: torch.Tensor, commit: torch.Tensor) -> torch.Tensor:
        """Which of one parallel step's commits `(B, L)` to keep so that no id slot is left empty: after the step, a
        written non-id right after the marker or a separator, or a separator/end token right after a written non-id
        (`","` twice, or one straight after the marker), is a conflict of two neighbours; the step's commit among
        them is dropped (the right one when both are new). A lone commit never conflicts, because `id_slots`
        restricted it when it was chosen. Keeps every commit without a `separator_id`."""
        if self.separator_id is None:
            return commit
        after = known | commit
        in_span, _ = self.span_state(tokens, after)
        is_id = torch.isin(tokens, torch.tensor(self.token_ids, device=tokens.device))
        left_non_id = torch.zeros_like(after)
        left_non_id[:, 1:] = (after & ~is_id)[:, :-1]  # the marker's last token counts: an empty first slot
        conflict = after & in_span
        conflict &= (self._opens_slot(tokens, after, in_span) & ~is_id) | (self._closes_slot(tokens) & left_non_id)
        drop = conflict & commit
        left_of_old = torch.zeros_like(drop)
        left_of_old[:, :-1] = (conflict & ~commit)[:, 1:]  # the pair's right token was written before: drop the left
        drop |= left_of_old & commit & in_span
        return commit & ~drop
