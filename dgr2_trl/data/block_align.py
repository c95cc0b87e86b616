"""Completions whose answer starts a new diffusion block.

A block decoder fills a block's positions in parallel. When the end of the reasoning trace and the start of the
answer share a block, answer tokens can commit before the trace tokens they depend on, and the answer then
disagrees with the trace (a candidate promoted by the answer and repeated below it: a duplicate id). Padding the
trace with a filler token up to the next block boundary puts the answer in blocks of its own, decoded with the whole
trace finished and cached, exactly as an AR model conditions on it.
"""

from __future__ import annotations

from .prompts import RANKING_ANSWER_PREFIX


def _num_tokens(tokenizer, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def align_answer_to_block(
    text: str,
    tokenizer,
    block_size: int,
    answer_prefix: str = RANKING_ANSWER_PREFIX,
    filler: str = "\n",
    max_tokens: int | None = None,
) -> str:
    """`text` with `filler` repeated before its last `answer_prefix`, so that the answer's first token is at a
    multiple of `block_size` in the completion's tokens. Unchanged when it has no answer, is already aligned, or
    when the aligned completion (plus its EOS) would exceed `max_tokens`.

    Raises `ValueError` when `filler` is not one token or merges with its neighbours under `tokenizer`."""
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    start = text.rfind(answer_prefix)
    if start < 0:
        return text
    if _num_tokens(tokenizer, filler) != 1:
        raise ValueError(f"filler {filler!r} is not a single token under this tokenizer; choose another")
    before = _num_tokens(tokenizer, text[:start])
    count = (-before) % block_size
    if count == 0:
        return text
    aligned = text[:start] + filler * count + text[start:]
    if max_tokens is not None and _num_tokens(tokenizer, aligned) + 1 > max_tokens:
        return text
    if _num_tokens(tokenizer, aligned[: start + len(filler) * count]) % block_size:
        raise ValueError(f"filler {filler!r} merges with the tokens around it under this tokenizer; choose another")
    return aligned


def align_answers_to_blocks(
    dataset,
    tokenizer,
    block_size: int,
    answer_prefix: str = RANKING_ANSWER_PREFIX,
    filler: str = "\n",
    max_tokens: int | None = None,
):
    """A copy of a prompt-completion `datasets.Dataset` whose completions (a string, or one assistant message)
    go through `align_answer_to_block`."""

    def align(row):
        completion = row["completion"]
        if isinstance(completion, str):
            return {
                "completion": align_answer_to_block(
                    completion, tokenizer, block_size, answer_prefix, filler, max_tokens
                )
            }
        if len(completion) != 1 or "content" not in completion[0]:
            raise ValueError(f"expected a completion string or one message, got {completion!r}")
        content = align_answer_to_block(
            completion[0]["content"], tokenizer, block_size, answer_prefix, filler, max_tokens
        )
        return {"completion": [{**completion[0], "content": content}]}

    return dataset.map(align, desc="answers to block boundaries")
