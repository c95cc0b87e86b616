"""Re-ranking rewards with TRL's reward-function signature `f(prompts, completions, **kwargs) -> list[float]`.

Dataset columns arrive as keyword lists (one entry per completion): `candidates` (id strings in pre-ranker order),
`target` (the true item's id string) and, where needed, `pre_rank` (the target's 0-based position in the
candidates, -1 when absent). Completions may be strings or chat messages. Malformed text never raises: the
ranking rewards return `invalid_reward` (-1 by default) for an answer that is not an exact permutation.
Malformed columns always raise (see `dgr2_trl.rewards.columns`): a missing column raises `MissingColumnError`, a
mistyped or inconsistent entry `ColumnValueError` (e.g. `candidates` as a JSON string, repeated or padded ids, a
`pre_rank` that is not the target's position), naming the reward, the column and the row in the batch.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence

from .columns import ColumnValueError, MissingColumnError, check_candidates, check_pre_rank, check_ranking_row
from .metrics import ndcg_at_k, recall_at_k, target_rank
from .parsing import ParsedRanking, parse_ranking


RewardFunc = Callable[..., list[float]]


def _column(reward_name: str, kwargs: dict, column: str, n: int) -> list:
    values = kwargs.get(column)
    if values is None:
        present = sorted(k for k in kwargs if k not in ("prompts", "completions", "completion_ids", "trainer_state"))
        raise MissingColumnError(
            f"{reward_name} needs the dataset column {column!r} (TRL passes dataset columns to reward functions as "
            f"keyword arguments); got columns {present}"
        )
    if isinstance(values, (str, bytes)):  # one row's value passed as the column would be read per character
        raise ColumnValueError(
            f"{reward_name}: column {column!r} is the string {values[:60]!r}, expected a list with "
            f"one entry per completion"
        )
    if len(values) != n:
        raise ValueError(f"{reward_name}: column {column!r} has {len(values)} entries for {n} completions")
    return list(values)


def _check_prompts(reward_name: str, prompts, n: int) -> None:
    if prompts is not None and len(prompts) != n:
        raise ValueError(
            f"{reward_name}: got {len(prompts)} prompts for {n} completions, expected one prompt per completion"
        )


def _checked_row(reward_name: str, i: int, row: dict) -> dict:
    """The row's columns checked and normalised (ids as strings); raises `ColumnValueError` naming the row."""
    where = f"{i} of the batch"
    row = dict(row)
    if "target" in row:
        row["candidates"], row["target"] = check_ranking_row(row["candidates"], row["target"], where, reward_name)
    else:
        row["candidates"] = check_candidates(row["candidates"], where, reward_name)
    if "pre_rank" in row:
        row["pre_rank"] = check_pre_rank(row["pre_rank"], row["candidates"], row["target"], where, reward_name)
    return row


def _rows(reward_name: str, completions: Sequence, kwargs: dict, columns: Sequence[str]):
    """Per completion: (parsed ranking, {column: value}). Every row's columns are checked before any is scored."""
    n = len(completions)
    cols = {c: _column(reward_name, kwargs, c, n) for c in columns}
    rows = [_checked_row(reward_name, i, {c: cols[c][i] for c in columns}) for i in range(n)]
    return [(parse_ranking(completion, row["candidates"]), row) for completion, row in zip(completions, rows)]


def _check_k(reward: str, k, allow_none: bool) -> None:
    if k is None and allow_none:
        return
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 1:
        whole = "None (the whole list) or " if allow_none else ""
        raise ValueError(f"{reward}: k must be {whole}an int >= 1, got {k!r} (at k < 1 every answer scores 0)")


class RankingReward:
    """Base of the reward callables: TRL's signature, a `__name__` (TRL logs `rewards/<__name__>/mean`), and
    picklable (module-level classes, no closures). Subclasses implement `score(parsed, row)`."""

    columns: tuple[str, ...] = ("candidates", "target")

    def __init__(self, name: str, invalid_reward: float = -1.0):
        self.__name__ = name
        self.invalid_reward = float(invalid_reward)

    def score(self, parsed: ParsedRanking, row: dict) -> float:
        raise NotImplementedError

    def __call__(self, prompts=None, completions=(), **kwargs) -> list[float]:
        _check_prompts(self.__name__, prompts, len(completions))
        return [
            self.score(p, r) if p.valid else self.invalid_reward
            for p, r in _rows(self.__name__, completions, kwargs, self.columns)
        ]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.__name__!r})"


