"""Offline tokenizers for models built from a config.

Nothing is fetched from a hub: a small byte-level BPE is trained in seconds on the texts at hand (item titles,
the prompt template), with the chat markers, the end-of-text token and any extra tokens (semantic-id codes)
registered as special tokens, and a ChatML chat template stored with it so `apply_chat_template` works
everywhere (TRL relies on it).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AddedToken, PreTrainedTokenizerFast


PAD_TOKEN = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"

# ChatML, as used by Qwen: `<|im_end|>` closes every turn and is the end-of-sequence token of a reply.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def _pieces_between(texts: Iterable[str], tokens: Sequence[str]) -> Iterator[str]:
    """The text an added token leaves around it: what the BPE sees at encoding time, so it learns merges such as
    `","` between two item tokens instead of ones across them that can never apply."""
    if not tokens:
        yield from texts
        return
    pattern = re.compile("|".join(re.escape(t) for t in sorted(tokens, key=len, reverse=True)))
    for text in texts:
        yield from (piece for piece in pattern.split(text) if piece)


def train_chat_tokenizer(
    texts: Iterable[str],
    vocab_size: int = 2000,
    extra_special_tokens: Sequence[str] = (),
    min_frequency: int = 2,
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on `texts` and wrap it as a chat tokenizer.

    `extra_special_tokens` (e.g. semantic-id codes such as `<a_12>`) are never split and each gets one id, but they
    are added as *non-skipped* tokens: `decode(..., skip_special_tokens=True)` (what TRL and the samplers use to
    produce completion text) keeps them, so a ranking written in item ids survives decoding.
    """
    specials = [PAD_TOKEN, IM_START, IM_END]
    if len({*specials, *extra_special_tokens}) != len(specials) + len(extra_special_tokens):
        raise ValueError("extra_special_tokens repeat a token or clash with the chat markers")
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size + len(specials),
        min_frequency=min_frequency,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(_pieces_between(texts, extra_special_tokens), trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        eos_token=IM_END,
        pad_token=PAD_TOKEN,
        additional_special_tokens=[IM_START],
        clean_up_tokenization_spaces=False,
    )
    tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t in extra_special_tokens])
    tokenizer.chat_template = CHATML_TEMPLATE
    tokenizer.padding_side = "left"
    return tokenizer
