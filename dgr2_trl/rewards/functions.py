"""Re-ranking rewards with TRL's reward-function signature `f(prompts, completions, **kwargs) -> list[float]`.

Dataset columns arrive as keyword lists (one entry per completion): `candidates` (id strings in pre-ranker order),
`target` (the true item's id string) and, where needed, `pre_rank` (the target's 0-based position in the
candidates, -1 when absent). Completions may be strings or chat messages. Malformed text never raises: the
ranking rewards return `invalid_reward` (-1 by default) for an answer that is not an exact permutation.
A missing column raises `MissingColumnError` naming the column and the reward.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from .metrics import ndcg_at_k, recall_at_k, target_rank
from .parsing import ParsedRanking, parse_ranking

RewardFunc = Callable[..., list[float]]


class MissingColumnError(ValueError):
    """A reward needs a dataset column that the trainer did not pass."""


def _column(reward_name: str, kwargs: dict, column: str, n: int) -> list:
    values = kwargs.get(column)
    if values is None:
        present = sorted(k for k in kwargs if k not in ("prompts", "completions", "completion_ids", "trainer_state"))
        raise MissingColumnError(
            f"{reward_name} needs the dataset column {column!r} (TRL passes dataset columns to reward functions as "
            f"keyword arguments); got columns {present}"
        )
    if len(values) != n:
        raise ValueError(f"{reward_name}: column {column!r} has {len(values)} entries for {n} completions")
    return list(values)


def _rows(reward_name: str, completions: Sequence, kwargs: dict, columns: Sequence[str]):
    """Per completion: (parsed ranking, {column: value})."""
    n = len(completions)
    cols = {c: _column(reward_name, kwargs, c, n) for c in columns}
    for i, completion in enumerate(completions):
        row = {c: cols[c][i] for c in columns}
        candidates = [str(c) for c in row["candidates"]] if "candidates" in row else []
        yield parse_ranking(completion, candidates), row


def _named(func: RewardFunc, name: str) -> RewardFunc:
    # TRL logs each reward under `rewards/<__name__>/...`
    func.__name__ = name
    func.__qualname__ = name
    return func


def make_ndcg_reward(k: int | None = None, invalid_reward: float = -1.0, name: str | None = None) -> RewardFunc:
    """NDCG@k of the parsed ranking (k=None: the whole list); `invalid_reward` for an invalid answer."""
    name = name or ("ndcg_reward" if k is None else f"ndcg_at_{k}_reward")

    def reward(prompts=None, completions=(), **kwargs) -> list[float]:
        return [
            ndcg_at_k(p.ranking, str(r["target"]), k) if p.valid else invalid_reward
            for p, r in _rows(name, completions, kwargs, ("candidates", "target"))
        ]

    return _named(reward, name)


def make_recall_reward(k: int = 1, invalid_reward: float = -1.0, name: str | None = None) -> RewardFunc:
    """R@k of the parsed ranking; `invalid_reward` for an invalid answer."""
    name = name or f"recall_at_{k}_reward"

    def reward(prompts=None, completions=(), **kwargs) -> list[float]:
        return [
            recall_at_k(p.ranking, str(r["target"]), k) if p.valid else invalid_reward
            for p, r in _rows(name, completions, kwargs, ("candidates", "target"))
        ]

    return _named(reward, name)


def _promotion(p: ParsedRanking, row: dict) -> float | None:
    """(position before - position after) / N, None when the target is not among the candidates."""
    pre = row["pre_rank"]
    new = target_rank(p.ranking, str(row["target"]))
    if new is None or pre is None or int(pre) < 0:
        return None
    return (int(pre) - new) / len(p.ranking)


def make_rank_promotion_reward(invalid_reward: float = -1.0, name: str = "rank_promotion_reward") -> RewardFunc:
    """GR2's rank promotion: how many places the true item moved up, over the list length; 0 when the true item
    is not among the candidates; `invalid_reward` for an invalid answer."""

    def reward(prompts=None, completions=(), **kwargs) -> list[float]:
        out = []
        for p, r in _rows(name, completions, kwargs, ("candidates", "target", "pre_rank")):
            out.append(invalid_reward if not p.valid else (_promotion(p, r) or 0.0))
        return out

    return _named(reward, name)


def make_conditional_format_reward(bonus: float = 1.0, name: str = "conditional_format_reward") -> RewardFunc:
    """`bonus` for a valid answer that moves the true item up or keeps it first, else 0. Rewarding format only
    together with progress stops a policy from collecting it by echoing the candidates in their given order."""

    def reward(prompts=None, completions=(), **kwargs) -> list[float]:
        out = []
        for p, r in _rows(name, completions, kwargs, ("candidates", "target", "pre_rank")):
            if not p.valid:
                out.append(0.0)
                continue
            gain = _promotion(p, r)
            first = target_rank(p.ranking, str(r["target"])) == 0
            out.append(bonus if gain is not None and (gain > 0 or first) else 0.0)
        return out

    return _named(reward, name)


def _validity(prompts=None, completions=(), **kwargs) -> list[float]:
    cols = ("candidates",)
    return [float(p.valid) for p, _ in _rows("validity_reward", completions, kwargs, cols)]


def combine_rewards(
    weighted: Sequence[tuple[RewardFunc, float]], invalid_reward: float | None = -1.0, name: str | None = None
) -> RewardFunc:
    """sum_i w_i * f_i(...), row by row; rows whose answer is invalid get `invalid_reward` instead (None: keep
    the weighted sum). The result has TRL's signature and a `__name__` built from the parts."""
    weighted = [(f, float(w)) for f, w in weighted]
    if not weighted:
        raise ValueError("combine_rewards needs at least one (reward function, weight) pair")
    name = name or "+".join(f"{w:g}*{f.__name__}" for f, w in weighted)

    def reward(prompts=None, completions=(), **kwargs) -> list[float]:
        parts = [f(prompts=prompts, completions=completions, **kwargs) for f, _ in weighted]
        total = [sum(w * values[i] for (_, w), values in zip(weighted, parts)) for i in range(len(completions))]
        if invalid_reward is None:
            return total
        valid = _validity(prompts, completions, **{"candidates": _column(name, kwargs, "candidates", len(completions))})
        return [t if v else float(invalid_reward) for t, v in zip(total, valid)]

    return _named(reward, name)


ndcg_reward = make_ndcg_reward(None, name="ndcg_reward")
recall_reward = make_recall_reward(1, name="recall_reward")
validity_reward = _named(_validity, "validity_reward")
rank_promotion_reward = make_rank_promotion_reward()
conditional_format_reward = make_conditional_format_reward()
# The RL stage's default: rank promotion + 0.2 x conditional format, -1 for an invalid answer.
default_rl_reward = combine_rewards(
    [(rank_promotion_reward, 1.0), (conditional_format_reward, 0.2)], invalid_reward=-1.0, name="default_rl_reward"
)
