"""Checks the trainers run at construction, so bad input fails there with an error that names it, not at the first
step with a raw TypeError or KeyError (or, worse, not at all). The rollout settings of the OPD and GRPO configs are
checked by their shared `BlockRolloutArguments` (rollout_config.py)."""

from __future__ import annotations

import math

from datasets import Dataset

from ..samplers.common import encode_prompts


# prompts tokenised per call when their lengths are checked
_CHUNK = 512


def check_padding_tokens(tokenizer, eos_token: str | None = None) -> None:
    """Refuse a tokenizer with neither a pad token nor an eos token (`eos_token`: an override the trainer will set,
    e.g. `SFTConfig.eos_token`): rollouts and batches are padded with the pad token, or EOS without one."""
    tokenizer = getattr(tokenizer, "tokenizer", tokenizer)
    if tokenizer.pad_token_id is None and tokenizer.eos_token_id is None and eos_token is None:
        raise ValueError(
            f"the tokenizer ({type(tokenizer).__name__}) has neither a pad token nor an eos token: sequences are "
            "padded with the pad token (the eos token without one) and completions end with the eos token; set "
            "tokenizer.pad_token and tokenizer.eos_token to tokens of its vocabulary"
        )


def named_datasets(dataset, name: str) -> dict:
    """`{name: dataset}` for one dataset, the dict itself for a dict of datasets; None entries left out."""
    if isinstance(dataset, dict):
        return {f"{name}[{key!r}]": value for key, value in dataset.items() if value is not None}
    return {} if dataset is None else {name: dataset}


def column_names(dataset) -> list[str]:
    names = getattr(dataset, "column_names", None)
    if names is None:  # an IterableDataset whose features are unknown until a row is read
        first = next(iter(dataset), None)
        names = [] if first is None else list(first.keys())
    return list(names)


def check_prompt_column(datasets: dict) -> None:
    """Rollouts decode the `prompt` column; without one TRL fails with a KeyError at the first step."""
    for name, dataset in datasets.items():
        columns = column_names(dataset)
        if "prompt" not in columns:
            raise ValueError(
                f"the {name} dataset needs a 'prompt' column (text, chat messages or token ids) to decode rollouts "
                f"from; it has columns {columns}"
            )


def max_positions(model) -> int | None:
    config = model.config
    if hasattr(config, "get_text_config"):
        config = config.get_text_config()
    return getattr(config, "max_position_embeddings", None)


def check_prompt_lengths(model, tokenizer, datasets: dict, max_completion_length: int, block_size: int) -> None:
    """Refuse prompts that, with the rollout budget, do not fit the model's `max_position_embeddings`.

    The sampler reserves whole blocks (`ceil(max_completion_length / block_size) * block_size` positions) and would
    refuse such a prompt at the first step that draws it, naming only its place in the batch; here every prompt of
    a map-style dataset is tokenised once (as the sampler does) and the first offending row is named. Streamed
    datasets are left to the sampler."""
    limit = max_positions(model)
    if limit is None:
        return
    reserved = math.ceil(max_completion_length / block_size) * block_size
    budget = (
        f"max_completion_length={max_completion_length} (rollouts reserve {reserved} positions: whole blocks "
        f"of {block_size})"
    )
    if reserved >= limit:
        raise ValueError(
            f"{budget} leaves no room for a prompt within the model's max_position_embeddings={limit}; "
            "lower max_completion_length"
        )
    for name, dataset in datasets.items():
        if not isinstance(dataset, Dataset) or "prompt" not in dataset.column_names:
            continue
        for start in range(0, len(dataset), _CHUNK):
            prompts = dataset[start : start + _CHUNK]["prompt"]
            try:
                _, mask = encode_prompts(tokenizer, prompts)
            except ValueError:
                _raise_for_unreadable_row(tokenizer, prompts, start, name)
                raise
            lengths = mask.sum(-1)
            too_long = (lengths + reserved > limit).nonzero()
            if too_long.numel():
                row = int(too_long[0])
                raise ValueError(
                    f"row {start + row} of the {name} dataset has a prompt of {int(lengths[row])} tokens; with "
                    f"{budget} that exceeds the model's max_position_embeddings={limit}: shorten or drop the prompt, "
                    "or lower max_completion_length"
                )


def _raise_for_unreadable_row(tokenizer, prompts, start: int, name: str) -> None:
    """Re-encode a chunk row by row to name the dataset row the sampler cannot encode."""
    for offset, prompt in enumerate(prompts):
        try:
            encode_prompts(tokenizer, [prompt])
        except ValueError as error:
            message = f"row {start + offset} of the {name} dataset: its prompt cannot be encoded ({error})"
            raise ValueError(message) from error
