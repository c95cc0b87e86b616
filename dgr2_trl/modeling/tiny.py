"""Small causal LMs built from a config (no download), for tests, benchmarks and the CPU presets."""

from __future__ import annotations

import copy

import torch
from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config, Qwen3Config


CONFIG_CLASSES = {"qwen2": Qwen2Config, "qwen3": Qwen3Config, "llama": LlamaConfig}


def tiny_causal_lm(
    vocab_size: int,
    architecture: str = "qwen3",
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int = 128,
    max_position_embeddings: int = 2048,
    tie_word_embeddings: bool = True,
    attn_implementation: str = "sdpa",
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
    initializer_range: float = 0.02,
    pad_token_id: int | None = None,
    eos_token_id: int | None = None,
):
    """A randomly initialised Qwen2 / Qwen3 / Llama causal LM of the given size.

    A larger `initializer_range` (e.g. 0.5) gives sharp, varied next-token distributions, which exactness tests
    need (the default init predicts a near-uniform distribution and repeats one token)."""
    if architecture not in CONFIG_CLASSES:
        raise ValueError(f"architecture must be one of {sorted(CONFIG_CLASSES)}, got {architecture!r}")
    config = CONFIG_CLASSES[architecture](
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        intermediate_size=intermediate_size,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=tie_word_embeddings,
        pad_token_id=pad_token_id,
        eos_token_id=eos_token_id,
        head_dim=hidden_size // num_heads,
        initializer_range=initializer_range,
    )
    torch.manual_seed(seed)
    # `_from_config` mutates the config it is given, hence the copy.
    model = AutoModelForCausalLM.from_config(
        copy.deepcopy(config), attn_implementation=attn_implementation, dtype=dtype
    )
    return model.eval()
