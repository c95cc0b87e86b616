"""Trainer callbacks: `ValidRateCallback`, the valid-ranking rate of block-diffusion decoding at each evaluation."""

from __future__ import annotations

import itertools
import logging
import numbers

import torch
from datasets import Dataset
from transformers import TrainerCallback

from ..rewards.columns import check_candidates
from ..rewards.functions import validity_reward
from ..samplers import BlockDiffusionSampler
from ..samplers.common import check_threshold
from .distributed import generation_model


logger = logging.getLogger(__name__)

COLUMNS = ("prompt", "candidates")


def _check_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"ValidRateCallback: {name} must be an integer >= 1, got {value!r}")
    return int(value)


def _first_rows(dataset, n: int, name: str) -> dict[str, list] | None:
    """The `prompt` and `candidates` of the first `n` rows (None, with a warning, when a column is missing)."""
    if isinstance(dataset, Dataset):
        columns = dataset.column_names
        head = dataset.select(range(min(n, len(dataset))))
        rows = {c: list(head[c]) for c in COLUMNS} if set(COLUMNS) <= set(columns) else None
    else:  # an IterableDataset (or any iterable of row dicts): its first n rows
        head = list(itertools.islice(iter(dataset), n))
        columns = sorted(head[0]) if head else []
        rows = {c: [row[c] for row in head] for c in COLUMNS} if set(COLUMNS) <= set(columns) else None
    if rows is None:
        logger.warning(
            "ValidRateCallback needs the columns 'prompt' and 'candidates' in the %s, which has %s: no valid rate is "
            "logged for it",
            name,
            list(columns),
        )
        return None
    for i, candidates in enumerate(rows["candidates"]):  # a malformed column fails here, not at an evaluation
        check_candidates(candidates, i, f"ValidRateCallback ({name})")
    return rows