class NDCGReward(RankingReward):
    """NDCG@k of the parsed ranking (k=None: the whole list)."""

    def __init__(self, k: int | None = None, invalid_reward: float = -1.0, name: str | None = None):
        _check_k("make_ndcg_reward", k, allow_none=True)
        super().__init__(name or ("ndcg_reward" if k is None else f"ndcg_at_{k}_reward"), invalid_reward)
        self.k = k

    def score(self, parsed, row):
        return ndcg_at_k(parsed.ranking, row["target"], self.k)


class RecallReward(RankingReward):
    """R@k of the parsed ranking."""

    def __init__(self, k: int = 1, invalid_reward: float = -1.0, name: str | None = None):
        _check_k("make_recall_reward", k, allow_none=False)
        super().__init__(name or f"recall_at_{k}_reward", invalid_reward)
        self.k = k

    def score(self, parsed, row):
        return recall_at_k(parsed.ranking, row["target"], self.k)


def _promotion(p: ParsedRanking, row: dict) -> float | None:
    """(position before - position after) / N, None when the target is not among the candidates (`pre_rank` was
    checked against them, so the result lies in (-1, 1))."""
    pre = row["pre_rank"]
    new = target_rank(p.ranking, row["target"])
    if new is None or pre < 0:
        return None
    return (pre - new) / len(p.ranking)


class RankPromotionReward(RankingReward):
    """GR2's rank promotion: (position before - position after) / N for the true item; 0 when the true item is
    not among the candidates."""

    columns = ("candidates", "target", "pre_rank")

    def __init__(self, invalid_reward: float = -1.0, name: str = "rank_promotion_reward"):
        super().__init__(name, invalid_reward)

    def score(self, parsed, row):
        gain = _promotion(parsed, row)
        return 0.0 if gain is None else gain


class ConditionalFormatReward(RankingReward):
    """`bonus` for a valid answer that moves the true item up or keeps it first, else 0 (also when invalid).
    Rewarding format only together with progress stops a policy from collecting it by echoing the candidates."""

    columns = ("candidates", "target", "pre_rank")

    def __init__(self, bonus: float = 1.0, name: str = "conditional_format_reward"):
        super().__init__(name, invalid_reward=0.0)
        self.bonus = float(bonus)

    def score(self, parsed, row):
        gain = _promotion(parsed, row)
        first = target_rank(parsed.ranking, row["target"]) == 0
        return self.bonus if gain is not None and (gain > 0 or first) else 0.0


class ValidityReward(RankingReward):
    """1 for an exact permutation of the candidates, else 0."""

    columns = ("candidates",)

    def __init__(self, name: str = "validity_reward"):
        super().__init__(name, invalid_reward=0.0)

    def score(self, parsed, row):
        return 1.0


def _reward_name(f) -> str:
    return getattr(f, "__name__", type(f).__name__)


def _as_float(value) -> float | None:
    """A reward value as a float (NaN for None, TRL's "not applicable"), or None when it is not a number."""
    if value is None:
        return math.nan
    if isinstance(value, (str, bytes)):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


