"""Evaluate a re-ranker (any sampler with `.generate(prompts, max_new_tokens=...)`) on a re-ranking dataset.

Protocol (as in the paper): an invalid answer falls back to the pre-ranker's order (the `candidates` column), so
a model never scores below the pre-ranker floor by being invalid; the valid rate is reported beside the scores.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

from dgr2_trl.rewards.columns import check_ranking_row
from dgr2_trl.rewards.metrics import ndcg_at_k, recall_at_k
from dgr2_trl.rewards.parsing import REASONS, parse_ranking


METRICS = (("recall@1", "r", 1), ("recall@3", "r", 3), ("recall@5", "r", 5), ("ndcg@3", "n", 3), ("ndcg@5", "n", 5))
_REQUIRED = ("prompt", "candidates", "target")


def _check_columns(dataset, needed: Sequence[str]) -> None:
    names = getattr(dataset, "column_names", None)
    if names is None and len(dataset):
        names = list(dataset[0].keys())
    missing = [c for c in needed if c not in (names or [])]
    if missing:
        raise ValueError(f"the evaluation dataset lacks the column(s) {missing}; it has {names}")


def ranking_scores(rankings: Sequence[Sequence[str]], targets: Sequence[str]) -> dict[str, float]:
    """Mean R@1, R@3, NDCG@3, NDCG@5 (one relevant item) and n."""
    n = len(targets)
    out: dict[str, float] = {}
    for key, kind, k in METRICS:
        f = recall_at_k if kind == "r" else ndcg_at_k
        out[key] = sum(f(r, t, k) for r, t in zip(rankings, targets)) / n if n else float("nan")
    out["n"] = n
    return out


def binomial_lower_bound(successes: int, n: int, confidence: float = 0.95) -> float:
    """Exact one-sided lower confidence bound on a success probability (Clopper-Pearson), by bisection on
    P(X >= successes | p) = 1 - confidence."""
    if not 0 <= successes <= n or n < 1:
        raise ValueError(f"need 0 <= successes <= n and n >= 1, got {successes} of {n}")
    if successes == 0:
        return 0.0
    alpha = 1.0 - confidence

    def tail(p: float) -> float:  # P(X >= successes), summed in log space
        terms = [
            math.lgamma(n + 1)
            - math.lgamma(k + 1)
            - math.lgamma(n - k + 1)
            + k * math.log(p)
            + (n - k) * math.log1p(-p)
            for k in range(successes, n + 1)
        ]
        top = max(terms)
        return math.exp(top) * sum(math.exp(t - top) for t in terms)

    low, high = 0.0, 1.0
    for _ in range(100):
        middle = (low + high) / 2
        if middle <= 0.0 or middle >= 1.0:
            break
        low, high = (middle, high) if tail(middle) < alpha else (low, middle)
    return low


def evaluate_prerank_floor(dataset) -> dict:
    """Metrics of the pre-ranker's own order (the `candidates` column), the floor a re-ranker must beat."""
    _check_columns(dataset, ("candidates", "target"))
    rows = dataset if not hasattr(dataset, "select_columns") else dataset.select_columns(["candidates", "target"])
    checked = [
        check_ranking_row(r["candidates"], r["target"], i, "evaluate_prerank_floor") for i, r in enumerate(rows)
    ]
    rankings = [candidates for candidates, _ in checked]
    targets = [target for _, target in checked]
    scores = ranking_scores(rankings, targets)
    scores["num_target_in_candidates"] = sum(t in r for r, t in zip(rankings, targets))
    return scores


def _safe(x: float) -> float | None:
    """NaN/inf are not JSON; report them as None."""
    return None if x is None or not math.isfinite(x) else float(x)


