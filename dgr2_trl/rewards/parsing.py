"""Parse a model's answer into a ranking of the candidate ids.

Tolerant about what surrounds the answer (reasoning before it, code fences, whitespace); strict about the
ranking itself: it must be an exact permutation of the candidates. Never raises on any text.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass


REASONS = ("ok", "unparsable", "duplicate", "missing", "out_of_set")
# Bounds that keep parsing cheap on adversarial text: only the last few `{` are tried, on a bounded tail.
_MAX_CHARS = 20_000
_MAX_ATTEMPTS = 64
_DECODER = json.JSONDecoder()


@dataclass(frozen=True)
class ParsedRanking:
    """`ranking` is the permutation when `valid`, else None; `raw` is whatever list was found (or None);
    `reason` is one of `REASONS`."""

    ranking: list[str] | None
    valid: bool
    reason: str
    raw: list | None = None


def completion_text(completion) -> str:
    """The text of a completion given as a string or as chat messages (TRL's conversational format): the last
    assistant message's content (string or list of text parts)."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        completion = [completion]
    if isinstance(completion, (list, tuple)):
        messages = [m for m in completion if isinstance(m, dict)]
        assistant = [m for m in messages if m.get("role") == "assistant"] or messages
        if not assistant:
            return ""
        content = assistant[-1].get("content", "")
        if isinstance(content, list):  # [{"type": "text", "text": ...}, ...]
            return "".join(
                p.get("text", "") for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)
            )
        return content if isinstance(content, str) else ""
    return ""


def _find_ranking_list(text: str) -> list | None:
    """The `ranking` list of the last JSON object in `text` that has one."""
    text = text[-_MAX_CHARS:]
    start = len(text)
    for _ in range(_MAX_ATTEMPTS):
        start = text.rfind("{", 0, start)
        if start < 0:
            return None
        try:
            obj, _end = _DECODER.raw_decode(text, start)
        except (ValueError, RecursionError):  # bad JSON, too many digits, too deep
            continue
        if isinstance(obj, dict) and isinstance(obj.get("ranking"), list):
            return obj["ranking"]
    return None


def _as_id(value) -> str | None:
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, int) and not isinstance(value, bool):  # plain numeric ids written without quotes
        return str(value)
    return None


def parse_ranking(text, candidates: Sequence[str]) -> ParsedRanking:
    """Parse `{"ranking": [...]}` (the last such object in `text`) and check it against `candidates`.

    Reasons, checked in this order: `unparsable` (no such object), `out_of_set` (an entry that is not a candidate
    id), `duplicate` (a candidate twice), `missing` (some candidate absent). `text` may also be chat messages.
    """
    try:
        raw = _find_ranking_list(completion_text(text))
    except Exception:  # belt and braces: the contract is to never raise on model output
        raw = None
    if raw is None:
        return ParsedRanking(None, False, "unparsable", None)
    allowed = {str(c) for c in candidates}
    ids = [_as_id(v) for v in raw]
    if any(i is None or i not in allowed for i in ids):
        return ParsedRanking(None, False, "out_of_set", raw)
    if len(set(ids)) != len(ids):
        return ParsedRanking(None, False, "duplicate", raw)
    if len(ids) != len(allowed):
        return ParsedRanking(None, False, "missing", raw)
    return ParsedRanking(ids, True, "ok", raw)
