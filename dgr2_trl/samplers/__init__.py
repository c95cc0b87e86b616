"""Samplers with one interface: `.generate(prompts, max_new_tokens=..., temperature=...) -> GenerationOutput`."""

from .ar import ARSampler
from .block_diffusion import BlockDiffusionSampler, fill_after_eos, select_commits
from .common import encode_prompts
from .constraints import UniqueTokens
from .output import GenerationOutput
from .speculative import SpeculativeOutput, SpeculativeSampler


__all__ = [
    "ARSampler",
    "BlockDiffusionSampler",
    "GenerationOutput",
    "SpeculativeOutput",
    "SpeculativeSampler",
    "UniqueTokens",
    "encode_prompts",
    "fill_after_eos",
    "select_commits",
]
