"""The output type shared by every sampler, and the speculative sampler's extension of it."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class GenerationOutput:
    """What `sampler.generate(...)` returns, one entry per prompt in every per-row list.

    Attributes:
        texts: decoded completions (special tokens skipped, cut at the first end-of-sequence token).
        completion_ids: generated token ids per row, cut after the first end-of-sequence token (kept).
        commit_step: per token, the denoising step (0-based, counted inside the token's block) at which it was
            committed. For the AR sampler every token is committed at step 0 of its own one-token block.
        logprobs: per token, its log-probability under the sampling distribution at the moment it was committed
            (temperature-scaled when sampling, plain softmax when greedy; the mask token excluded).
        num_forward_passes: model calls made while decoding the batch, the prefill call reported apart.
        num_prefill_passes: model calls that encoded the prompts (1 for both samplers).
        steps_per_row: per row, the denoising steps that row needed (what it would cost decoded alone).
        elapsed_s: wall-clock seconds of the whole `generate` call.
        trailing_ids: per row, the tokens of the last decoded block after the cut (after the first EOS, or past
            `max_new_tokens`). Not part of the completion, but the earlier tokens of that block saw them while
            being decoded, so trajectory replay needs them to reproduce those states exactly.
        trailing_commit_step: the commit steps of `trailing_ids`.
    """

    texts: list[str]
    completion_ids: list[list[int]]
    commit_step: list[list[int]] = field(default_factory=list)
    logprobs: list[list[float]] = field(default_factory=list)
    num_forward_passes: int = 0
    num_prefill_passes: int = 0
    steps_per_row: list[int] = field(default_factory=list)
    elapsed_s: float = 0.0
    trailing_ids: list[list[int]] = field(default_factory=list)
    trailing_commit_step: list[list[int]] = field(default_factory=list)

    @property
    def num_generated_tokens(self) -> int:
        return sum(len(ids) for ids in self.completion_ids)

    @property
    def tokens_per_second(self) -> float:
        return self.num_generated_tokens / self.elapsed_s if self.elapsed_s > 0 else float("nan")

    @property
    def forward_passes_per_token(self) -> float:
        """Batch-independent cost: mean over rows of (steps the row needed) / (tokens it produced)."""
        ratios = [s / max(len(ids), 1) for s, ids in zip(self.steps_per_row, self.completion_ids)]
        return sum(ratios) / len(ratios) if ratios else float("nan")


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
