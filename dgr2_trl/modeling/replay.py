"""Trajectory replay: the log-prob of each sampled token in the exact state in which it was committed."""

from __future__ import annotations

import torch

from .forward import decoder_hidden_states, log_probs_without_mask
from .masks import build_training_layout


def replay_states(
    model,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    completion_ids: torch.Tensor,
    completion_mask: torch.Tensor,
    commit_step: torch.Tensor,
    mask_token_id: int,
    block_size: int,
    scored_mask: torch.Tensor | None = None,
    temperature: float = 1.0,
    merge_steps: int = 1,
):
    """Yield `(rows, offsets, log_probs)` per replayed state: the (tempered, mask-excluded) log-distributions of the
    completion positions committed at steps `first..first+merge_steps-1`, read in the state of step `first` (its
    tokens committed at step >= first masked in every block). `scored_mask` restricts which positions are read."""
    if merge_steps < 1:
        raise ValueError(f"merge_steps must be >= 1, got {merge_steps}")
    valid = completion_mask.bool()
    steps = torch.where(valid, commit_step, -1)
    wanted = valid if scored_mask is None else valid & scored_mask.bool()
    if not wanted.any():
        return
    head = model.get_output_embeddings()
    for first in range(0, int(torch.where(wanted, steps, -1).max().item()) + 1, merge_steps):
        scored = wanted & (steps >= first) & (steps < first + merge_steps)
        if not scored.any():
            continue
        layout = build_training_layout(
            prompt_ids,
            prompt_mask,
            completion_ids,
            completion_mask,
            valid & (steps >= first),
            mask_token_id,
            block_size,
        )
        hidden = decoder_hidden_states(model, layout.input_ids, layout.position_ids, layout.attention_mask)
        rows, offsets = torch.nonzero(scored, as_tuple=True)
        logits = head(hidden[rows, layout.predictor_column[rows, offsets]])
        yield rows, offsets, log_probs_without_mask(logits, mask_token_id, temperature)


def replay_logprobs(
    model,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    completion_ids: torch.Tensor,
    completion_mask: torch.Tensor,
    commit_step: torch.Tensor,
    mask_token_id: int,
    block_size: int,
    temperature: float = 1.0,
    merge_steps: int = 1,
    return_entropy: bool = False,
):
    """Per-token log-probs `(B, R)` of `completion_ids`, each read in its decoding state.

    The state of step s masks, in every block at once, the tokens committed at step >= s (earlier blocks stay
    clean in the x_0 copy), so one forward over the `[prompt ; x_0 ; x_t]` layout scores every token committed at
    step s in all blocks. That costs `ceil(max_step / merge_steps)` forward passes per batch.

    `merge_steps` > 1 scores steps s..s+k-1 all in the state of step s (TraceRL's "shrink"): cheaper, but biased:
    a token committed at step s+1 is then scored without seeing the tokens committed at step s.

    `completion_mask` marks every token the sampler had in its blocks (including the tail of the last block after
    an EOS, so the states match); positions outside it come back as 0. With `return_entropy`, also returns the
    entropy of each position's (tempered, mask-excluded) distribution: `(log_probs, entropies)`.
    """
    result = torch.zeros(completion_ids.shape, dtype=torch.float64, device=completion_ids.device)
    entropy = torch.zeros_like(result)
    for rows, offsets, log_probs in replay_states(
        model,
        prompt_ids,
        prompt_mask,
        completion_ids,
        completion_mask,
        commit_step,
        mask_token_id,
        block_size,
        temperature=temperature,
        merge_steps=merge_steps,
    ):
        token_logprob = log_probs.gather(-1, completion_ids[rows, offsets][:, None]).squeeze(-1)
        result = result.index_put((rows, offsets), token_logprob.double())
        if return_entropy:
            with torch.no_grad():
                probs = log_probs.exp()
                position_entropy = -(probs * log_probs.masked_fill(probs == 0, 0.0)).sum(-1)
            entropy = entropy.index_put((rows, offsets), position_entropy.double())
    return (result, entropy) if return_entropy else result