def evaluate_reranker(
    sampler,
    dataset,
    max_new_tokens: int = 256,
    batch_size: int = 16,
    show_progress: bool = True,
    max_queries: int | None = None,
    return_rows: bool = False,
    **generate_kwargs,
) -> dict:
    """Generate a ranking for every query and score it.

    Returns a JSON-serialisable dict: `n`, `recall@1`, `recall@3`, `recall@5`, `ndcg@3`, `ndcg@5` (invalid answers
    fall back to the pre-ranker order), `valid_rate`, `invalid_reasons` (count per reason), `floor` (the pre-ranker
    order's metrics on the same queries), `num_target_in_candidates`, `tokens_per_second` (generated tokens over the
    summed `generate` wall time), `forward_passes_per_token` (mean over rows of the denoising steps a row needed
    over the tokens it produced), `num_generated_tokens`, `num_forward_passes`, `elapsed_s`; with `return_rows`
    also `rows` (per query: text, ranking used, valid, reason).

    Every row's `candidates` and `target` are checked before generating (`dgr2_trl.rewards.columns`): a list
    stored as a JSON string, a repeated, padded or non-string id, or None raises `ColumnValueError` naming the row.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    _check_columns(dataset, _REQUIRED)
    n = len(dataset) if max_queries is None else min(max_queries, len(dataset))
    rows = [dataset[i] for i in range(n)]
    # every row's columns are checked before any generation: a mistyped column would otherwise score as the floor
    checked = [check_ranking_row(r["candidates"], r["target"], i, "evaluate_reranker") for i, r in enumerate(rows)]
    batches = range(0, n, batch_size)
    if show_progress:
        from tqdm.auto import tqdm

        batches = tqdm(
            batches, total=math.ceil(n / batch_size), desc="evaluate", unit="batch", disable=n <= batch_size
        )
    used, floor_rankings, targets, details, texts = [], [], [], [], set()
    copies_floor = 0
    reasons: Counter[str] = Counter()
    tokens = passes = 0
    elapsed = 0.0
    step_ratios: list[float] = []
    for start in batches:
        batch = rows[start : start + batch_size]
        batch_columns = checked[start : start + batch_size]
        out = sampler.generate([r["prompt"] for r in batch], max_new_tokens=max_new_tokens, **generate_kwargs)
        if len(out.texts) != len(batch):
            raise ValueError(f"sampler returned {len(out.texts)} texts for a batch of {len(batch)} prompts")
        elapsed += float(out.elapsed_s)
        passes += int(out.num_forward_passes)
        tokens += sum(len(ids) for ids in out.completion_ids)
        step_ratios += [s / max(len(ids), 1) for s, ids in zip(out.steps_per_row, out.completion_ids)]
        for (candidates, target), text in zip(batch_columns, out.texts):
            parsed = parse_ranking(text, candidates)
            reasons[parsed.reason] += 1
            ranking = parsed.ranking if parsed.valid else candidates  # fallback: the pre-ranker's order
            used.append(ranking)
            copies_floor += parsed.valid and ranking == candidates
            texts.add(text)
            floor_rankings.append(candidates)
            targets.append(target)
            if return_rows:
                details.append({"text": text, "ranking": ranking, "valid": parsed.valid, "reason": parsed.reason})
    result: dict = ranking_scores(used, targets)
    result["valid_rate"] = reasons["ok"] / n if n else float("nan")
    result["valid_rate_lower_95"] = binomial_lower_bound(reasons["ok"], n) if n else None
    result["invalid_reasons"] = {r: reasons[r] for r in REASONS if r != "ok"}
    result["copies_floor_rate"] = copies_floor / n if n else float("nan")
    result["num_distinct_texts"] = len(texts)
    result["num_target_in_candidates"] = sum(t in c for c, t in zip(floor_rankings, targets))
    result["floor"] = ranking_scores(floor_rankings, targets)
    result["num_generated_tokens"] = tokens
    result["num_forward_passes"] = passes
    result["elapsed_s"] = elapsed
    result["tokens_per_second"] = _safe(tokens / elapsed) if elapsed > 0 else None
    result["forward_passes_per_token"] = _safe(sum(step_ratios) / len(step_ratios)) if step_ratios else None
    for key in ("recall@1", "recall@3", "recall@5", "ndcg@3", "ndcg@5", "valid_rate", "copies_floor_rate"):
        result[key] = _safe(result[key])
    if return_rows:
        result["rows"] = details
    return result
