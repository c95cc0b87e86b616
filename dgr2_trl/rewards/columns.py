"""Checks of the dataset columns that the rewards and the evaluation read: `candidates`, `target`, `pre_rank`.

A malformed *completion* never raises (it scores as invalid); a malformed *column* always does, naming the column,
the row and what was expected. Left unchecked, a mistyped column scores silently wrong: a `candidates` list stored
as JSON text (a CSV or Parquet round trip) is read per character, so every answer is invalid; duplicated ids let
an answer be valid without naming every slot; a `pre_rank` out of step with `candidates` moves a reward out of
[-1, 1].
"""

from __future__ import annotations

import numbers
from collections import Counter


class MissingColumnError(ValueError):
    """A reward or the evaluation needs a dataset column that it was not given."""


class ColumnValueError(ValueError):
    """A dataset column holds an entry of the wrong type or value (e.g. `candidates` stored as a JSON string)."""


def _preview(value, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _fail(context: str, column: str, row: int | str, problem: str) -> ColumnValueError:
    return ColumnValueError(f"{context}: column {column!r}, row {row}: {problem}")


def _as_id(value) -> str | None:
    """An item id as the parser compares it: a string, or an int (plain numeric ids), else None."""
    if isinstance(value, str):
        return value
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return str(int(value))
    return None


def _check_id(context: str, column: str, row: int | str, value, what: str) -> str:
    item_id = _as_id(value)
    if item_id is None:
        raise _fail(
            context, column, row, f"{what} is {_preview(value)} ({type(value).__name__}), expected an id string"
        )
    # parse_ranking strips the ids it reads from an answer, so a padded id could never be matched: refuse it
    # rather than strip it here, where the prompt the model saw may show it padded
    if not item_id or item_id != item_id.strip():
        raise _fail(
            context,
            column,
            row,
            f"{what} {item_id!r} is empty or has surrounding whitespace, expected an id "
            "string without it (strip the column)",
        )
    return item_id


def check_candidates(value, row: int | str, context: str) -> list[str]:
    """The row's `candidates` as a list of distinct id strings; raises `ColumnValueError` otherwise.

    `row` is the row's index (or a description such as `"2 of the batch"`), `context` who is reading it."""
    expected = "a non-empty list of distinct candidate id strings"
    if value is None:
        raise _fail(context, "candidates", row, f"got None, expected {expected}")
    if isinstance(value, (str, bytes)):
        # deliberately not parsed: a list stored as text means the dataset was saved in a lossy format
        raise _fail(
            context,
            "candidates",
            row,
            f"got the string {_preview(value)}, expected {expected} (a list "
            "stored as JSON text, e.g. after a CSV round trip, must be decoded, e.g. with json.loads, first)",
        )
    if not isinstance(value, (list, tuple)) and getattr(value, "ndim", None) == 1 and hasattr(value, "tolist"):
        value = value.tolist()  # a 1-D numpy array, as pandas gives list columns
    if not isinstance(value, (list, tuple)):
        raise _fail(context, "candidates", row, f"got {_preview(value)} ({type(value).__name__}), expected {expected}")
    if not value:
        raise _fail(context, "candidates", row, f"got an empty list, expected {expected}")
    ids = [_check_id(context, "candidates", row, c, f"entry {k}") for k, c in enumerate(value)]
    repeated = [(i, n) for i, n in Counter(ids).items() if n > 1]
    if repeated:
        listed = ", ".join(f"{i!r} x{n}" for i, n in repeated)
        raise _fail(context, "candidates", row, f"repeated id(s) {listed}, expected {expected}")
    return ids


def check_target(value, row: int | str, context: str) -> str:
    """The row's `target` as an id string (it need not be among the candidates); raises `ColumnValueError`."""
    return _check_id(context, "target", row, value, "the target")


def check_pre_rank(value, candidates: list[str], target: str, row: int | str, context: str) -> int:
    """The row's `pre_rank`, which must be the target's 0-based position in `candidates` (-1 when absent)."""
    expected = candidates.index(target) if target in candidates else -1
    why = (
        f"the position of the target {target!r} in the candidates"
        if expected >= 0
        else f"the target {target!r} is not among the candidates"
    )
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise _fail(
            context,
            "pre_rank",
            row,
            f"got {_preview(value)} ({type(value).__name__}), expected the int {expected} ({why})",
        )
    if int(value) != expected:
        raise _fail(context, "pre_rank", row, f"got {int(value)}, expected {expected} ({why})")
    return expected


def check_ranking_row(candidates, target, row: int | str, context: str) -> tuple[list[str], str]:
    """`check_candidates` and `check_target` of one row."""
    return check_candidates(candidates, row, context), check_target(target, row, context)
