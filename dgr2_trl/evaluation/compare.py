"""Compare re-rankers on the same queries: per-query metrics, paired bootstrap intervals, Kendall tau, seed summaries.

All functions are pure (apart from the JSONL helpers) and use one relevant item per query (`target`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from dgr2_trl.rewards.metrics import ndcg_at_k, recall_at_k


METRIC_KEYS = ("recall@1", "recall@3", "recall@5", "ndcg@3", "ndcg@5")
_METRIC_FUNCS = {"recall": recall_at_k, "ndcg": ndcg_at_k}
_BOOTSTRAP_CHUNK_CELLS = 4_000_000  # resampled indices held at once (~32 MB of int64)


def _metric(key: str):
    name, k = key.split("@")
    return _METRIC_FUNCS[name], int(k)


def per_query_metrics(rankings: Sequence[Sequence[str]], targets: Sequence[str]) -> dict[str, np.ndarray]:
    """One float per query for every key in METRIC_KEYS (rankings best first, one relevant `target` each)."""
    if len(rankings) != len(targets):
        raise ValueError(f"got {len(rankings)} rankings but {len(targets)} targets")
    out: dict[str, np.ndarray] = {}
    for key in METRIC_KEYS:
        f, k = _metric(key)
        out[key] = np.array([f(r, t, k) for r, t in zip(rankings, targets)], dtype=np.float64)
    return out


def paired_bootstrap(
    a: Sequence[float] | np.ndarray,
    b: Sequence[float] | np.ndarray,
    num_samples: int = 10_000,
    seed: int = 0,
    confidence: float = 0.95,
) -> dict:
    """Mean of a - b over paired queries and its percentile bootstrap interval (queries resampled with replacement).

    Returns {"diff", "low", "high", "n"}; the same seed gives the same interval.
    """
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"paired values need equal lengths, got {a.size} and {b.size}")
    n = a.size
    if n == 0:
        raise ValueError("paired_bootstrap needs at least one query")
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    d = a - b
    rng = np.random.default_rng(seed)
    means = np.empty(num_samples, dtype=np.float64)
    chunk = max(1, _BOOTSTRAP_CHUNK_CELLS // n)
    for start in range(0, num_samples, chunk):
        stop = min(start + chunk, num_samples)
        idx = rng.integers(0, n, size=(stop - start, n))
        means[start:stop] = d[idx].mean(axis=1)
    alpha = 1.0 - confidence
    low, high = np.quantile(means, [alpha / 2.0, 1.0 - alpha / 2.0])
    return {"diff": float(d.mean()), "low": float(low), "high": float(high), "n": int(n)}


def kendall_tau(x: Sequence[str], y: Sequence[str]) -> float:
    """Kendall tau-a between two orderings of the same distinct items: 1.0 identical, -1.0 reversed."""
    x, y = list(x), list(y)
    if len(x) != len(y) or len(set(x)) != len(x) or set(x) != set(y):
        raise ValueError(f"kendall_tau needs two permutations of the same distinct items, got {x} and {y}")
    n = len(x)
    if n < 2:
        return 1.0
    pos_in_y = {item: i for i, item in enumerate(y)}
    p = np.array([pos_in_y[item] for item in x])
    # pairs (i < j) ordered the other way in y
    discordant = int(np.triu(p[:, None] > p[None, :], k=1).sum())
    pairs = n * (n - 1) // 2
    return 1.0 - 2.0 * discordant / pairs


def compare_rankings(
    rankings: Sequence[Sequence[str]],
    reference: Sequence[Sequence[str]],
    targets: Sequence[str],
    num_samples: int = 10_000,
    seed: int = 0,
) -> dict:
    """Paired comparison of model rankings against reference rankings (e.g. the teacher's) on the same queries.

    For every key in METRIC_KEYS {"diff", "low", "high"} of (model - reference), plus "identical_rate" (share of
    queries whose two rankings are equal), "mean_kendall_tau" and "n".
    """
    if not len(rankings) == len(reference) == len(targets):
        raise ValueError(
            f"got {len(rankings)} rankings, {len(reference)} reference rankings and {len(targets)} targets"
        )
    model_m = per_query_metrics(rankings, targets)
    ref_m = per_query_metrics(reference, targets)
    out: dict = {}
    for key in METRIC_KEYS:
        res = paired_bootstrap(model_m[key], ref_m[key], num_samples=num_samples, seed=seed)
        out[key] = {"diff": res["diff"], "low": res["low"], "high": res["high"]}
    n = len(targets)
    out["identical_rate"] = sum(list(r) == list(q) for r, q in zip(rankings, reference)) / n
    out["mean_kendall_tau"] = float(np.mean([kendall_tau(r, q) for r, q in zip(rankings, reference)]))
    out["n"] = n
    return out


def _is_number(value) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


def aggregate_seeds(results: list[dict], keys: Iterable[str] | None = None) -> dict:
    """Summarise per-seed results: {"mean", "std" (ddof=1, 0.0 for one seed), "min", "max", "n_seeds"} per key.

    Only keys whose value is a number in every result are kept (nested dicts and other values are ignored);
    `keys` restricts the keys considered. Key order follows the first result (or `keys`).
    """
    if not results:
        return {}
    candidates = list(keys) if keys is not None else list(results[0].keys())
    out: dict = {}
    for key in candidates:
        if not all(key in r and _is_number(r[key]) for r in results):
            continue
        values = np.array([float(r[key]) for r in results], dtype=np.float64)
        out[key] = {
            "mean": float(values.mean()),
            "std": float(values.std(ddof=1)) if values.size > 1 else 0.0,
            "min": float(values.min()),
            "max": float(values.max()),
            "n_seeds": int(values.size),
        }
    return out


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"object of type {type(value).__name__} is not JSON serialisable")


def write_jsonl(path: str | Path, rows: Iterable[dict]) -> None:
    """Write one JSON object per line (UTF-8, non-ASCII kept as is); creates parent folders."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False, default=_json_default) + "\n")


def read_jsonl(path: str | Path) -> list[dict]:
    """Read the JSON objects written by write_jsonl (blank lines skipped)."""
    with Path(path).open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


__all__ = [
    "METRIC_KEYS",
    "aggregate_seeds",
    "compare_rankings",
    "kendall_tau",
    "paired_bootstrap",
    "per_query_metrics",
    "read_jsonl",
    "write_jsonl",
]
