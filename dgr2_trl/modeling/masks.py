"""Block-causal attention masks and the `[x_t ; x_0]` training layout (pure tensor functions).

Every token carries a *block id* and a *noisy* flag. Prompt tokens are clean and each is its own block (so the
prompt is causal); a completion is cut into blocks of `block_size` counted from its first token. One rule then
covers training, decoding against a KV cache and trajectory replay:

* clean query -> clean key  when  block(key) <= block(query)   (causal across blocks, bidirectional inside)
* noisy query -> clean key  when  block(key) <  block(query)   (a noisy block sees earlier clean blocks only)
* noisy query -> noisy key  when  block(key) == block(query)   (and its own noisy block, bidirectionally)
* clean query -> noisy key  never
* padding is never attended.

Logits are AR-shifted: the token at completion offset r is predicted at the position just before it. The first
token of a block is therefore predicted by the previous clean token (last prompt token or the last token of the
previous block: exactly the AR next-token prediction); every other token by the noisy token before it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def block_attention_mask(
    query_block: torch.Tensor,
    query_noisy: torch.Tensor,
    key_block: torch.Tensor,
    key_noisy: torch.Tensor,
    key_valid: torch.Tensor,
) -> torch.Tensor:
    """Boolean mask `(B, 1, Q, K)`, True where a query may attend a key (see the module docstring).

    Query rows that may attend nothing (padding queries) are opened to every key: their outputs are never read and
    an all-masked row would give NaNs in some attention kernels.
    """
    qb, kb = query_block[:, :, None], key_block[:, None, :]
    qn, kn = query_noisy.bool()[:, :, None], key_noisy.bool()[:, None, :]
    # a clean key: block(key) <= block(query), strictly below for a noisy query; a noisy key: same block, noisy query
    allowed = torch.where(kn, qn & (kb == qb), kb <= qb - qn.long())
    allowed = allowed & key_valid[:, None, :].bool()
    allowed = allowed | ~allowed.any(dim=-1, keepdim=True)
    return allowed[:, None]


def to_additive_mask(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Turn a boolean mask into the additive float mask every attention backend honours.

    (`eager` attention adds a boolean mask as a 0/1 bias instead of masking; `finfo.min` rather than `-inf` keeps a
    fully-masked row finite.)
    """
    zeros = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
    return zeros.masked_fill(~allowed, torch.finfo(dtype).min)


def prompt_block_ids(prompt_mask: torch.Tensor) -> torch.Tensor:
    """Block ids of prompt columns: each column its own block, so the prompt attends causally."""
    batch, length = prompt_mask.shape
    return torch.arange(length, device=prompt_mask.device).expand(batch, length)


def completion_block_ids(prompt_length: int, completion_length: int, block_size: int, batch: int, device=None):
    """Block ids of completion offsets `0..R-1`: `prompt_length + offset // block_size` (above every prompt id)."""
    offsets = torch.arange(completion_length, device=device)
    return (prompt_length + offsets // block_size).expand(batch, completion_length)


def position_ids_from_mask(valid: torch.Tensor) -> torch.Tensor:
    """Position ids that skip padding: the i-th real token of a row gets position i (pads get 0)."""
    return (valid.long().cumsum(-1) - 1).clamp(min=0)


def check_completion_right_padded(completion_mask: torch.Tensor) -> None:
    """Completions must be contiguous from offset 0 (right-padded), which the AR shift relies on."""
    mask = completion_mask.long()
    if (mask[:, 1:] > mask[:, :-1]).any():
        rows = torch.nonzero((mask[:, 1:] > mask[:, :-1]).any(-1)).flatten().tolist()
        raise ValueError(f"completion_mask must be right-padded (real tokens first); rows {rows} are not")


@dataclass
class TrainingLayout:
    """Inputs of one forward pass that trains (or replays) every block at once.

    Columns are `[prompt (P) | clean completion x_0 (R) | noisy completion x_t (R)]`.

    Attributes:
        input_ids: `(B, P + 2R)`.
        position_ids: `(B, P + 2R)`; the noisy copy repeats the clean copy's positions.
        attention_mask: boolean `(B, 1, P + 2R, P + 2R)`.
        predictor_column: `(B, R)` column whose output predicts completion token r (AR shift).
    """

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    attention_mask: torch.Tensor
    predictor_column: torch.Tensor


def build_training_layout(
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    completion_ids: torch.Tensor,
    completion_mask: torch.Tensor,
    noisy_mask: torch.Tensor,
    mask_token_id: int,
    block_size: int,
) -> TrainingLayout:
    """Build the `[prompt ; x_0 ; x_t]` layout. `noisy_mask` (B, R) marks the completion tokens replaced by the mask
    token in x_t. Prompts may be padded on either side; completions must be right-padded."""
    check_completion_right_padded(completion_mask)
    batch, prompt_len = prompt_ids.shape
    completion_len = completion_ids.shape[1]
    device = prompt_ids.device
    prompt_valid, completion_valid = prompt_mask.bool(), completion_mask.bool()

    noisy_ids = torch.where(noisy_mask.bool() & completion_valid, mask_token_id, completion_ids)
    input_ids = torch.cat([prompt_ids, completion_ids, noisy_ids], dim=1)

    prompt_pos = position_ids_from_mask(prompt_valid)
    prompt_lengths = prompt_valid.sum(-1, keepdim=True)
    completion_pos = prompt_lengths + torch.arange(completion_len, device=device)
    position_ids = torch.cat([prompt_pos, completion_pos, completion_pos], dim=1)

    completion_blocks = completion_block_ids(prompt_len, completion_len, block_size, batch, device)
    blocks = torch.cat([prompt_block_ids(prompt_mask), completion_blocks, completion_blocks], dim=1)
    clean = torch.zeros(batch, prompt_len + completion_len, dtype=torch.bool, device=device)
    noisy = torch.cat([clean, torch.ones_like(completion_valid)], dim=1)
    valid = torch.cat([prompt_valid, completion_valid, completion_valid], dim=1)
    attention_mask = block_attention_mask(blocks, noisy, blocks, noisy, valid)

    # AR shift: the first token of a block is predicted by the clean column before it (the last real prompt token
    # for r = 0), every other token by the noisy column before it.
    offsets = torch.arange(completion_len, device=device).expand(batch, completion_len)
    last_prompt_column = prompt_len - 1 - prompt_valid.flip(-1).long().argmax(-1, keepdim=True)
    clean_before = torch.where(offsets == 0, last_prompt_column, prompt_len + offsets - 1)
    noisy_before = prompt_len + completion_len + offsets - 1
    predictor_column = torch.where(offsets % block_size == 0, clean_before, noisy_before)
    return TrainingLayout(input_ids, position_ids, attention_mask, predictor_column)
