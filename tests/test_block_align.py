"""Answers moved to a block boundary (`dgr2_trl.data.block_align`): where the answer lands in the trained tokens."""

import pytest
from datasets import Dataset

from dgr2_trl.data.block_align import align_answer_to_block, align_answers_to_blocks


TRACE = "the quick brown fox jumps over the lazy dog."
ANSWER = '{"ranking":["a","b"]}'


def answer_token_index(tokenizer, prompt: str, completion: str) -> int:
    """Index of the answer's first token among the completion's tokens, as the trainer tokenizes the pair (chat
    template, prompt with the generation prompt, completion = the rest)."""
    messages = [{"role": "user", "content": prompt}]
    head = tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=True, return_dict=False)
    whole = tokenizer.apply_chat_template(
        messages + [{"role": "assistant", "content": completion}], tokenize=True, return_dict=False
    )
    assert whole[: len(head)] == head
    tail = whole[len(head) :]
    before = len(tokenizer(completion[: completion.rfind('{"ranking"')], add_special_tokens=False)["input_ids"])
    assert tokenizer.decode(tail[before:]).startswith('{"ranking"')  # the count is the in-context position
    return before


@pytest.mark.parametrize("block_size", [4, 8, 32])
@pytest.mark.parametrize("words", [1, 3, 6])
def test_the_answer_starts_a_block_and_nothing_else_changes(tokenizer, block_size, words):
    text = " ".join(TRACE.split()[:words]) + "\n" + ANSWER
    aligned = align_answer_to_block(text, tokenizer, block_size)
    assert answer_token_index(tokenizer, "rank", aligned) % block_size == 0
    assert aligned.replace("\n", "") == text.replace("\n", "")  # only filler was added
    assert align_answer_to_block(aligned, tokenizer, block_size) == aligned  # idempotent


def test_unchanged_without_an_answer_or_when_it_would_not_fit(tokenizer):
    assert align_answer_to_block(TRACE, tokenizer, 8) == TRACE
    text = TRACE + "\n" + ANSWER
    assert align_answer_to_block(text, tokenizer, 32, max_tokens=20) == text
    assert align_answer_to_block(text, tokenizer, 32, max_tokens=200) != text


def test_bad_filler_and_block_size_are_refused(tokenizer):
    with pytest.raises(ValueError, match="not a single token"):
        align_answer_to_block("fox\n" + ANSWER, tokenizer, 32, filler="quick brown")
    with pytest.raises(ValueError, match="block_size"):
        align_answer_to_block("fox\n" + ANSWER, tokenizer, 0)


def test_dataset_of_messages_and_strings(tokenizer):
    text = "fox jumps\n" + ANSWER
    messages = Dataset.from_list(
        [{"prompt": [{"role": "user", "content": "rank"}], "completion": [{"role": "assistant", "content": text}]}]
    )
    out = align_answers_to_blocks(messages, tokenizer, 8)
    content = out[0]["completion"][0]["content"]
    assert out[0]["completion"][0]["role"] == "assistant" and answer_token_index(tokenizer, "rank", content) % 8 == 0
    strings = align_answers_to_blocks(Dataset.from_list([{"prompt": "rank", "completion": text}]), tokenizer, 8)
    assert strings[0]["completion"] == content
