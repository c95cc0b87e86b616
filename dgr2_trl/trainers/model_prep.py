"""The one way every trainer turns its `model` argument into a block-diffusion model: `prepare_block_diffusion_model`.

CFT (`DiffusionSFTTrainer`), OPD (`OnPolicyDistillTrainer`) and RL (`DiffusionGRPOTrainer`) all accept an AR causal
LM or an already converted one, as an object or as a local path, and call this before handing the model to their TRL
base; so the same AR model comes out of each of them with the same block settings.
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, replace

from transformers import AutoTokenizer

from ..modeling.conversion import (
    CONFIG_KEY,
    DEFAULT_BLOCK_SIZE,
    DEFAULT_MASK_TOKEN,
    BlockDiffusionSettings,
    _check_block_size,
    _mask_token_id,
    convert_to_block_diffusion,
    ensure_custom_mask_support,
    get_block_diffusion_settings,
)
from ..modeling.pretrained import load_causal_lm, load_tokenizer, make_dense


logger = logging.getLogger(__name__)


def _is_peft(model) -> bool:
    try:
        from peft import PeftModel
    except ImportError:  # pragma: no cover - peft is a dependency
        return False
    return isinstance(model, PeftModel)


def is_model_path(model) -> bool:
    """Whether a trainer's `model` argument is a path (loaded by `prepare_block_diffusion_model`), not a model."""
    return isinstance(model, (str, os.PathLike))


def trainer_model_init_kwargs(args) -> dict:
    """The keyword arguments a trainer loads its model path with: `args.model_init_kwargs` (copied) with the
    defaults TRL's own trainers add, `trust_remote_code=args.trust_remote_code` and, under multi-GPU or DeepSpeed
    training, `device_map=None` (`"auto"` would spread each process's copy over all GPUs)."""
    kwargs = dict(args.model_init_kwargs or {})
    if args.distributed_state.distributed_type in ("MULTI_GPU", "DEEPSPEED"):
        kwargs["device_map"] = None
    kwargs.setdefault("trust_remote_code", args.trust_remote_code)
    return kwargs


