"""The private TRL and transformers symbols dgr2_trl builds on, checked once when `dgr2_trl.trainers` is imported.

Our trainers override and call TRL methods that are not public API (`_generate_and_score_completions`, ...). A TRL
release that renames one, or changes its parameters, would otherwise fail deep inside training, or worse, leave one
of our overrides silently unused. `check_private_symbols` turns that into one `IncompatibleTRLError` at import,
naming the symbol and the tested version. The checks only read attributes and signatures: nothing is built.

Not checked here, because they only exist on instances (set in the trainers' `__init__`): `_metrics`,
`_total_train_tokens`, `_signature_columns`, `_tokenizer`, `_forward_redirection` (DistillationTrainer),
`DistributedBackend.fsdp_version` and `PreTrainedConfig._name_or_path`. A rename there fails at first use with an
`AttributeError` that names the attribute.
"""

from __future__ import annotations

import importlib
import inspect
import types
import typing
from dataclasses import dataclass
from importlib.metadata import version


# The minor series the test suite runs on; pyproject.toml pins the same ranges (tests/test_compat.py checks both).
TESTED_VERSIONS = {"trl": "1.16", "transformers": "5.24"}


class IncompatibleTRLError(ImportError):
    """An installed TRL (or transformers) lacks, or changed, a private symbol dgr2_trl relies on."""


@dataclass(frozen=True)
class Requirement:
    owner: str  # "module" or "module:Class"
    name: str
    params: tuple[str, ...] | None = None  # the signature starts with these (we override it or call it positionally)
    accepts: tuple[str, ...] = ()  # it takes one of these keywords (alternatives: a name changed across versions)
    returns: int | None = None  # the tuple arity of its annotated return: TRL unpacks our override's result
    uses: str | None = None  # a name its code refers to (e.g. a nested function we recognise by name)

    def __str__(self) -> str:
        where = f"{self.owner.replace(':', '.')}.{self.name}"
        if self.params is not None:
            return f"{where}({', '.join(self.params)})"
        if self.accepts:
            return f"{where}(..., {' or '.join(self.accepts)}=...)"
        if self.uses:
            return f"{where} (its {self.uses})"
        return where


REQUIREMENTS = (
    # DiffusionGRPOTrainer: the rollout hook, the batch wrapper, trajectory-replay log-probs
    Requirement("trl:GRPOTrainer", "__init__", accepts=("rollout_func",)),  # experimental in TRL
    Requirement("trl:GRPOTrainer", "_generate_and_score_completions", params=("self", "inputs")),
    Requirement("trl:GRPOTrainer", "_compute_loss", params=("self", "model", "inputs")),
    Requirement(
        "trl:GRPOTrainer",
        "_get_per_token_logps_and_entropies",
        params=("self", "model", "input_ids", "attention_mask", "logits_to_keep", "batch_size", "compute_entropy"),
        returns=3,
    ),
    # DiffusionSFTTrainer: dataset preparation, the noise key kept through `remove_unused_columns`, and the fused
    # LM head it removes from a model copied after an earlier SFTTrainer patched it
    Requirement(
        "trl:SFTTrainer",
        "_prepare_dataset",
        params=("self", "dataset", "processing_class", "args", "packing", "formatting_func", "dataset_name"),
    ),
    Requirement("trl:SFTTrainer", "_set_signature_columns_if_needed", params=("self",)),
    Requirement("trl.trainer.utils", "add_fused_lm_head", uses="_fused_forward"),
    # OnPolicyDistillTrainer: the generation seam
    Requirement("trl:DistillationTrainer", "_generate_and_score_completions", params=("self", "inputs")),
    # model-card tags and names, which TRL's `create_model_card` reads from the class
    Requirement("trl:GRPOTrainer", "_tag_names"),
    Requirement("trl:SFTTrainer", "_tag_names"),
    Requirement("trl:SFTTrainer", "_name"),
    Requirement("trl:DistillationTrainer", "_tag_names"),
    Requirement("trl:DistillationTrainer", "_name"),
    # trainers/distributed.py and modeling/pretrained.py: helpers from TRL's internal modules
    Requirement(
        "trl.models.utils:_ForwardRedirection",
        "__call__",
        params=("self", "wrapper_module", "original_module", "method"),
    ),
    Requirement(
        "trl.models.utils",
        "unwrap_model_for_generation",
        params=(
            "model",
            "accelerator",
            "gather_deepspeed3_params",
            "generation_kwargs",
            "gradient_checkpointing_kwargs",
        ),
    ),
    Requirement("trl.distributed:DistributedBackend", "__init__", params=("self", "accelerator")),
    Requirement("trl.distributed:DistributedBackend", "is_zero3"),
    Requirement("trl.distributed:DistributedBackend", "summon_full_params", params=("self", "module")),
    Requirement("trl.trainer.utils", "create_model_from_path", params=("model_id", "architecture")),
    Requirement("trl.trainer.utils", "pad", params=("tensors", "padding_value", "padding_side")),
    # transformers: the attention backend (which mask form it honours) and the decoder's cache keyword
    Requirement("transformers:PreTrainedConfig", "_attn_implementation"),
    *(
        Requirement(f"transformers:{decoder}", "forward", accepts=("cache", "past_key_values"))
        for decoder in ("LlamaModel", "Qwen2Model", "Qwen3Model")
    ),
)


def _resolve(owner: str):
    module, _, cls = owner.partition(":")
    obj = importlib.import_module(module)
    return getattr(obj, cls) if cls else obj


def _code_names(code: types.CodeType) -> set[str]:
    """The names a function's code refers to, nested functions (and their names) included."""
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= {const.co_name} | _code_names(const)
    return names


def _problem(requirement: Requirement) -> str | None:
    """What the installed package lacks of `requirement`, or None when it has it all."""
    try:
        target = getattr(_resolve(requirement.owner), requirement.name)
    except (ImportError, AttributeError):
        return "does not have"
    if requirement.uses is not None:
        code = getattr(target, "__code__", None)
        return None if code is not None and requirement.uses in _code_names(code) else "has without it"
    if requirement.params is None and not requirement.accepts:
        return None
    try:
        signature = inspect.signature(target)
    except (TypeError, ValueError):
        return "has, but not as a function"
    names = list(signature.parameters)
    if requirement.params is not None and tuple(names[: len(requirement.params)]) != requirement.params:
        return f"has as {target.__name__}({', '.join(names)})"
    if requirement.accepts and not set(requirement.accepts) & set(names):
        return f"has as {target.__name__}({', '.join(names)})"
    annotation = signature.return_annotation
    # an unannotated (or string) return tells nothing, and is not an error
    if requirement.returns is not None and typing.get_origin(annotation) is tuple:
        if len(typing.get_args(annotation)) != requirement.returns:
            return f"has returning {annotation}, not a {requirement.returns}-tuple"
    return None


def check_private_symbols(requirements=REQUIREMENTS) -> None:
    """Raise `IncompatibleTRLError` listing every requirement the installed TRL / transformers does not meet."""
    messages = []
    for requirement in requirements:
        problem = _problem(requirement)
        if problem is not None:
            package = requirement.owner.split(".")[0].split(":")[0]
            tested = TESTED_VERSIONS[package]
            messages.append(
                f"dgr2_trl relies on {requirement}, which {package} {version(package)} {problem} (tested with "
                f"{package} {tested}.x); pin {package} to the tested range in pyproject.toml ({package}=={tested}.*)"
            )
    if messages:
        raise IncompatibleTRLError("\n".join(messages))
