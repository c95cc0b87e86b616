"""The OPD loss: a divergence between the AR teacher's top-k (+ tail bucket) and the block-diffusion student's
distribution read in the decoding state the student used (trajectory replay)."""

from __future__ import annotations

import torch

from ..modeling.replay import replay_states


DIVERGENCES = ("forward_kl", "reverse_kl", "jsd")
# Floor for a tail bucket's log-mass: a teacher top-k that covers the whole vocabulary leaves a tail of exactly 0,
# whose log would turn 0 * log 0 into NaN. e^-80 is far below anything float32 probabilities resolve.
MIN_LOG_MASS = -80.0


def replay_support_logprobs(
    model,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    completion_ids: torch.Tensor,
    completion_mask: torch.Tensor,
    commit_step: torch.Tensor,
    loss_mask: torch.Tensor,
    support_ids: torch.Tensor,
    support_valid: torch.Tensor,
    mask_token_id: int,
    block_size: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The student's log-probs on a per-token support, each token read in the state where it was committed.

    A sibling of `dgr2_trl.modeling.replay_logprobs` (same states: step s masks, in every block, the tokens committed
    at step >= s; one forward per step), returning instead, for every position in `loss_mask`, the temperature-1
    log-probs (mask token excluded) of `support_ids` `(B, R, k)` and the exact log-mass of everything else (the tail
    bucket, a log-sum-exp over the complement rather than log(1 - sum), so it keeps full precision and gradient).

    `completion_mask` covers the completion and the tail of its last block (the sampler's states include it);
    `loss_mask` only the tokens that get a loss. Entries outside `loss_mask` come back as 0.
    """
    batch, width, k = support_ids.shape
    dtype = torch.float32 if model.dtype in (torch.float16, torch.bfloat16) else model.dtype
    support = torch.zeros(batch, width, k, dtype=dtype, device=support_ids.device)
    tail = torch.zeros(batch, width, dtype=dtype, device=support_ids.device)
    for rows, offsets, log_probs in replay_states(
        model,
        prompt_ids,
        prompt_mask,
        completion_ids,
        completion_mask,
        commit_step,
        mask_token_id,
        block_size,
        scored_mask=loss_mask,
    ):
        ids, ok = support_ids[rows, offsets], support_valid[rows, offsets]
        in_support = torch.zeros_like(log_probs).scatter_add_(-1, ids, ok.to(log_probs.dtype)) > 0
        support = support.index_put((rows, offsets), log_probs.gather(-1, ids).to(dtype))
        rest = torch.logsumexp(log_probs.masked_fill(in_support, float("-inf")), dim=-1)
        tail = tail.index_put((rows, offsets), rest.to(dtype))
    return support, tail


def teacher_buckets(topk_logprobs: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """The teacher's (k+1)-bucket log-distribution: its top-k log-probs and log(1 - sum exp(top-k)), in float64."""
    top = torch.where(valid, topk_logprobs.double(), float("-inf"))
    covered = torch.logsumexp(top, dim=-1).clamp(max=-1e-15)
    tail = torch.log(-torch.expm1(covered)).clamp_min(MIN_LOG_MASS)
    return torch.cat([top, tail[..., None]], dim=-1)


def student_buckets(support: torch.Tensor, tail: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    top = torch.where(valid, support.double(), float("-inf"))
    return torch.cat([top, tail.double().clamp_min(MIN_LOG_MASS)[..., None]], dim=-1)


def _kl(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """sum_j p_j (log p_j - log q_j) over the last axis, with 0 log 0 = 0 on empty buckets."""
    p = log_p.exp()
    terms = torch.where(p > 0, p * (log_p - log_q), torch.zeros_like(p))
    return terms.sum(-1)


def bucket_divergence(
    teacher: torch.Tensor, student: torch.Tensor, divergence: str, jsd_beta: float = 0.5
) -> torch.Tensor:
    """Per-token divergence between two bucket log-distributions `(..., k+1)`.

    `forward_kl` = KL(teacher || student) (mode-covering, the paper's OPD loss), `reverse_kl` = KL(student ||
    teacher) (mode-seeking), `jsd` = jsd_beta KL(T || M) + (1 - jsd_beta) KL(S || M) with M = jsd_beta T +
    (1 - jsd_beta) S.
    """
    if divergence == "forward_kl":
        return _kl(teacher, student)
    if divergence == "reverse_kl":
        return _kl(student, teacher)
    if divergence == "jsd":
        if not 0.0 < jsd_beta < 1.0:
            raise ValueError(f"jsd_beta must be in (0, 1), got {jsd_beta}")
        beta = torch.tensor(jsd_beta, dtype=teacher.dtype, device=teacher.device)
        mixture = torch.logaddexp(teacher + beta.log(), student + torch.log1p(-beta))
        return beta * _kl(teacher, mixture) + (1 - beta) * _kl(student, mixture)
    raise ValueError(f"divergence must be one of {DIVERGENCES}, got {divergence!r}")
