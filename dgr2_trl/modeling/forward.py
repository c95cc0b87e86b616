"""Running a causal LM under a custom block-causal mask, and reading logits only where they are needed."""

from __future__ import annotations

import functools
import inspect

import torch
import torch.nn.functional as F

from .masks import to_additive_mask


def _cache_kwarg(module: torch.nn.Module) -> str:
    # transformers >= 5.2x renamed `past_key_values` to `cache` (the old name is removed in 5.40).
    return _cache_kwarg_of(type(module))


@functools.cache
def _cache_kwarg_of(module_class: type) -> str:
    # inspecting a signature costs ~0.2 ms, as much as a small model's decode step: once per class
    return "cache" if "cache" in inspect.signature(module_class.forward).parameters else "past_key_values"


def attention_mask_for(model: torch.nn.Module, allowed: torch.Tensor) -> torch.Tensor:
    """The 4D mask in the form the model's attention backend honours.

    SDPA and flex take a boolean mask (True = attend); `eager` adds whatever it is given, so it gets an additive
    float mask (a boolean one would silently become a 0/1 bias).
    """
    implementation = getattr(model.config, "_attn_implementation", None) or "eager"
    if implementation in ("sdpa", "flex_attention"):
        return allowed
    return to_additive_mask(allowed, model.dtype)


def decoder_hidden_states(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    position_ids: torch.Tensor,
    allowed: torch.Tensor,
    cache=None,
) -> torch.Tensor:
    """Last hidden states `(B, L, H)` of the model's decoder (no LM head), under the boolean mask `allowed`."""
    decoder = model.get_decoder()
    kwargs = {_cache_kwarg(decoder): cache, "use_cache": cache is not None}
    out = decoder(
        input_ids=input_ids,
        attention_mask=attention_mask_for(model, allowed),
        position_ids=position_ids,
        **kwargs,
    )
    return out.last_hidden_state


def forward_logits(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    position_ids: torch.Tensor,
    allowed: torch.Tensor,
    keep_columns: torch.Tensor,
    cache=None,
) -> torch.Tensor:
    """Logits `(B, len(keep_columns), V)` at the given columns only, using (and extending) `cache`."""
    hidden = decoder_hidden_states(model, input_ids, position_ids, allowed, cache)
    return _upcast(model.get_output_embeddings()(hidden[:, keep_columns]))


def _upcast(logits: torch.Tensor) -> torch.Tensor:
    # softmax in at least float32; float64 stays float64 (exactness tests run in it)
    return logits if logits.dtype in (torch.float32, torch.float64) else logits.float()


def log_probs_without_mask(logits: torch.Tensor, mask_token_id: int | None, temperature: float = 1.0) -> torch.Tensor:
    """Log-softmax over the vocabulary with the mask token excluded (it must never be produced).

    `temperature` <= 0 means greedy decoding, whose reported log-probs are the untempered ones.
    """
    logits = _upcast(logits)
    if temperature > 0 and temperature != 1.0:
        logits = logits / temperature
    if mask_token_id is not None and mask_token_id < logits.shape[-1]:
        logits = logits.clone()
        logits[..., mask_token_id] = float("-inf")
    return F.log_softmax(logits, dim=-1)
