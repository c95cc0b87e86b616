"""Batching and per-sample noise for `DiffusionSFTTrainer`.

The collator turns SFTTrainer's tokenised rows (`input_ids`, `labels` with -100 on the prompt) into the
`(prompt, completion)` pair the core loss wants: prompts left-padded, completions right-padded, each completion cut
after its first EOS and EOS-padded to a multiple of the block size, plus per-token answer/reasoning weights.

Noise is drawn per sample from a generator seeded by (seed, epoch, sample index), so a sample gets the same mask
whatever batch it lands in: gradient accumulation, resuming from a checkpoint and a different batch size all see
identical masks.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch

from ..modeling.noise import BlockNoise, get_schedule, sample_block_noise


SAMPLE_INDEX = "dgr2_sample_index"


def answer_start(tokenizer, completion_ids: list[int], answer_prefix: str) -> int:
    """Index of the first token of the answer (the token holding the first character of the last `answer_prefix`);
    `len(completion_ids)` when there is no answer.

    The prefix is found in the decoded text, then mapped back to a token by bisection over decoded prefix lengths,
    so it does not matter how the tokenizer merged the characters around it (e.g. `"\\n{"` as one token).
    """
    text = tokenizer.decode(completion_ids, skip_special_tokens=False)
    char = text.rfind(answer_prefix) if answer_prefix else -1
    if char < 0:
        return len(completion_ids)
    low, high = 1, len(completion_ids)  # smallest k with len(decode(ids[:k])) > char
    while low < high:
        mid = (low + high) // 2
        if len(tokenizer.decode(completion_ids[:mid], skip_special_tokens=False)) > char:
            high = mid
        else:
            low = mid + 1
    return low - 1


@dataclass
class DiffusionSFTCollator:
    """Collate tokenised prompt-completion rows for the masked-diffusion loss.

    Returns `prompt_ids`/`prompt_mask` (B, P) left-padded, `completion_ids`/`completion_mask` (B, R) right-padded,
    `token_weights` (B, R) float32 and `sample_index` (B,).
    """

    tokenizer: object
    block_size: int
    answer_prefix: str | None = None
    answer_weight: float = 1.0
    reasoning_weight: float = 1.0
    pad_completion_to_block: bool = True
    max_positions: int | None = None

    def _split(self, example) -> tuple[list[int], list[int]]:
        ids, labels = list(example["input_ids"]), list(example["labels"])
        start = next((i for i, label in enumerate(labels) if label != -100), None)
        if start is None:
            raise ValueError(
                f"sample {example.get(SAMPLE_INDEX, '?')} has no completion tokens (all labels are -100); every row "
                "needs a non-empty completion"
            )
        if start == 0:
            raise ValueError(f"sample {example.get(SAMPLE_INDEX, '?')} has an empty prompt; the AR shift needs one")
        return ids[:start], ids[start:]

    def _finish_completion(self, completion: list[int]) -> list[int]:
        eos = self.tokenizer.eos_token_id  # read at call time: SFTConfig.eos_token may change it
        if not self.pad_completion_to_block or eos is None or eos not in completion:
            return completion
        # Anything after the first EOS (e.g. ChatML's trailing newline) is replaced by EOS up to the block end.
        completion = completion[: completion.index(eos) + 1]
        return completion + [eos] * (-len(completion) % self.block_size)

    def _weights(self, completion: list[int]) -> list[float]:
        if self.answer_weight == self.reasoning_weight:
            return [float(self.answer_weight)] * len(completion)
        start = answer_start(self.tokenizer, completion, self.answer_prefix)
        return [float(self.reasoning_weight)] * start + [float(self.answer_weight)] * (len(completion) - start)

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        prompts, completions, weights = [], [], []
        for example in examples:
            prompt, completion = self._split(example)
            completion = self._finish_completion(completion)
            if self.max_positions is not None and len(prompt) + len(completion) > self.max_positions:
                raise ValueError(
                    f"sample {example.get(SAMPLE_INDEX, '?')}: prompt ({len(prompt)}) + block-padded completion "
                    f"({len(completion)}) tokens exceed the model's max_position_embeddings ({self.max_positions}); "
                    "lower max_length or block_size"
                )
            prompts.append(prompt)
            completions.append(completion)
            weights.append(self._weights(completion))
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        batch, p_len, r_len = len(examples), max(map(len, prompts)), max(map(len, completions))
        prompt_ids = torch.full((batch, p_len), pad, dtype=torch.long)
        prompt_mask = torch.zeros((batch, p_len), dtype=torch.long)
        completion_ids = torch.full((batch, r_len), pad, dtype=torch.long)
        completion_mask = torch.zeros((batch, r_len), dtype=torch.long)
        token_weights = torch.zeros((batch, r_len), dtype=torch.float32)
        for row, (prompt, completion, weight) in enumerate(zip(prompts, completions, weights)):
            prompt_ids[row, p_len - len(prompt) :] = torch.tensor(prompt)
            prompt_mask[row, p_len - len(prompt) :] = 1
            completion_ids[row, : len(completion)] = torch.tensor(completion)
            completion_mask[row, : len(completion)] = 1
            token_weights[row, : len(completion)] = torch.tensor(weight)
        sample_index = torch.tensor([int(e.get(SAMPLE_INDEX, -1)) for e in examples], dtype=torch.long)
        return {
            "prompt_ids": prompt_ids,
            "prompt_mask": prompt_mask,
            "completion_ids": completion_ids,
            "completion_mask": completion_mask,
            "token_weights": token_weights,
            "sample_index": sample_index,
        }


def sample_seed(seed: int, epoch: int | str, index: int) -> int:
    """A stable 63-bit seed for one sample's noise (independent of batch composition and of Python's hash salt)."""
    digest = hashlib.blake2b(f"{seed}:{epoch}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def complementary_time(t: torch.Tensor, schedule, min_t: float, max_t: float) -> torch.Tensor:
    """The time whose mask probability is `1 - p(t)` (`1 - t` for the linear schedule), clamped to `[min_t, max_t]`.

    Found by bisection for other schedules (any monotone `mask_probability` works)."""
    schedule = get_schedule(schedule)
    target = 1.0 - schedule.mask_probability(t)
    if schedule.name == "linear":
        result = target
    else:
        low, high = torch.zeros_like(t), torch.ones_like(t)
        for _ in range(50):
            mid = (low + high) / 2
            below = schedule.mask_probability(mid) < target
            low, high = torch.where(below, mid, low), torch.where(below, high, mid)
        result = (low + high) / 2
    return result.clamp(min=max(min_t, 1e-6), max=max_t)


def per_sample_noise(
    completion_mask: torch.Tensor,
    sample_index: torch.Tensor,
    block_size: int,
    schedule: str,
    min_t: float,
    max_t: float,
    antithetic: bool,
    seed: int,
    epoch: int | str,
) -> BlockNoise:
    """`BlockNoise` for a batch, each row drawn from its own generator over its own real length, so it does not
    depend on the other rows or on the padding."""
    batch, width = completion_mask.shape
    noisy = torch.zeros(batch, width, dtype=torch.bool)
    t = torch.ones(batch, width, dtype=torch.float64)
    lengths = completion_mask.sum(-1).tolist()
    for row, (length, index) in enumerate(zip(lengths, sample_index.tolist())):
        generator = torch.Generator().manual_seed(sample_seed(seed, epoch, index))
        row_noise = sample_block_noise(
            torch.ones(1, int(length), dtype=torch.bool), block_size, schedule, min_t, max_t, antithetic, generator
        )
        noisy[row, :length] = row_noise.noisy_mask[0]
        t[row, :length] = row_noise.t[0].double()
    device = completion_mask.device
    return BlockNoise(noisy_mask=noisy.to(device), t=t.to(device))
