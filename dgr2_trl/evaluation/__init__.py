"""Evaluate a re-ranker: ranking metrics with the pre-ranker fallback, validity and decoding throughput, and paired
comparisons between re-rankers on the same queries."""

from .compare import (
    METRIC_KEYS,
    aggregate_seeds,
    compare_rankings,
    kendall_tau,
    paired_bootstrap,
    per_query_metrics,
    read_jsonl,
    write_jsonl,
)
from .rerank import METRICS, binomial_lower_bound, evaluate_prerank_floor, evaluate_reranker, ranking_scores


__all__ = [
    "METRICS", "METRIC_KEYS", "aggregate_seeds", "binomial_lower_bound", "compare_rankings", "evaluate_prerank_floor",
    "evaluate_reranker", "kendall_tau", "paired_bootstrap", "per_query_metrics", "ranking_scores", "read_jsonl",
    "write_jsonl",
]  # fmt: skip
