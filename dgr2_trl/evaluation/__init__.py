"""Evaluate a re-ranker: ranking metrics with the pre-ranker fallback, validity and decoding throughput."""

from .rerank import METRICS, binomial_lower_bound, evaluate_prerank_floor, evaluate_reranker, ranking_scores

__all__ = ["METRICS", "binomial_lower_bound", "evaluate_prerank_floor", "evaluate_reranker", "ranking_scores"]
