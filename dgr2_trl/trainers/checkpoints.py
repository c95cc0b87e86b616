"""Resuming only from complete checkpoints.

`Trainer._save_checkpoint` writes the weights, then the optimizer, scheduler and RNG states, and `trainer_state.json`
last. A run killed during a save therefore leaves a `checkpoint-N` folder without `trainer_state.json` (or with a
truncated one), and `transformers.trainer_utils.get_last_checkpoint` picks it by its number alone, so
`train(resume_from_checkpoint=True)` then fails inside the load. The mixin below skips such folders (with a
warning) when it picks the last checkpoint, and refuses one named explicitly with a message saying what is missing.
"""

from __future__ import annotations

import json
import logging
import os
import re

from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from transformers.utils import (
    ADAPTER_SAFE_WEIGHTS_NAME,
    ADAPTER_WEIGHTS_NAME,
    SAFE_WEIGHTS_INDEX_NAME,
    SAFE_WEIGHTS_NAME,
    WEIGHTS_INDEX_NAME,
    WEIGHTS_NAME,
)


logger = logging.getLogger(__name__)

TRAINER_STATE_NAME = "trainer_state.json"
_WEIGHT_FILES = {
    SAFE_WEIGHTS_NAME,
    SAFE_WEIGHTS_INDEX_NAME,
    WEIGHTS_NAME,
    WEIGHTS_INDEX_NAME,
    ADAPTER_SAFE_WEIGHTS_NAME,
    ADAPTER_WEIGHTS_NAME,
}
_CHECKPOINT = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")
_DEEPSPEED_STATE = re.compile(r"^global_step\d+$")


def _holds_weights(path: str) -> bool:
    """Model weights in any layout Trainer saves: full or sharded, a PEFT adapter (also one per sub-folder), FSDP
    state, or a DeepSpeed `global_stepN` folder."""
    for entry in os.listdir(path):
        full = os.path.join(path, entry)
        if entry in _WEIGHT_FILES or entry.startswith("pytorch_model_fsdp"):
            return True
        if os.path.isdir(full) and (_DEEPSPEED_STATE.match(entry) or _WEIGHT_FILES & set(os.listdir(full))):
            return True
    return False


def checkpoint_problem(path: str) -> str | None:
    """Why `path` is not a complete checkpoint to resume from, or None when it is one."""
    if not os.path.isdir(path):
        return "it is not a directory"
    state = os.path.join(path, TRAINER_STATE_NAME)
    if not os.path.isfile(state):
        return f"it has no {TRAINER_STATE_NAME} (written last, so the save that made it did not finish)"
    try:
        with open(state, encoding="utf-8") as file:
            json.load(file)
    except (OSError, ValueError):
        return f"its {TRAINER_STATE_NAME} is not readable JSON (the save that made it was cut short)"
    if not _holds_weights(path):
        return "it holds no model weights (model.safetensors, pytorch_model.bin, a shard index or a PEFT adapter)"
    return None


def last_complete_checkpoint(output_dir: str) -> str:
    """The highest-numbered complete `checkpoint-N` of `output_dir`; incomplete ones are skipped with a warning."""
    found = []
    if os.path.isdir(output_dir):
        found = [
            entry
            for entry in os.listdir(output_dir)
            if _CHECKPOINT.match(entry) and os.path.isdir(os.path.join(output_dir, entry))
        ]
    skipped = []
    for entry in sorted(found, key=lambda name: int(_CHECKPOINT.match(name).group(1)), reverse=True):
        path = os.path.join(output_dir, entry)
        problem = checkpoint_problem(path)
        if problem is None:
            return path
        logger.warning("not resuming from %s: %s; trying the checkpoint before it", path, problem)
        skipped.append(entry)
    detail = f"; every checkpoint there is incomplete: {sorted(skipped)}" if skipped else ""
    raise ValueError(f"No valid checkpoint found in output directory ({output_dir}){detail}")


class CompleteCheckpointMixin:
    """`train(resume_from_checkpoint=True)` resumes from the last *complete* checkpoint of `args.output_dir`, and an
    explicit checkpoint path that is incomplete is refused before anything is loaded."""

    def train(self, resume_from_checkpoint=None, trial=None, ignore_keys_for_eval=None, **kwargs):
        if resume_from_checkpoint is True:
            resume_from_checkpoint = last_complete_checkpoint(self.args.output_dir)
        elif isinstance(resume_from_checkpoint, (str, os.PathLike)):
            problem = checkpoint_problem(os.fspath(resume_from_checkpoint))
            if problem is not None:
                raise ValueError(
                    f"cannot resume from {os.fspath(resume_from_checkpoint)}: {problem}; pass an earlier checkpoint, "
                    "or resume_from_checkpoint=True to take the last complete one"
                )
        return super().train(
            resume_from_checkpoint=resume_from_checkpoint,
            trial=trial,
            ignore_keys_for_eval=ignore_keys_for_eval,
            **kwargs,
        )
