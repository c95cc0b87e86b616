"""Noise schedules and per-block masking for masked (block) diffusion.

A schedule maps a diffusion time t in (0, 1] to the probability that a token is masked, and gives the ELBO weight
of a masked token at that time (1/t for the linear schedule). One t is drawn per block, as in BD3-LM.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


class NoiseSchedule:
    """Base class: subclass and implement `mask_probability` and `loss_weight` to plug in a schedule."""

    name = "base"

    def mask_probability(self, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def loss_weight(self, t: torch.Tensor) -> torch.Tensor:
        """ELBO weight of a masked token: -alpha'(t) / (1 - alpha(t)), with alpha(t) = 1 - mask_probability(t)."""
        raise NotImplementedError


class LinearSchedule(NoiseSchedule):
    name = "linear"

    def mask_probability(self, t):
        return t

    def loss_weight(self, t):
        return 1.0 / t


class CosineSchedule(NoiseSchedule):
    name = "cosine"

    def mask_probability(self, t):
        return 1.0 - torch.cos(0.5 * math.pi * t)

    def loss_weight(self, t):
        return 0.5 * math.pi * torch.sin(0.5 * math.pi * t) / (1.0 - torch.cos(0.5 * math.pi * t))


SCHEDULES = {"linear": LinearSchedule, "cosine": CosineSchedule}


def get_schedule(schedule: str | NoiseSchedule) -> NoiseSchedule:
    if isinstance(schedule, NoiseSchedule):
        return schedule
    if schedule not in SCHEDULES:
        raise ValueError(
            f"unknown noise schedule {schedule!r}; expected one of {sorted(SCHEDULES)} or a NoiseSchedule"
        )
    return SCHEDULES[schedule]()


@dataclass
class BlockNoise:
    """A sampled corruption of a batch of completions.

    Attributes:
        noisy_mask: `(B, R)` True where the completion token is replaced by the mask token (real tokens only).
        t: `(B, R)` the diffusion time of each token's block.
    """

    noisy_mask: torch.Tensor
    t: torch.Tensor


def sample_block_noise(
    completion_mask: torch.Tensor,
    block_size: int,
    schedule: str | NoiseSchedule = "linear",
    min_t: float = 1e-3,
    max_t: float = 1.0,
    antithetic: bool = True,
    generator: torch.Generator | None = None,
) -> BlockNoise:
    """Draw one t per block in [min_t, max_t] and mask each real completion token with probability
    `schedule.mask_probability(t)`.

    With `antithetic=True` the block times of a row are stratified (one uniform offset, evenly spread), which lowers
    the variance of the loss across blocks as in BD3-LM.
    """
    schedule = get_schedule(schedule)
    batch, length = completion_mask.shape
    device = completion_mask.device
    num_blocks = max(1, -(-length // block_size))
    if antithetic:
        offset = torch.rand(batch, 1, generator=generator, device=device)
        u = (offset + torch.arange(num_blocks, device=device) / num_blocks) % 1.0
        u = u[:, torch.randperm(num_blocks, generator=generator, device=device)]
    else:
        u = torch.rand(batch, num_blocks, generator=generator, device=device)
    block_t = min_t + (max_t - min_t) * u
    t = block_t.repeat_interleave(block_size, dim=1)[:, :length]
    draws = torch.rand(batch, length, generator=generator, device=device)
    noisy_mask = (draws < schedule.mask_probability(t)) & completion_mask.bool()
    return BlockNoise(noisy_mask=noisy_mask, t=t)
