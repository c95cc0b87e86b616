"""Leave-one-out split: per user, the last item is the test target, the second-to-last the validation target,
the earlier items are training interactions."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Query:
    """One re-ranking query: predict `target` from `history` (oldest first).

    `user_index` is the user's row in the loaded data; `position` is the target's 0-based index in the user's
    full sequence (so `history == sequence[:position]`).
    """

    user_index: int
    user_id: int
    history: tuple[int, ...]
    target: int
    position: int


@dataclass(frozen=True)
class LeaveOneOutSplit:
    """`train[i]` is user i's training prefix (all but the last two items); queries only for users with a
    non-empty history at the validation target (at least 3 items)."""

    train: list[list[int]]
    validation: list[Query]
    test: list[Query]


def leave_one_out_split(sequences: list[list[int]], user_ids: list[int] | None = None) -> LeaveOneOutSplit:
    """Split chronological sequences leave-one-out. Users with fewer than 3 items only contribute training data
    (they have no history left for a validation query)."""
    if user_ids is None:
        user_ids = list(range(1, len(sequences) + 1))
    if len(user_ids) != len(sequences):
        raise ValueError(f"got {len(user_ids)} user ids for {len(sequences)} sequences")
    train: list[list[int]] = []
    validation: list[Query] = []
    test: list[Query] = []
    for index, (user, seq) in enumerate(zip(user_ids, sequences)):
        if len(seq) < 3:
            train.append(list(seq))
            continue
        train.append(list(seq[:-2]))
        n = len(seq)
        validation.append(Query(index, user, tuple(seq[: n - 2]), seq[n - 2], n - 2))
        test.append(Query(index, user, tuple(seq[: n - 1]), seq[n - 1], n - 1))
    return LeaveOneOutSplit(train=train, validation=validation, test=test)


def training_queries(
    split: LeaveOneOutSplit, user_ids: list[int] | None = None, positions_per_user: int = 1, min_history: int = 1
) -> list[Query]:
    """Queries inside the training prefixes: for each user the last `positions_per_user` training items as
    targets (latest first), each with the earlier training items as history (at least `min_history` of them)."""
    if positions_per_user < 1:
        raise ValueError(f"positions_per_user must be >= 1, got {positions_per_user}")
    if user_ids is None:
        user_ids = list(range(1, len(split.train) + 1))
    queries: list[Query] = []
    for index, prefix in enumerate(split.train):
        for offset in range(positions_per_user):
            position = len(prefix) - 1 - offset
            if position < min_history:
                break
            queries.append(Query(index, user_ids[index], tuple(prefix[:position]), prefix[position], position))
    return queries