class ValidRateCallback(TrainerCallback):
    r"""
    A [`~transformers.TrainerCallback`] that logs the valid-ranking rate of block-diffusion decoding at each
    evaluation: the first `num_prompts` prompts of the evaluation dataset are decoded with
    [`~dgr2_trl.samplers.BlockDiffusionSampler`] (greedy, `threshold`) and scored with
    [`~dgr2_trl.rewards.validity_reward`] (1 when the answer is an exact permutation of the row's `candidates`, as
    `dgr2_trl.rewards.parse_ranking` checks it, else 0). The rate is the mean of those rewards, logged as
    `eval_valid_rate` (`{metric_key_prefix}_valid_rate`).

    Each process decodes its own share of the prompts (rows `rank, rank + world_size, ...`) with the unwrapped model
    (parameters gathered for the whole decoding under ZeRO-3 and FSDP); the counts are summed over processes with one
    collective, so every process logs the same rate.

    The rate is computed in `on_evaluate`, after the trainer has logged the evaluation loss, and reaches:
    * the dict `trainer.evaluate()` returns (so `metric_for_best_model="eval_valid_rate"` works, and callbacks added
      after this one see it in their `metrics`);
    * `trainer.state.log_history` and the reporting integrations, through `trainer.log`, as an entry of its own at the
      same step as the evaluation entry.

    Usage:
    ```python
    >>> from dgr2_trl.trainers import DiffusionSFTTrainer, ValidRateCallback

    >>> trainer = DiffusionSFTTrainer(model, args=args, train_dataset=train, eval_dataset=eval, processing_class=tok)
    >>> trainer.add_callback(ValidRateCallback(trainer, num_prompts=32, max_new_tokens=256))
    >>> trainer.train()  # each evaluation (eval_strategy) logs eval_valid_rate
    >>> trainer.evaluate()["eval_valid_rate"]
    ```

    Args:
        trainer (`Trainer`):
            Trainer the callback is attached to, holding a block-diffusion model (e.g. a `DiffusionSFTTrainer`).
            Its `accelerator`, wrapped model and `processing_class` are used for decoding.
        dataset (`Dataset`, `IterableDataset` or `dict` of them, *optional*):
            Rows to decode, with a `prompt` column (text or chat messages) and a `candidates` column (the candidate
            ids). Defaults to the trainer's evaluation dataset. The first `num_prompts` rows are taken once, here; a
            dataset passed to `trainer.evaluate(eval_dataset=...)` is not seen. With a dict (as for several
            evaluation datasets), the evaluation of the dataset `name` (metric prefix `eval_name`) decodes
            `dataset[name]` and logs `eval_name_valid_rate`. A dataset without the two columns is skipped with a
            warning: nothing is logged for it.
        num_prompts (`int`, *optional*, defaults to `16`):
            Prompts decoded at each evaluation (all rows of a smaller dataset).
        max_new_tokens (`int`, *optional*, defaults to `256`):
            Decoding budget per prompt.
        threshold (`float`, *optional*, defaults to `0.9`):
            Confidence threshold of the block sampler.
        batch_size (`int`, *optional*, defaults to `16`):
            Prompts decoded together on each process.
    """

    def __init__(
        self,
        trainer,
        dataset=None,
        num_prompts: int = 16,
        max_new_tokens: int = 256,
        threshold: float = 0.9,
        batch_size: int = 16,
    ):
        self.trainer = trainer
        self.num_prompts = _check_int("num_prompts", num_prompts)
        self.max_new_tokens = _check_int("max_new_tokens", max_new_tokens)
        self.batch_size = _check_int("batch_size", batch_size)
        try:
            self.threshold = check_threshold(threshold)
        except ValueError:
            raise ValueError(f"ValidRateCallback: threshold must be a number in [0, 1], got {threshold!r}") from None
        dataset = trainer.eval_dataset if dataset is None else dataset
        if dataset is None:
            raise ValueError(
                "ValidRateCallback needs rows to decode: give the trainer an eval_dataset, or pass dataset=..."
            )
        self.by_name = isinstance(dataset, dict)
        if self.by_name:
            self.rows = {
                name: _first_rows(d, self.num_prompts, f"evaluation dataset {name!r}") for name, d in dataset.items()
            }
        else:
            self.rows = _first_rows(dataset, self.num_prompts, "evaluation dataset")
        self._unmatched: set[str] = set()

    def _rows_for(self, prefix: str) -> dict[str, list] | None:
        if not self.by_name:
            return self.rows
        # Trainer.evaluate names the metrics of the dataset `name` f"{metric_key_prefix}_{name}"
        names = sorted((n for n in self.rows if prefix.endswith(f"_{n}")), key=len)
        if not names:
            if prefix not in self._unmatched:
                self._unmatched.add(prefix)
                logger.warning(
                    "ValidRateCallback: the evaluation %r matches none of the datasets %s; no valid rate logged",
                    prefix,
                    list(self.rows),
                )
            return None
        return self.rows[names[-1]]

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        # Trainer.evaluate adds `{metric_key_prefix}_runtime` to every evaluation's metrics
        runtime = next((k for k in (metrics or {}) if k.endswith("_runtime")), "eval_runtime")
        prefix = runtime[: -len("_runtime")]
        rows = self._rows_for(prefix)
        if rows is None:
            return
        rate = self.valid_rate(rows)
        if metrics is not None:
            metrics[f"{prefix}_valid_rate"] = rate
        self.trainer.log({f"{prefix}_valid_rate": rate})

    @torch.no_grad()
    def valid_rate(self, rows: dict[str, list]) -> float:
        """Mean `validity_reward` of the block-diffusion decodings of `rows` (each process decodes its share, the
        counts are summed over processes)."""
        accelerator = self.trainer.accelerator
        share = range(accelerator.process_index, len(rows["prompt"]), accelerator.num_processes)
        prompts = [rows["prompt"][i] for i in share]
        candidates = [rows["candidates"][i] for i in share]
        valid = 0.0
        # every process enters the context (under ZeRO-3 / FSDP it gathers the parameters: a collective)
        with generation_model(self.trainer) as model:
            sampler = BlockDiffusionSampler(model, self.trainer.processing_class, threshold=self.threshold)
            for start in range(0, len(prompts), self.batch_size):
                chunk = slice(start, start + self.batch_size)
                texts = sampler.generate(prompts[chunk], max_new_tokens=self.max_new_tokens).texts
                valid += sum(validity_reward(prompts=prompts[chunk], completions=texts, candidates=candidates[chunk]))
        counts = torch.tensor([valid, float(len(prompts))], device=accelerator.device)
        valid, total = accelerator.reduce(counts, reduction="sum").tolist()
        return valid / total if total else float("nan")
