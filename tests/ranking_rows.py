"""A tiny ranking dataset shared by the LoRA tests and the multi-process worker (item-id tokens, JSON answers)."""

import json
import random

from datasets import Dataset


ITEMS = [f"<i_{i}>" for i in range(12)]


def ranking_rows(n: int) -> Dataset:
    """`n` prompt-completion rows ranking 4 random items, with the reward columns (candidates, target, pre_rank)."""
    rng = random.Random(0)
    data = []
    for k in range(n):
        candidates = rng.sample(ITEMS, 4)
        data.append(
            {
                "prompt": [{"role": "user", "content": f"query {k}: rank " + " ".join(candidates)}],
                "completion": [{"role": "assistant", "content": json.dumps({"ranking": candidates})}],
                "candidates": candidates,
                "target": candidates[1],
                "pre_rank": 1,
            }
        )
    return Dataset.from_list(data)
