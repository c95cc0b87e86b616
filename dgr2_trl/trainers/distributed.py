"""What the three trainers need to stay correct under DDP, DeepSpeed ZeRO and FSDP (and PEFT).

Two rules, as in TRL's own trainers:

* every forward that produces gradients runs *inside* the wrapper's forward (`through_wrapper`): DDP arms its
  gradient all-reduce there, FSDP and ZeRO-3 materialise the sharded parameters there. Our core calls the decoder
  and the LM head directly, so the whole loss computation is redirected into the wrapper's forward, like
  `trl.DistillationTrainer` does with `_ForwardRedirection`;
* rollouts decode with the unwrapped model (`generation_model`), under TRL's `unwrap_model_for_generation`
  (ZeRO-3: parameters gathered once for the whole rollout) and FSDP's full-parameter context.

The block sampler makes a data-dependent number of forward passes per rank. Where every forward is a collective
(ZeRO-3 without gathering, FSDP2 resharding after each module's forward) that would hang, so those parameters are
kept unsharded for the whole rollout instead.
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext

import torch
from trl.distributed import DistributedBackend
from trl.models.utils import _ForwardRedirection, unwrap_model_for_generation


_redirect = _ForwardRedirection()


def through_wrapper(trainer, model, method, *args, **kwargs):
    """`method(unwrapped_model, *args, **kwargs)`, run inside the forward of `model`'s DDP/FSDP/DeepSpeed wrapper.

    Also right without a wrapper (single process, FSDP2's in-place wrapping): `model(...)` then runs its hooks and
    the redirected method."""
    unwrapped = trainer.accelerator.unwrap_model(model)
    return _redirect(model, unwrapped, method, unwrapped, *args, **kwargs)


@contextmanager
def generation_model(trainer):
    """The unwrapped model, in eval mode and without grad, with full parameters for a whole rollout."""
    backend = DistributedBackend(trainer.accelerator)
    gather = getattr(trainer.args, "ds3_gather_for_generation", True)
    if backend.is_zero3 and not gather and trainer.accelerator.num_processes > 1:
        raise ValueError(
            "ds3_gather_for_generation=False is not supported: the block-diffusion sampler makes a different number "
            "of forward passes on each rank, and under ZeRO-3 without gathering each pass is a collective"
        )
    wrapped = trainer.model_wrapped
    with (
        unwrap_model_for_generation(
            wrapped,
            trainer.accelerator,
            gather_deepspeed3_params=gather,
            gradient_checkpointing_kwargs=getattr(trainer.args, "gradient_checkpointing_kwargs", None),
        ) as model,
        torch.no_grad(),
        backend.summon_full_params(wrapped, recurse=False),
        _fsdp2_unsharded(model) if backend.fsdp_version == 2 else nullcontext(),
    ):
        was_training = model.training
        model.eval()
        try:
            yield model
        finally:
            model.train(was_training)


@contextmanager
def _fsdp2_unsharded(model):
    """Keep every FSDP2 module unsharded during the rollout (one all-gather each, the same count on every rank),
    so the sampler's own forward passes need no collective. Untested here (no GPU): see examples/accelerate_configs.
    """
    from torch.distributed.fsdp import FSDPModule

    modules = [m for m in model.modules() if isinstance(m, FSDPModule)]
    for module in modules:
        module.set_reshard_after_forward(False, recurse=False)
        module.unshard()
    try:
        yield
    finally:
        for module in modules:
            # the root keeps its parameters between forward and backward anyway (FSDP2's default for the root)
            module.set_reshard_after_forward(module is not modules[0], recurse=False)
            module.reshard()
