import copy

import pytest
import torch

from dgr2_trl.modeling import convert_to_block_diffusion, tiny_causal_lm
from dgr2_trl.tokenization import train_chat_tokenizer


CORPUS = [
    "the quick brown fox jumps over the lazy dog",
    "nail polish lip gloss shampoo conditioner face cream",
    "rank the candidates and answer with a json list of ids",
] * 20

PROMPTS = ["the quick brown fox", "nail polish and a face cream", "rank", "json list of ids for the lazy dog"]


@pytest.fixture(scope="session")
def tokenizer():
    return train_chat_tokenizer(CORPUS, vocab_size=400)


def make_model(tokenizer, architecture="qwen3", dtype=torch.float64, seed=0, attn_implementation="sdpa"):
    """A tiny random model with sharp next-token distributions (float64 so exactness tests have no near-ties)."""
    return tiny_causal_lm(
        len(tokenizer) + 1,  # room for the mask token, so conversion needs no resize
        architecture,
        dtype=dtype,
        seed=seed,
        initializer_range=0.5,
        attn_implementation=attn_implementation,
    )


def make_converted(tokenizer, block_size=4, **kwargs):
    model = make_model(tokenizer, **kwargs)
    return convert_to_block_diffusion(model, copy.deepcopy(tokenizer), block_size=block_size)
