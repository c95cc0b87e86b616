"""Ranking metrics with one relevant item (the true next item)."""

from __future__ import annotations

import math
from collections.abc import Sequence


def target_rank(ranking: Sequence[str], target: str) -> int | None:
    """0-based position of `target` in `ranking`, None when absent."""
    try:
        return list(ranking).index(target)
    except ValueError:
        return None


def ndcg_at_k(ranking: Sequence[str], target: str, k: int | None = None) -> float:
    """NDCG@k for one relevant item: 1/log2(rank+2) when it is in the top k (all of the list when k is None)."""
    rank = target_rank(ranking, target)
    if rank is None or (k is not None and rank >= k):
        return 0.0
    return 1.0 / math.log2(rank + 2)


def recall_at_k(ranking: Sequence[str], target: str, k: int) -> float:
    """R@k (= HR@k) for one relevant item."""
    rank = target_rank(ranking, target)
    return float(rank is not None and rank < k)
