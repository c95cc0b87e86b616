"""`model.generate(...)` on a converted model decodes blocks, never silently AR.

`convert_to_block_diffusion` installs `block_diffusion_generate` as the model's `generate` and a `save_pretrained`
that also writes `custom_generate/generate.py` (transformers' custom-generation hook). So the override holds for
the converted object, for `pipeline("text-generation", model=model)`, for `load_causal_lm(path)` and for
`AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True)`. A plain `from_pretrained` without
`trust_remote_code` runs no code of ours and gets transformers' AR `generate`: load through `dgr2_trl` or decode
with `BlockDiffusionSampler`.

The tokens and commit steps are `BlockDiffusionSampler`'s: this is a thin adapter from HF's calling convention
(left-padded ids + attention mask in, `prompt + completion` ids out, finished rows padded) to the sampler.
"""

from __future__ import annotations

import types
from dataclasses import dataclass
from pathlib import Path

import torch


CUSTOM_GENERATE_FILE = Path("custom_generate") / "generate.py"
CUSTOM_GENERATE_SOURCE = '''"""Written by dgr2-trl: this block-diffusion checkpoint decodes blocks in `model.generate`
(needs dgr2-trl)."""

from dgr2_trl.samplers.hf_generate import block_diffusion_generate as generate  # noqa: F401
'''
# HF `generate` arguments this adapter cannot honour (it would otherwise ignore them and decode differently)
_REFUSED = (
    "logits_processor",
    "stopping_criteria",
    "prefix_allowed_tokens_fn",
    "assistant_model",
    "streamer",
    "negative_prompt_ids",
    "negative_prompt_attention_mask",
    "synced_gpus",
)
_IGNORED = (
    "use_cache",
    "return_dict_in_generate",
    "output_scores",
    "output_logits",
    "output_attentions",
    "output_hidden_states",
    "tokenizer",
)


@dataclass
class _Ids:
    """What the sampler reads from a tokenizer, from the model's generation config (HF `generate` gets no
    tokenizer)."""

    pad_token_id: int | None
    eos_token_id: int | list[int] | None

    def batch_decode(self, rows, **kwargs):  # HF generate returns ids, not texts
        return [""] * len(rows)


def _setting(name, kwargs, generation_config, default=None):
    value = kwargs.pop(name, None)
    if value is None and generation_config is not None:
        value = getattr(generation_config, name, None)
    return default if value is None else value


def block_diffusion_generate(model, inputs: torch.Tensor | None = None, generation_config=None, **kwargs):
    """HF-style `generate` for a converted model: `BlockDiffusionSampler` on `input_ids` / `attention_mask`.

    Honours `max_new_tokens` (or `max_length`), `do_sample` / `temperature`, `eos_token_id`, `pad_token_id`, and
    the sampler's own `threshold`, `fallback`, `block_size`, `max_steps_per_block` (defaults: the sampler's) and
    `generator`. Refuses beams, logits processors, stopping criteria, streamers and assistant models with an error
    naming the sampler."""
    from .block_diffusion import BlockDiffusionSampler

    for name in _REFUSED:
        if kwargs.pop(name, None) not in (None, [], ()):
            raise ValueError(
                f"generate(..., {name}=...) is not supported on a block-diffusion model: decode with "
                "dgr2_trl.samplers.BlockDiffusionSampler (or model.generate without it)"
            )
    for name in _IGNORED:
        kwargs.pop(name, None)
    config = generation_config if generation_config is not None else getattr(model, "generation_config", None)
    num_beams = _setting("num_beams", kwargs, generation_config, 1)
    if num_beams != 1 or _setting("num_return_sequences", kwargs, generation_config, 1) != 1:
        raise ValueError(
            "beam search and num_return_sequences > 1 are not supported on a block-diffusion model: "
            "decode with dgr2_trl.samplers.BlockDiffusionSampler"
        )
    input_ids = kwargs.pop("input_ids", None) if inputs is None else inputs
    if input_ids is None:
        raise ValueError("generate needs input_ids (a (batch, length) tensor of token ids)")
    attention_mask = kwargs.pop("attention_mask", None)
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    max_new_tokens = _setting("max_new_tokens", kwargs, generation_config)
    max_length = kwargs.pop("max_length", None)
    if max_new_tokens is None:
        max_length = max_length or getattr(config, "max_length", None) or 20
        max_new_tokens = max_length - input_ids.shape[1]
    if max_new_tokens < 1:
        raise ValueError(
            f"nothing to generate: max_new_tokens={max_new_tokens} (prompt of {input_ids.shape[1]} tokens)"
        )
    do_sample = bool(_setting("do_sample", kwargs, config, False))
    temperature = float(_setting("temperature", kwargs, config, 1.0)) if do_sample else 0.0
    pad = _setting("pad_token_id", kwargs, config)
    eos = _setting("eos_token_id", kwargs, config)
    pad = pad if pad is not None else (eos if isinstance(eos, int) else (eos or [None])[0])
    if pad is None:
        raise ValueError("generate needs pad_token_id or eos_token_id (neither is in the model's generation config)")
    sampler_options = {
        k: kwargs.pop(k)
        for k in ("block_size", "threshold", "fallback", "max_steps_per_block")
        if kwargs.get(k) is not None
    }
    generator = kwargs.pop("generator", None)
    for name in ("top_k", "top_p", "min_p", "repetition_penalty"):
        value = kwargs.pop(name, None)
        if value is not None and do_sample:
            raise ValueError(f"{name} is not supported on a block-diffusion model (plain temperature sampling only)")
    unknown = sorted(k for k, v in kwargs.items() if v is not None)
    if unknown:
        raise ValueError(
            f"generate got arguments a block-diffusion model does not support: {unknown}; decode with "
            "dgr2_trl.samplers.BlockDiffusionSampler"
        )

    rows = [ids[mask.bool()].tolist() for ids, mask in zip(input_ids, attention_mask)]
    sampler = BlockDiffusionSampler(model, _Ids(pad, eos), **sampler_options)
    out = sampler.generate(rows, max_new_tokens=max_new_tokens, temperature=temperature, generator=generator)
    width = max(len(c) for c in out.completion_ids)
    completions = torch.full((len(rows), width), pad, dtype=input_ids.dtype, device=input_ids.device)
    for i, ids in enumerate(out.completion_ids):
        completions[i, : len(ids)] = torch.tensor(ids, dtype=input_ids.dtype)
    return torch.cat([input_ids, completions], dim=1)


def write_custom_generate(directory) -> Path:
    """Write transformers' custom-generation hook into a saved checkpoint's folder."""
    path = Path(directory) / CUSTOM_GENERATE_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(CUSTOM_GENERATE_SOURCE)
    return path


def _save_pretrained(self, save_directory, *args, **kwargs):
    type(self).save_pretrained(self, save_directory, *args, **kwargs)
    if kwargs.get("is_main_process", True):
        write_custom_generate(save_directory)


def install_block_generate(model):
    """Make `model.generate` decode blocks and `model.save_pretrained` keep it so (see the module docstring)."""
    model.generate = types.MethodType(block_diffusion_generate, model)
    model.save_pretrained = types.MethodType(_save_pretrained, model)
    return model