class CombinedReward:
    """sum_i w_i * f_i(...) row by row; rows whose answer is invalid get `invalid_reward` (None: keep the sum).

    As in TRL, a part may return None for a row it does not apply to (NaN counts the same): the row's sum leaves it
    out, and a row no part applies to gets None (TRL then treats it as unscorable)."""

    def __init__(
        self,
        weighted: Sequence[tuple[RewardFunc, float]],
        invalid_reward: float | None = -1.0,
        name: str | None = None,
    ):
        self.weighted = [(f, float(w)) for f, w in weighted]
        if not self.weighted:
            raise ValueError("combine_rewards needs at least one (reward function, weight) pair")
        self.invalid_reward = invalid_reward
        self.__name__ = name or "+".join(f"{w:g}*{_reward_name(f)}" for f, w in self.weighted)
        self._validity = ValidityReward(name=self.__name__)

    def _part(self, f, prompts, completions, kwargs) -> list[float]:
        """One part's values as floats (NaN where it returned None), checked for one per completion."""
        n, part = len(completions), _reward_name(f)
        try:
            values = f(prompts=prompts, completions=completions, **kwargs)
        except (MissingColumnError, ColumnValueError) as error:  # say which reward the user called, too
            raise type(error)(f"{self.__name__}: {error}") from error
        try:
            values = list(values)
        except TypeError:
            raise TypeError(
                f"{self.__name__}: reward {part!r} returned {type(values).__name__}, expected a list of "
                f"{n} floats (or None)"
            ) from None
        if len(values) != n:
            raise ValueError(
                f"{self.__name__}: reward {part!r} returned {len(values)} values for {n} completions, "
                f"expected one per completion"
            )
        out = [_as_float(v) for v in values]
        for k, (v, x) in enumerate(zip(values, out)):
            if x is None:
                raise TypeError(
                    f"{self.__name__}: reward {part!r} returned {v!r} for completion {k}, expected a float or None"
                )
        return out

    def __call__(self, prompts=None, completions=(), **kwargs) -> list[float | None]:
        _check_prompts(self.__name__, prompts, len(completions))
        parts = [(self._part(f, prompts, completions, kwargs), w) for f, w in self.weighted]
        total = []
        for i in range(len(completions)):
            terms = [w * values[i] for values, w in parts if not math.isnan(values[i])]
            total.append(sum(terms) if terms else None)
        if self.invalid_reward is None:
            return total
        valid = self._validity(prompts, completions, **kwargs)
        return [t if v else float(self.invalid_reward) for t, v in zip(total, valid)]

    def __repr__(self) -> str:
        return f"CombinedReward(name={self.__name__!r})"


def make_ndcg_reward(k: int | None = None, invalid_reward: float = -1.0, name: str | None = None) -> RewardFunc:
    """NDCG@k reward (k=None: whole list), named `ndcg_at_{k}_reward`."""
    return NDCGReward(k, invalid_reward, name)


def make_recall_reward(k: int = 1, invalid_reward: float = -1.0, name: str | None = None) -> RewardFunc:
    """R@k reward, named `recall_at_{k}_reward`."""
    return RecallReward(k, invalid_reward, name)


def make_rank_promotion_reward(invalid_reward: float = -1.0, name: str = "rank_promotion_reward") -> RewardFunc:
    return RankPromotionReward(invalid_reward, name)


def make_conditional_format_reward(bonus: float = 1.0, name: str = "conditional_format_reward") -> RewardFunc:
    return ConditionalFormatReward(bonus, name)


def combine_rewards(
    weighted: Sequence[tuple[RewardFunc, float]], invalid_reward: float | None = -1.0, name: str | None = None
) -> RewardFunc:
    """A TRL-compatible reward computing sum_i w_i * f_i row by row, `invalid_reward` for invalid answers; its
    `__name__` is `name` or built from the parts (e.g. `1*rank_promotion_reward+0.2*conditional_format_reward`).
    Parts returning None for some rows are summed as TRL does (see `CombinedReward`)."""
    return CombinedReward(weighted, invalid_reward, name)


# k defaults: NDCG over the whole list, R@1 (R@10 of a valid permutation of 10 candidates says nothing).
ndcg_reward = NDCGReward(None, name="ndcg_reward")
recall_reward = RecallReward(1, name="recall_reward")
validity_reward = ValidityReward()
rank_promotion_reward = make_rank_promotion_reward()
conditional_format_reward = make_conditional_format_reward()
# The RL stage's default: rank promotion + 0.2 x conditional format, -1 for an invalid answer.
default_rl_reward = combine_rewards(
    [(rank_promotion_reward, 1.0), (conditional_format_reward, 0.2)], invalid_reward=-1.0, name="default_rl_reward"
)
