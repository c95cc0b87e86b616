"""An AR teacher that is an HF causal LM in this process (the embedded default)."""

from __future__ import annotations

import inspect

import torch

from .base import Teacher, TeacherScores, check_inputs, empty_scores


class InProcessTeacher(Teacher):
    """Score completions with an HF causal LM, batched, under `torch.no_grad`.

    Sequences are right-padded (so the model's default position ids are right) and processed `batch_size` at a
    time, longest first; log-softmax runs in float32 or better, at temperature 1.

    Args:
        model: an AR `PreTrainedModel` (not a block-diffusion conversion: it is run with its own causal mask).
        tokenizer: the teacher's tokenizer, if available; `check_tokenizer` then compares vocabularies token by token.
        batch_size: sequences per forward pass.
    """

    def __init__(self, model, tokenizer=None, batch_size: int = 16):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size

    @property
    def vocab_size(self) -> int:
        return self.model.get_output_embeddings().weight.shape[0]

    @torch.no_grad()
    def score(self, prompt_ids, completion_ids, top_k: int = 20) -> TeacherScores:
        check_inputs(prompt_ids, completion_ids, top_k)
        top_k = min(top_k, self.vocab_size)
        scores = empty_scores([len(c) for c in completion_ids], top_k)
        device = next(self.model.parameters()).device
        was_training = self.model.training
        self.model.eval()
        order = sorted(range(len(prompt_ids)), key=lambda r: -(len(prompt_ids[r]) + len(completion_ids[r])))
        try:
            for start in range(0, len(order), self.batch_size):
                rows = [r for r in order[start : start + self.batch_size] if len(completion_ids[r])]
                if rows:
                    self._score_rows(rows, prompt_ids, completion_ids, top_k, scores, device)
        finally:
            self.model.train(was_training)
        return scores

    def _score_rows(self, rows, prompt_ids, completion_ids, top_k, scores, device) -> None:
        # Layout [left-padded prompt | right-padded completion]: every row's completion starts at the same column,
        # so `logits_to_keep` can skip the prompt's logits (re-ranking prompts are long, vocabularies large).
        prompt_width = max(len(prompt_ids[r]) for r in rows)
        completion_width = max(len(completion_ids[r]) for r in rows)
        ids = torch.zeros(len(rows), prompt_width + completion_width, dtype=torch.long)
        attention = torch.zeros_like(ids)
        for i, r in enumerate(rows):
            p, n = len(prompt_ids[r]), len(completion_ids[r])
            ids[i, prompt_width - p : prompt_width] = torch.tensor(prompt_ids[r], dtype=torch.long)
            ids[i, prompt_width : prompt_width + n] = torch.tensor(completion_ids[r], dtype=torch.long)
            attention[i, prompt_width - p : prompt_width + n] = 1
        positions = (attention.cumsum(-1) - 1).clamp_min(0)
        kwargs = {}
        if self._accepts_logits_to_keep:
            kwargs["logits_to_keep"] = completion_width + 1
        logits = self.model(
            input_ids=ids.to(device), attention_mask=attention.to(device), position_ids=positions.to(device), **kwargs
        ).logits
        # AR shift: the column before completion token j predicts it; the last kept column predicts nothing.
        logits = logits[:, -(completion_width + 1) : -1]
        if logits.dtype not in (torch.float32, torch.float64):
            logits = logits.float()
        log_probs = torch.log_softmax(logits, dim=-1)
        values, indices = log_probs.topk(top_k, dim=-1)
        targets = ids[:, prompt_width:].to(log_probs.device)
        token = log_probs.gather(-1, targets[..., None]).squeeze(-1)
        for i, r in enumerate(rows):
            n = len(completion_ids[r])
            scores.topk_logprobs[r, :n] = values[i, :n].float().cpu()
            scores.topk_ids[r, :n] = indices[i, :n].cpu()
            scores.token_logprobs[r, :n] = token[i, :n].float().cpu()

    @property
    def _accepts_logits_to_keep(self) -> bool:
        return "logits_to_keep" in inspect.signature(self.model.forward).parameters

    def check_tokenizer(self, tokenizer) -> None:
        check_vocabulary(tokenizer, self.vocab_size, self.tokenizer, "the in-process teacher")


def student_token_ids(tokenizer) -> dict[str, int]:
    """The student's vocabulary without its mask token (the AR teacher never had it)."""
    vocab = dict(tokenizer.get_vocab())
    if getattr(tokenizer, "mask_token", None) is not None:
        vocab.pop(tokenizer.mask_token, None)
    return vocab


def check_vocabulary(student_tokenizer, teacher_vocab_size: int, teacher_tokenizer, name: str) -> None:
    """Every student token (mask aside) must have a teacher row, and, when the teacher's tokenizer is known, the same
    id in it; otherwise teacher log-probs would be read for the wrong tokens."""
    vocab = student_token_ids(student_tokenizer)
    too_large = sorted((i, t) for t, i in vocab.items() if i >= teacher_vocab_size)
    if too_large:
        raise ValueError(
            f"{name} has {teacher_vocab_size} output rows but the student's tokenizer uses ids up to "
            f"{too_large[-1][0]} (e.g. {too_large[:3]}): teacher and student must share one vocabulary"
        )
    if teacher_tokenizer is not None:
        teacher_vocab = teacher_tokenizer.get_vocab()
        differ = [
            (t, i, teacher_vocab.get(t))
            for t, i in sorted(vocab.items(), key=lambda kv: kv[1])
            if teacher_vocab.get(t) != i
        ]
        if differ:
            raise ValueError(
                f"{name}'s tokenizer differs from the student's on {len(differ)} tokens, e.g. "
                + ", ".join(f"{t!r}: student {i}, teacher {j}" for t, i, j in differ[:5])
            )
