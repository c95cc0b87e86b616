"""What the training examples share: the data argument, the offline tokenizer and small model used when no
`--model_name_or_path` is given, model loading from `ModelConfig`, and the device defaults. Not a script itself.

The examples import it as a sibling module (`python examples/<script>.py` and `accelerate launch` put this folder
first on `sys.path`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from datasets import Dataset, DatasetDict, load_dataset, load_from_disk
from trl import ModelConfig, ScriptArguments

from dgr2_trl.data import RerankData, build_rerank_datasets, train_rerank_tokenizer
from dgr2_trl.data.loading import SEQUENCES_FILE
from dgr2_trl.modeling import tiny_causal_lm
from dgr2_trl.modeling.pretrained import load_causal_lm, load_tokenizer
from dgr2_trl.tokenization import train_chat_tokenizer


DATA_FILE_BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv"}
# item-id tokens such as `<i_12>` (single) or `<a_3><b_7>` (semantic) in the `candidates` column of a loaded dataset
_ID_TOKEN = re.compile(r"<[^<>\s]+>")


@dataclass
class RerankScriptArguments(ScriptArguments):
    """TRL's `ScriptArguments`, with `--dataset_name` taking local re-ranking data, plus the data build and the small
    model built when no `--model_name_or_path` is given."""

    dataset_name: str | None = field(
        default=None,
        metadata={
            "help": "Local re-ranking data: a folder in the two-file format (sequential_data_int.txt + "
            "items.tsv, built into train/validation/test), a saved dataset (`save_to_disk`), or a "
            ".json/.jsonl/.parquet/.csv file or folder of such files. None: the bundled Amazon Beauty data. "
            "Nothing is fetched from the Hub."
        },
    )
    dataset_test_split: str = field(
        default="validation", metadata={"help": "Split evaluated on (a missing split: no evaluation)."}
    )
    id_scheme: str = field(
        default="single", metadata={"help": "Item ids of a built dataset: semantic, single, plain or slot."}
    )
    max_train_queries: int | None = field(default=256, metadata={"help": "Training queries (None: all)."})
    max_eval_queries: int | None = field(default=64, metadata={"help": "Evaluation queries (None: all)."})
    hidden_size: int = field(default=128, metadata={"help": "Hidden size of the model built from a config."})
    num_layers: int = field(default=2, metadata={"help": "Layers of the model built from a config."})
    vocab_size: int = field(default=2000, metadata={"help": "BPE vocabulary of the offline tokenizer."})


@dataclass
class RerankDatasets:
    """The splits an example trains and evaluates on; `built` is the `RerankData` when they were built here."""

    train: Dataset
    eval: Dataset | None
    built: RerankData | None = None


def device_defaults() -> dict:
    """`use_cpu` without a GPU and bf16 only where the GPU has it (TRL's configs default to bf16, which a CPU-only
    machine refuses unless told to use the CPU)."""
    cuda = torch.cuda.is_available()
    return {"use_cpu": not cuda, "bf16": cuda and torch.cuda.is_bf16_supported()}


def _is_sequence_folder(path: Path) -> bool:
    return path.is_dir() and any((path / name).is_file() for name in (SEQUENCES_FILE, f"{SEQUENCES_FILE}.gz"))


def _is_saved_dataset(path: Path) -> bool:
    return path.is_dir() and ((path / "dataset_dict.json").is_file() or (path / "state.json").is_file())


def _load_local(name: str) -> dict[str, Dataset]:
    """The splits of a saved dataset or of local data files."""
    path = Path(name)
    if not path.exists():
        raise FileNotFoundError(
            f"--dataset_name {name!r} does not exist; expected a local folder in the two-file format "
            f"({SEQUENCES_FILE} + items.tsv), a saved dataset (`save_to_disk`), or a "
            f"{'/'.join(DATA_FILE_BUILDERS)} file or folder (nothing is fetched from the Hub: save a Hub dataset "
            f"with `load_dataset(...).save_to_disk(folder)` first)"
        )
    if _is_saved_dataset(path):
        loaded = load_from_disk(str(path))
    elif path.is_file():
        if path.suffix not in DATA_FILE_BUILDERS:
            raise ValueError(
                f"--dataset_name {name!r}: expected a {'/'.join(DATA_FILE_BUILDERS)} file, got a "
                f"{path.suffix or 'suffix-less'} file"
            )
        loaded = load_dataset(DATA_FILE_BUILDERS[path.suffix], data_files=str(path))
    else:
        loaded = load_dataset(str(path))
    if isinstance(loaded, Dataset):
        return {"train": loaded}
    if not isinstance(loaded, DatasetDict):
        raise ValueError(f"--dataset_name {name!r}: expected a Dataset or DatasetDict, got {type(loaded).__name__}")
    return dict(loaded)


def _first(dataset: Dataset | None, limit: int | None) -> Dataset | None:
    return dataset if dataset is None or limit is None else dataset.select(range(min(limit, len(dataset))))


def load_rerank_datasets(script_args: RerankScriptArguments, seed: int = 0) -> RerankDatasets:
    """Build the re-ranking datasets from the bundled data or a two-file folder, or load a local dataset.

    The training split is `--dataset_train_split`, the evaluation split `--dataset_test_split` (None if absent); a
    loaded dataset keeps its first `max_train_queries` / `max_eval_queries` rows, a built one a seeded subset."""
    name = script_args.dataset_name
    if script_args.dataset_streaming:
        raise ValueError(
            "--dataset_streaming is not supported by these examples: they index the datasets "
            "(subsets, tokenizer training); pass a local dataset without it"
        )
    if name is None or _is_sequence_folder(Path(name)):
        built = build_rerank_datasets(
            name, id_scheme=script_args.id_scheme, max_train_queries=script_args.max_train_queries,
            max_eval_queries=script_args.max_eval_queries, seed=seed,
        )  # fmt: skip
        splits = {"train": built.train, "validation": built.validation, "test": built.test}
    else:
        built, splits = None, _load_local(name)
    if script_args.dataset_train_split not in splits:
        raise ValueError(
            f"--dataset_train_split {script_args.dataset_train_split!r} is not a split of "
            f"{name or 'the bundled data'!r}; its splits are {sorted(splits)}"
        )
    train, evaluation = splits[script_args.dataset_train_split], splits.get(script_args.dataset_test_split)
    if built is None:
        train = _first(train, script_args.max_train_queries)
        evaluation = _first(evaluation, script_args.max_eval_queries)
    return RerankDatasets(train, evaluation, built)


def _texts(value) -> list[str]:
    """The text of a prompt or completion: a string or a list of chat messages."""
    if isinstance(value, str):
        return [value]
    return [m["content"] for m in value or [] if isinstance(m, dict) and isinstance(m.get("content"), str)]


def offline_tokenizer(data: RerankDatasets, vocab_size: int):
    """A byte-level BPE trained on the data at hand, with the item-id tokens registered (never split)."""
    if data.built is not None:
        return train_rerank_tokenizer(data.built, vocab_size=vocab_size)
    rows = data.train.select(range(min(2000, len(data.train))))
    texts, tokens = [], set()
    for row in rows:
        texts += _texts(row.get("prompt")) + _texts(row.get("completion"))
        for candidate in row.get("candidates") or []:
            tokens.update(_ID_TOKEN.findall(str(candidate)))
    return train_chat_tokenizer(texts, vocab_size=vocab_size, extra_special_tokens=sorted(tokens))


def _torch_dtype(dtype: str | None) -> torch.dtype:
    return torch.float32 if dtype in (None, "auto") else getattr(torch, dtype)


def small_model(tokenizer, script_args: RerankScriptArguments, model_args: ModelConfig, seed: int = 0, **kwargs):
    """A randomly initialised Qwen3 of `--hidden_size` x `--num_layers`, in `--dtype`, with one spare embedding row
    (for the mask token a block-diffusion conversion adds)."""
    return tiny_causal_lm(
        len(tokenizer) + 1, hidden_size=script_args.hidden_size, num_layers=script_args.num_layers,
        intermediate_size=4 * script_args.hidden_size, pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id, dtype=_torch_dtype(model_args.dtype), seed=seed,
        attn_implementation=model_args.attn_implementation or "sdpa", **kwargs,
    )  # fmt: skip


def model_init_kwargs(model_args: ModelConfig, extra: dict | None = None) -> dict:
    """`load_causal_lm` keyword arguments from `--dtype` and `--attn_implementation`, updated with `extra` (a
    config's `model_init_kwargs`, e.g. `{"gguf_file": ...}`)."""
    if model_args.load_in_4bit or model_args.load_in_8bit:
        raise ValueError(
            "--load_in_4bit / --load_in_8bit are not supported by these examples: the block-diffusion "
            "trainers need dense weights (use --use_peft for parameter-efficient training)"
        )
    kwargs = {"dtype": model_args.dtype}
    if model_args.attn_implementation is not None:
        kwargs["attn_implementation"] = model_args.attn_implementation
    return {**kwargs, **(extra or {})}


def load_pretrained(name_or_path: str, kwargs: dict):
    """(model, tokenizer) from a local folder, a .gguf file or "smollm2", through `load_causal_lm`."""
    model = load_causal_lm(name_or_path, **kwargs)
    return model, load_tokenizer(name_or_path, gguf_file=kwargs.get("gguf_file"))


def load_model_and_tokenizer(
    model_args: ModelConfig,
    training_args,
    data: RerankDatasets,
    script_args: RerankScriptArguments,
    **small_model_kwargs,
):
    """`--model_name_or_path` loaded with `--dtype` / `--attn_implementation` (and the config's `model_init_kwargs`,
    consumed here), or, without it, a small model from a config and an offline tokenizer."""
    if model_args.model_name_or_path:
        kwargs = model_init_kwargs(model_args, training_args.model_init_kwargs)
        training_args.model_init_kwargs = None  # consumed: the trainer gets a model object
        return load_pretrained(model_args.model_name_or_path, kwargs)
    tokenizer = offline_tokenizer(data, script_args.vocab_size)
    return small_model(tokenizer, script_args, model_args, seed=training_args.seed, **small_model_kwargs), tokenizer
