"""Sequence-level distillation data: the AR teacher's own greedy answers as conversion fine-tuning targets.

Training targets written by people (or built from the true item) are multimodal given the prompt: the same
history can be followed by several traces, and a ranking built around the true item puts an id first that the
prompt cannot tell. A parallel decoder trained on them learns to hesitate between the modes, so it commits few
tokens per pass and can mix modes when it commits several at once. The teacher's greedy answer is one
deterministic function of the prompt: fine-tuning the student on it (Kim & Rush 2016; the standard remedy for
non-autoregressive decoders) asks the student to reproduce the model it is distilled from, which is also what
OPD measures.
"""

from __future__ import annotations

import logging
import math

from ..rewards.parsing import parse_ranking


logger = logging.getLogger(__name__)


def teacher_completion_dataset(
    sampler,
    dataset,
    max_new_tokens: int,
    batch_size: int = 16,
    num_queries: int | None = None,
    keep_invalid: bool = False,
    show_progress: bool = True,
):
    """A copy of the first `num_queries` rows of `dataset` (a `datasets.Dataset` with `prompt` and, unless
    `keep_invalid`, `candidates`) whose `completion` is the teacher sampler's greedy answer, as one assistant
    message. Answers that are not a valid ranking of the row's candidates are dropped (logged) unless
    `keep_invalid`: the student should not learn the teacher's mistakes. Raises if no row is left."""
    missing = [c for c in ("prompt",) + (() if keep_invalid else ("candidates",)) if c not in dataset.column_names]
    if missing:
        raise ValueError(f"the dataset lacks the column(s) {missing}; it has {dataset.column_names}")
    n = len(dataset) if num_queries is None else min(num_queries, len(dataset))
    if n < 1:
        raise ValueError("the dataset has no rows to distil")
    starts = range(0, n, batch_size)
    if show_progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, total=math.ceil(n / batch_size), desc="teacher answers", unit="batch")
    kept, texts = [], []
    for start in starts:
        rows = dataset.select(range(start, min(start + batch_size, n)))
        out = sampler.generate(list(rows["prompt"]), max_new_tokens=max_new_tokens, temperature=0.0)
        for offset, text in enumerate(out.texts):
            if keep_invalid or parse_ranking(text, [str(c) for c in rows[offset]["candidates"]]).valid:
                kept.append(start + offset)
                texts.append(text)
    if not kept:
        raise ValueError(f"none of the teacher's {n} answers is a valid ranking; nothing to distil")
    if len(kept) < n:
        logger.warning(
            "sequence distillation: dropped %d of %d teacher answers that are not valid rankings", n - len(kept), n
        )
    result = dataset.select(kept)
    if "completion" in result.column_names:
        result = result.remove_columns("completion")
    return result.add_column("completion", [[{"role": "assistant", "content": t}] for t in texts])
