"""The teacher interface: per-token top-k log-probs of an AR teacher on given (prompt, completion) token ids."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch


@dataclass
class TeacherScores:
    """Teacher log-probs for a batch of completions, right-padded to the longest completion `T`.

    Entry `[b, i]` is the teacher's distribution over completion token `i` given `prompt + completion[:i]` (the AR
    shift is already applied, so it lines up one-for-one with the student's prediction of token `i`). All
    log-probs are at temperature 1, untruncated except for keeping only the top-k.

    Attributes:
        topk_logprobs: `(B, T, k)` float32, sorted descending; `-inf` where the server returned fewer than k.
        topk_ids: `(B, T, k)` long; 0 where `topk_logprobs` is `-inf`.
        token_logprobs: `(B, T)` float32, the teacher's log-prob of the completion token itself (exact, even when
            it is outside the top-k).
        mask: `(B, T)` bool, True on real completion tokens.
    """

    topk_logprobs: torch.Tensor
    topk_ids: torch.Tensor
    token_logprobs: torch.Tensor
    mask: torch.Tensor

    @property
    def num_tokens(self) -> int:
        return int(self.mask.sum())

    def to(self, device) -> TeacherScores:
        return TeacherScores(
            *(t.to(device) for t in (self.topk_logprobs, self.topk_ids, self.token_logprobs, self.mask))
        )

    def rows(self, index) -> TeacherScores:
        """A subset of rows (a slice, a list or an index tensor)."""
        return TeacherScores(*(t[index] for t in (self.topk_logprobs, self.topk_ids, self.token_logprobs, self.mask)))


def empty_scores(lengths: list[int], top_k: int) -> TeacherScores:
    """Padded, all-`-inf` scores to fill row by row."""
    width = max(lengths, default=0)
    batch = len(lengths)
    mask = torch.zeros(batch, width, dtype=torch.bool)
    for row, n in enumerate(lengths):
        mask[row, :n] = True
    return TeacherScores(
        topk_logprobs=torch.full((batch, width, top_k), float("-inf")),
        topk_ids=torch.zeros(batch, width, top_k, dtype=torch.long),
        token_logprobs=torch.zeros(batch, width),
        mask=mask,
    )


def check_inputs(prompt_ids, completion_ids, top_k: int) -> None:
    if len(prompt_ids) != len(completion_ids):
        raise ValueError(f"got {len(prompt_ids)} prompts but {len(completion_ids)} completions")
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    for row, prompt in enumerate(prompt_ids):
        if not len(prompt):
            raise ValueError(f"prompt {row} is empty: the teacher needs at least one token to predict the first one")


class Teacher(ABC):
    """Where AR teacher log-probs come from. Subclasses: `InProcessTeacher` (an HF causal LM in this process) and
    `VLLMServerTeacher` (a vLLM server over HTTP)."""

    @abstractmethod
    def score(self, prompt_ids: list[list[int]], completion_ids: list[list[int]], top_k: int = 20) -> TeacherScores:
        """Top-k log-probs and the actual token's log-prob for every completion token (see `TeacherScores`)."""

    @abstractmethod
    def check_tokenizer(self, tokenizer) -> None:
        """Raise a clear error if the teacher's vocabulary does not match the student's `tokenizer`."""

    @property
    def vocab_size(self) -> int | None:
        """Number of rows of the teacher's output distribution, when known."""
        return None

    def close(self) -> None:  # noqa: B027 - optional hook, a no-op by default
        """Release resources (nothing by default)."""
