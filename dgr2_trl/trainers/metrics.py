"""The valid rate, one definition for the three trainers and `ValidRateCallback`."""

from __future__ import annotations

import torch

from ..rewards.functions import validity_reward


def count_valid(prompts, texts, candidates) -> float:
    """How many of `texts` are exact permutations of their row's `candidates`: the sum of `validity_reward`, so the
    logged valid rate and the validity reward are the same number."""
    return float(sum(validity_reward(prompts=list(prompts), completions=list(texts), candidates=list(candidates))))


def valid_rate_across_processes(accelerator, num_valid: float, num_rows: int) -> float:
    """Valid rate of the rows of every process together: counts summed in one collective, then divided (a mean of
    per-process rates would weigh a process with fewer rows as much as one with more)."""
    counts = torch.tensor([[float(num_valid), float(num_rows)]], dtype=torch.float64, device=accelerator.device)
    valid, total = accelerator.gather(counts).sum(0).tolist()
    return valid / max(total, 1.0)
