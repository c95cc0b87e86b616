"""Converting an autoregressive causal LM into a block-diffusion LM, with the same weights."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from .forward import decoder_hidden_states
from .masks import block_attention_mask, position_ids_from_mask


CONFIG_KEY = "block_diffusion"
DEFAULT_BLOCK_SIZE = 32  # the paper's block size
DEFAULT_MASK_TOKEN = "<|mask|>"


@dataclass
class BlockDiffusionSettings:
    """What `convert_to_block_diffusion` stores in `model.config.block_diffusion` (saved with the model)."""

    block_size: int
    mask_token_id: int
    mask_token: str


def get_block_diffusion_settings(model) -> BlockDiffusionSettings | None:
    """The block-diffusion settings of a converted model (also through PEFT wrappers), or None for an AR model."""
    stored = getattr(model.config, CONFIG_KEY, None)
    return BlockDiffusionSettings(**stored) if stored else None


def _check_block_size(block_size) -> int:
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"block_size must be an integer >= 1, got {block_size!r}")
    return block_size


def _mask_token_id(tokenizer, mask_token: str) -> tuple[int, bool]:
    """Id of the mask token, adding it to the tokenizer if new. Returns (id, added)."""
    if not isinstance(mask_token, str) or not mask_token:
        raise ValueError(f"mask_token must be a non-empty string, got {mask_token!r}")
    if tokenizer.mask_token == mask_token:
        return tokenizer.mask_token_id, False
    special_roles = {
        role: getattr(tokenizer, role, None)
        for role in ("bos_token", "eos_token", "pad_token", "unk_token", "mask_token")
    }
    for role, token in special_roles.items():
        if token == mask_token:
            raise ValueError(
                f"mask_token {mask_token!r} collides with the tokenizer's {role}; choose a token that is not already "
                "special (the mask token must never be generated, so it cannot double as another token)"
            )
    if mask_token in tokenizer.all_special_tokens:
        raise ValueError(f"mask_token {mask_token!r} collides with an existing special token of the tokenizer")
    if mask_token in tokenizer.get_vocab():
        raise ValueError(
            f"mask_token {mask_token!r} is already an ordinary token of the vocabulary; choose a new string"
        )
    tokenizer.add_special_tokens({"mask_token": mask_token})
    return tokenizer.convert_tokens_to_ids(mask_token), True


@torch.no_grad()
def check_custom_mask_support(model) -> None:
    """Probe that the model's attention honours a custom 4D mask.

    The first token's output must change when it is allowed to see later tokens. Some attention backends (e.g.
    FlashAttention-2) silently ignore a 4D mask and would train a plain causal model instead.
    """
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        vocab = model.get_input_embeddings().weight.shape[0]
        ids = (torch.arange(1, 7, device=device) * 7919 % vocab).unsqueeze(0)
        valid = torch.ones_like(ids, dtype=torch.bool)
        positions = position_ids_from_mask(valid)
        causal_blocks = torch.arange(ids.shape[1], device=device).unsqueeze(0)
        one_block = torch.zeros_like(causal_blocks)
        clean = torch.zeros_like(valid)
        causal = block_attention_mask(causal_blocks, clean, causal_blocks, clean, valid)
        bidirectional = block_attention_mask(one_block, clean, one_block, clean, valid)
        first_causal = decoder_hidden_states(model, ids, positions, causal)[0, 0]
        first_bidirectional = decoder_hidden_states(model, ids, positions, bidirectional)[0, 0]
    finally:
        model.train(was_training)
    if torch.allclose(first_causal.float(), first_bidirectional.float(), rtol=0, atol=1e-6):
        implementation = getattr(model.config, "_attn_implementation", "unknown")
        raise ValueError(
            f"the model's attention (attn_implementation={implementation!r}) ignores a custom 4D attention mask, so "
            "block-diffusion training would silently stay causal; load the model with attn_implementation='sdpa' "
            "or 'eager'"
        )


def ensure_custom_mask_support(model) -> None:
    """`check_custom_mask_support`, once per model and attention implementation: samplers and trainers call it on
    every model they receive, so a converted checkpoint loaded with (or switched to) a backend that ignores 4D
    masks fails loudly instead of decoding and training causally."""
    implementation = getattr(model.config, "_attn_implementation", None)
    if model.__dict__.get("_dgr2_mask_checked_for", object()) == implementation:
        return
    check_custom_mask_support(model)
    model.__dict__["_dgr2_mask_checked_for"] = implementation


def convert_to_block_diffusion(
    model, tokenizer, block_size: int = DEFAULT_BLOCK_SIZE, mask_token: str = DEFAULT_MASK_TOKEN
):
    """Turn an AR causal LM into a block-diffusion LM and return `(model, tokenizer)`.

    The weights are unchanged; the embedding matrix is resized only when the mask token is new and does not fit in
    the existing rows. Block settings are stored in `model.config.block_diffusion` so `save_pretrained` /
    `from_pretrained` restore them. Converting a converted model again only updates its block size.
    `model.generate` then decodes blocks with `BlockDiffusionSampler`'s steps (see `dgr2_trl.samplers.hf_generate`).
    """
    block_size = _check_block_size(block_size)
    ensure_custom_mask_support(model)
    mask_token_id, _ = _mask_token_id(tokenizer, mask_token)
    embeddings = model.get_input_embeddings()
    if mask_token_id >= embeddings.weight.shape[0]:
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        # a deterministic start for the new row: the mean of the existing embeddings
        with torch.no_grad():
            weight = model.get_input_embeddings().weight
            weight[mask_token_id] = weight[:mask_token_id].mean(0)
    settings = BlockDiffusionSettings(block_size=block_size, mask_token_id=mask_token_id, mask_token=mask_token)
    setattr(model.config, CONFIG_KEY, asdict(settings))
    from ..samplers.hf_generate import install_block_generate  # samplers import this module

    install_block_generate(model)  # model.generate decodes blocks; save_pretrained keeps it so
    return model, tokenizer