def prepare_block_diffusion_model(
    model,
    tokenizer=None,
    *,
    block_size: int | None = None,
    mask_token: str | None = None,
    model_init_kwargs: dict | None = None,
) -> tuple:
    r"""
    Load, convert or check a model so that it is a block-diffusion model with the asked settings; what every trainer
    calls on its `model` argument before its TRL base sees it. Uses no trainer state.

    Args:
        model (`str`, `os.PathLike`, [`~transformers.PreTrainedModel`] or `peft.PeftModel`):
            An AR causal LM or a converted one. A path (a local folder, a `.gguf` file or `"smollm2"`) is loaded
            dense with [`~dgr2_trl.modeling.pretrained.load_causal_lm`] (TRL's `create_model_from_path` for a
            folder); a model object is made dense in place ([`~dgr2_trl.modeling.pretrained.make_dense`]). A PEFT
            model must already be converted: an AR one is refused (convert the base model before wrapping it, or
            give the trainer the base model with a `peft_config`).
        tokenizer ([`~transformers.PreTrainedTokenizerBase`] or [`~transformers.ProcessorMixin`], *optional*):
            The model's tokenizer (or a processor holding it). `None`: loaded from the path, or from
            `model.config._name_or_path` for a model object. The mask token is added to it when new.
        block_size (`int`, *optional*):
            Block size to convert an AR model with (`None`: `DEFAULT_BLOCK_SIZE`). On a converted model, another
            block size is stored in its config instead of its own, with a warning; `None` keeps its own.
        mask_token (`str`, *optional*):
            Mask token to convert an AR model with (`None`: `DEFAULT_MASK_TOKEN`). On a converted model it must be
            the model's own (`None` keeps it): a converted model cannot change its mask token.
        model_init_kwargs (`dict`, *optional*):
            Keyword arguments of `load_causal_lm` when `model` is a path (`dtype`, `attn_implementation`,
            `gguf_file`, `device_map`, ...); ignored for a model object.

    Returns:
        `tuple`: `(model, tokenizer, settings)`: the block-diffusion model (the object given, or the one loaded),
        the tokenizer (the object given, or the one loaded), and the model's
        [`~dgr2_trl.modeling.BlockDiffusionSettings`].

    Raises:
        `ValueError`: for an AR PEFT model; a mask token other than a converted model's; a tokenizer that maps the
            mask token to another id than the model was converted with; an attention backend that ignores the
            block-causal mask (the model would silently train and decode causally); a bad block size or mask token.

    Example:

    ```python
    >>> from dgr2_trl.modeling import tiny_causal_lm
    >>> from dgr2_trl.tokenization import train_chat_tokenizer
    >>> from dgr2_trl.trainers import prepare_block_diffusion_model

    >>> tokenizer = train_chat_tokenizer(["the quick brown fox jumps over the lazy dog"] * 20, vocab_size=300)
    >>> model, tokenizer, settings = prepare_block_diffusion_model(
    ...     tiny_causal_lm(len(tokenizer) + 1), tokenizer, block_size=4
    ... )
    >>> settings.block_size, settings.mask_token
    (4, '<|mask|>')
    ```
    """
    if block_size is not None:
        _check_block_size(block_size)
    if is_model_path(model):
        path = os.fspath(model)
        init_kwargs = dict(model_init_kwargs or {})
        if tokenizer is None:
            tokenizer = load_tokenizer(path, gguf_file=init_kwargs.get("gguf_file"))
        model = load_causal_lm(path, **init_kwargs)
    else:
        model = make_dense(model)  # a GGUF-loaded model keeps a quantizer marker that blocks training
        if tokenizer is None:
            tokenizer = AutoTokenizer.from_pretrained(model.config._name_or_path)
    text_tokenizer = getattr(tokenizer, "tokenizer", tokenizer)  # a processor's tokenizer
    settings = get_block_diffusion_settings(model)
    if settings is None:
        if _is_peft(model):
            raise ValueError(
                "the PEFT model is not a block-diffusion model: convert the base model with "
                "convert_to_block_diffusion before wrapping it, or pass the base model with `peft_config`"
            )
        convert_to_block_diffusion(
            model,
            text_tokenizer,
            block_size=DEFAULT_BLOCK_SIZE if block_size is None else block_size,
            mask_token=DEFAULT_MASK_TOKEN if mask_token is None else mask_token,
        )
    else:
        _reconcile(model, text_tokenizer, settings, block_size, mask_token)
    # conversion probes the model it converts; a converted PEFT model is not converted again, and a converted
    # checkpoint may run a backend that ignores the block mask (training and rollouts would silently be causal)
    ensure_custom_mask_support(model)
    return model, tokenizer, get_block_diffusion_settings(model)


def _reconcile(model, tokenizer, settings: BlockDiffusionSettings, block_size, mask_token) -> None:
    """A converted model against the asked settings: the mask token must match, the tokenizer must map it to the
    model's id (it is added to a tokenizer without it), another block size is re-stored (with a warning)."""
    if mask_token is not None and mask_token != settings.mask_token:
        raise ValueError(
            f"the model was converted with mask_token {settings.mask_token!r} but the config asks for "
            f"{mask_token!r}; leave mask_token=None to keep the model's"
        )
    if block_size is not None and block_size != settings.block_size:
        logger.warning(
            "the model was converted with block_size=%d; training (and storing) block_size=%d instead",
            settings.block_size,
            block_size,
        )
    _mask_token_id(tokenizer, settings.mask_token)  # registers the mask token with a tokenizer that lacks it
    mask_id = tokenizer.convert_tokens_to_ids(settings.mask_token)
    if mask_id != settings.mask_token_id:  # checked before the model is touched
        raise ValueError(
            f"the tokenizer maps the mask token {settings.mask_token!r} to {mask_id}, but the model was converted "
            f"with id {settings.mask_token_id}; pass the tokenizer saved with the converted model"
        )
    if not _is_peft(model):  # re-stores the block size (and re-installs the block `generate`)
        convert_to_block_diffusion(
            model,
            tokenizer,
            block_size=settings.block_size if block_size is None else block_size,
            mask_token=settings.mask_token,
        )
    elif block_size is not None:  # the wrapped base model's config (its embeddings and `generate` stay as they are)
        setattr(model.config, CONFIG_KEY, asdict(replace(settings, block_size=block_size)))
