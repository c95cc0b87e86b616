"""Prompt encoding and per-row bookkeeping shared by the samplers."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch

from ..modeling.conversion import get_block_diffusion_settings


def encode_prompts(tokenizer, prompts: Sequence, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokenise prompts (strings, or chat-message lists rendered with the tokenizer's chat template and a generation
    prompt) and left-pad them. Returns `(input_ids, attention_mask)`, both `(B, P)`."""
    if isinstance(prompts, (str, dict)) or not len(prompts):
        raise ValueError("prompts must be a non-empty list of strings or of chat-message lists")
    rows: list = []
    texts: dict[int, str] = {}  # rows still to tokenise, all in one call
    for index, prompt in enumerate(prompts):
        if isinstance(prompt, str):
            texts[index] = prompt
        elif isinstance(prompt, (list, tuple)) and all(isinstance(m, dict) and "role" in m for m in prompt):
            texts[index] = tokenizer.apply_chat_template(list(prompt), tokenize=False, add_generation_prompt=True)
        elif isinstance(prompt, (list, tuple)) and all(isinstance(t, int) for t in prompt):
            rows.append(list(prompt))  # already token ids
            continue
        else:
            raise ValueError(
                f"prompt {index} must be a string, a list of chat messages with 'role'/'content', or a list of "
                f"token ids; got {type(prompt).__name__}"
            )
        rows.append(None)
    if texts:
        encoded = tokenizer(list(texts.values()), add_special_tokens=False)["input_ids"]
        for index, ids in zip(texts, encoded):
            rows[index] = ids
    for index, row in enumerate(rows):
        if not row:
            raise ValueError(f"prompt {index} encodes to no tokens")
    return left_pad(rows, pad_id(tokenizer), device)


def check_prompt_ids(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, new_positions: int) -> None:
    """Refuse prompts the model cannot read: token ids outside its embedding table (an IndexError deep in torch
    otherwise), and prompt + `new_positions` beyond `max_position_embeddings` (positions it was never trained on;
    RoPE models would decode them silently)."""
    vocab = model.get_input_embeddings().weight.shape[0]
    real = attention_mask.bool()
    bad = real & ((input_ids < 0) | (input_ids >= vocab))
    if bad.any():
        row = int(bad.any(-1).nonzero()[0])
        token = int(input_ids[row][bad[row]][0])
        raise ValueError(
            f"prompt {row} holds token id {token}, outside the model's vocabulary of {vocab} rows; "
            "was it encoded with another tokenizer?"
        )
    limit = getattr(model.config, "max_position_embeddings", None)
    longest = int(real.sum(-1).max())
    if limit is not None and longest + new_positions > limit:
        row = int(real.sum(-1).argmax())
        raise ValueError(
            f"prompt {row} has {longest} tokens; with {new_positions} new positions that exceeds the "
            f"model's max_position_embeddings={limit}: shorten the prompt or max_new_tokens"
        )


def left_pad(rows: list[list[int]], pad_token_id: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, width - len(row) :] = torch.tensor(row, dtype=torch.long)
        mask[i, width - len(row) :] = 1
    return ids.to(device), mask.to(device)


def pad_id(tokenizer) -> int:
    if tokenizer.pad_token_id is not None:
        return tokenizer.pad_token_id
    if tokenizer.eos_token_id is not None:
        return tokenizer.eos_token_id
    raise ValueError("the tokenizer has neither a pad token nor an eos token to pad prompts with")


def block_settings_of(model, block_size, role: str = "model"):
    """The block-diffusion settings of a converted `model` and the block size to decode with (`block_size`, or the
    model's own when None). Refuses an unconverted model and a block size that is not an integer >= 1."""
    settings = get_block_diffusion_settings(model)
    if settings is None:
        raise ValueError(
            f"the {role} is not a block-diffusion model; convert it first with "
            "dgr2_trl.convert_to_block_diffusion(model, tokenizer)"
        )
    if block_size is not None and (isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1):
        raise ValueError(
            f"block_size must be None (the {role}'s {settings.block_size}) or an integer >= 1, got {block_size!r}"
        )
    return settings, block_size or settings.block_size


def check_max_new_tokens(max_new_tokens) -> None:
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")


def check_threshold(threshold) -> float:
    """A commit threshold is a probability: a number in [0, 1] (1.0 commits only certain tokens, plus the
    fallback's one per step)."""
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be a number in [0, 1], got {threshold!r}")
    return float(threshold)


def check_steps_per_block(max_steps_per_block) -> int | None:
    if max_steps_per_block is not None and (
        isinstance(max_steps_per_block, bool) or not isinstance(max_steps_per_block, int) or max_steps_per_block < 1
    ):
        raise ValueError(f"max_steps_per_block must be None (no cap) or an integer >= 1, got {max_steps_per_block!r}")
    return max_steps_per_block


def eos_ids(tokenizer, eos_token_id) -> list[int]:
    """End-of-sequence ids: the argument (int or list) or the tokenizer's eos token."""
    if eos_token_id is None:
        eos_token_id = tokenizer.eos_token_id
    if eos_token_id is None:
        return []
    return [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id)


def warn_without_eos(eos: list[int]) -> None:
    if not eos:
        warnings.warn(
            "no end-of-sequence token (neither eos_token_id nor the tokenizer's eos token): every row "
            "decodes to max_new_tokens",
            stacklevel=3,
        )


def cut_at_eos(row: list[int], eos: list[int], limit: int) -> int:
    """Length of a completion: up to and including the first end-of-sequence token, at most `limit`."""
    for index, token in enumerate(row[:limit]):
        if token in eos:
            return index + 1
    return min(len(row), limit)


def sample_tokens(log_probs: torch.Tensor, temperature: float, generator: torch.Generator | None) -> torch.Tensor:
    """Greedy (temperature <= 0) or exact categorical sampling via Gumbel-max in float64."""
    if temperature <= 0:
        return log_probs.argmax(-1)
    uniform = torch.rand(log_probs.shape, dtype=torch.float64, generator=generator, device=log_probs.device)
    gumbel = -torch.log(-torch.log(uniform.clamp_min(1e-300)))
    return (log_probs.double() + gumbel).argmax(-1)
