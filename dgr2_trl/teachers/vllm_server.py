"""An AR teacher served by vLLM over HTTP (`/v1/completions` with `prompt_logprobs`), using only the stdlib.

vLLM is never imported here: the server runs in its own environment (see scripts/install_vllm_cpu.sh and
scripts/start_teacher_server.sh), the trainer only speaks HTTP to it.
"""

from __future__ import annotations

import http.client
import json
import logging
import math
import socket
import time
import urllib.error
import urllib.request
import warnings

from .base import Teacher, TeacherScores, check_inputs, empty_scores
from .in_process import student_token_ids

logger = logging.getLogger(__name__)

PROBE_TEXT = "The quick brown fox jumps over the lazy dog. 0123456789"


class TeacherServerError(RuntimeError):
    """The teacher server could not be reached, or answered something unusable."""


class VLLMServerTeacher(Teacher):
    """Teacher log-probs from an OpenAI-compatible vLLM server (`vllm serve PATH` or
    `python -m vllm.entrypoints.openai.api_server --model PATH --max-logprobs -1`).

    Each completion is sent as token ids (`prompt = prompt_ids + completion_ids`) with `max_tokens=1`,
    `temperature=1` and every truncating sampling parameter explicitly disabled (vLLM would otherwise apply the
    model's `generation_config.json` defaults, e.g. Qwen3's top_k=20/top_p=0.95), asking for `prompt_logprobs=k`.
    vLLM returns, per prompt position, the top-k entries plus the actual token, so the actual token's log-prob is
    exact even when it falls outside the top-k.

    At construction it reads `/v1/models` (a clear error naming the URL if the server is unreachable) and, unless
    `check_logprobs=False`, probes that the server returns real, untruncated log-probs (not logits, not renormalised
    over the top-k support), warning otherwise.

    Args:
        base_url: e.g. `http://127.0.0.1:8000`.
        model: served model name; default: the first one `/v1/models` lists.
        timeout: seconds per HTTP request.
        max_retries: retries of a failed request (connection refused/reset, timeout, HTTP 5xx), with exponential
            back-off `backoff_s * 2**attempt`; HTTP 4xx is not retried.
        batch_size: sequences per `/v1/completions` request.
    """

    def __init__(
        self,
        base_url: str,
        model: str | None = None,
        timeout: float = 300.0,
        max_retries: int = 4,
        backoff_s: float = 0.5,
        batch_size: int = 32,
        check_logprobs: bool = True,
    ):
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must start with http:// or https://, got {base_url!r}")
        self.base_url = base_url.rstrip("/")
        if self.base_url.endswith("/v1"):  # accept the OpenAI-style base URL too
            self.base_url = self.base_url[: -len("/v1")]
        self.timeout, self.max_retries, self.backoff_s, self.batch_size = timeout, max_retries, backoff_s, batch_size
        self.num_retries = 0  # retries made so far (a health signal; tests read it)
        self._vocab_size = None
        models = self._request("GET", "/v1/models").get("data") or []
        if not models:
            raise TeacherServerError(f"the vLLM server at {self.base_url} serves no model (/v1/models is empty)")
        names = [m.get("id") for m in models]
        if model is not None and model not in names:
            raise TeacherServerError(f"the vLLM server at {self.base_url} serves {names}, not {model!r}")
        entry = models[names.index(model)] if model is not None else models[0]
        self.model = entry["id"]
        self.max_model_len = entry.get("max_model_len")
        if check_logprobs:
            self.check_logprobs()

    # ---- HTTP -----------------------------------------------------------------------------------------------
    def _request(self, method: str, path: str, payload: dict | None = None) -> dict:
        url = self.base_url + path
        data = None if payload is None else json.dumps(payload).encode()
        errors = []
        start = time.perf_counter()
        for attempt in range(self.max_retries + 1):
            if attempt:
                self.num_retries += 1
                delay = self.backoff_s * 2 ** (attempt - 1)
                logger.warning("teacher server %s: %s failed (%s); retry %d/%d in %.1fs",
                               self.base_url, path, errors[-1], attempt, self.max_retries, delay)
                time.sleep(delay)
            request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    return json.loads(response.read())
            except urllib.error.HTTPError as error:
                body = error.read().decode(errors="replace")[:500]
                if error.code < 500:  # the request itself is wrong: retrying cannot help
                    raise TeacherServerError(f"{method} {url} answered HTTP {error.code}: {body}") from error
                errors.append(f"HTTP {error.code}: {body}")
            except (urllib.error.URLError, ConnectionError, TimeoutError, socket.timeout,
                    http.client.HTTPException) as error:
                errors.append(f"{type(error).__name__}: {getattr(error, 'reason', error)}")
            except json.JSONDecodeError as error:
                errors.append(f"invalid JSON: {error}")
        raise TeacherServerError(
            f"the vLLM teacher server at {self.base_url} is unreachable: {method} {path} failed "
            f"{self.max_retries + 1} times in {time.perf_counter() - start:.1f}s (last error: {errors[-1]}). "
            "Is it running? See scripts/start_teacher_server.sh."
        )

    def _prompt_logprobs(self, sequences: list[list[int]], top_k: int) -> list[list[dict | None]]:
        payload = {
            "model": self.model,
            "prompt": sequences,
            "max_tokens": 1,
            "temperature": 1.0,
            "top_p": 1.0,
            "top_k": -1,
            "min_p": 0.0,
            "repetition_penalty": 1.0,
            "prompt_logprobs": top_k,
        }
        choices = self._request("POST", "/v1/completions", payload).get("choices")
        if not isinstance(choices, list) or len(choices) != len(sequences):
            raise TeacherServerError(
                f"{self.base_url}/v1/completions returned {0 if not choices else len(choices)} choices for "
                f"{len(sequences)} prompts"
            )
        choices = sorted(choices, key=lambda c: c.get("index", 0))
        out = []
        for choice, seq in zip(choices, sequences):
            entries = choice.get("prompt_logprobs")
            if entries is None or len(entries) != len(seq):
                raise TeacherServerError(
                    f"{self.base_url} returned no/short prompt_logprobs ({None if entries is None else len(entries)} "
                    f"for {len(seq)} tokens); is this a vLLM server?"
                )
            out.append(entries)
        return out

    # ---- Teacher API ------------------------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int | None:
        return self._vocab_size

    def score(self, prompt_ids, completion_ids, top_k: int = 20) -> TeacherScores:
        check_inputs(prompt_ids, completion_ids, top_k)
        if self.max_model_len is not None:
            for row, (p, c) in enumerate(zip(prompt_ids, completion_ids)):
                if len(p) + len(c) > self.max_model_len:
                    raise ValueError(
                        f"sequence {row} has {len(p) + len(c)} tokens, more than the teacher server's max_model_len "
                        f"{self.max_model_len} ({self.base_url}); restart it with a larger --max-model-len"
                    )
        scores = empty_scores([len(c) for c in completion_ids], top_k)
        rows = [r for r in range(len(prompt_ids)) if len(completion_ids[r])]
        for start in range(0, len(rows), self.batch_size):
            chunk = rows[start : start + self.batch_size]
            sequences = [list(map(int, prompt_ids[r])) + list(map(int, completion_ids[r])) for r in chunk]
            for r, seq, entries in zip(chunk, sequences, self._prompt_logprobs(sequences, top_k)):
                offset = len(prompt_ids[r])
                for j in range(len(completion_ids[r])):
                    self._fill(scores, r, j, entries[offset + j], seq[offset + j], top_k)
        return scores

    def _fill(self, scores: TeacherScores, row: int, j: int, entry: dict | None, token: int, top_k: int) -> None:
        if not entry:
            raise TeacherServerError(f"{self.base_url} returned no log-probs for completion position {j} of row {row}")
        items = sorted(((int(t), v) for t, v in entry.items()), key=lambda kv: (kv[1].get("rank", 0), -kv[1]["logprob"]))
        top = [(t, _finite(v["logprob"])) for t, v in items if v.get("rank", 1) <= top_k][:top_k]
        if token not in {t for t, _ in top} and str(token) not in entry:
            raise TeacherServerError(f"{self.base_url} omitted the actual token {token} at position {j} of row {row}")
        for k, (t, value) in enumerate(top):
            scores.topk_ids[row, j, k] = t
            scores.topk_logprobs[row, j, k] = value
        scores.token_logprobs[row, j] = _finite(entry[str(token)]["logprob"])

    def check_logprobs(self, top_k: int = 5) -> None:
        """Probe that the server returns untruncated temperature-1 log-probs: error on logits, warn on
        renormalisation over the top-k support or on a distribution that does not sum to 1."""
        probe = self._request("POST", "/tokenize", {"model": self.model, "prompt": PROBE_TEXT,
                                                   "add_special_tokens": False}).get("tokens") or [0, 1, 2]
        probe = probe[:8]
        partial = self._prompt_logprobs([probe], top_k)[0]
        values = [v["logprob"] for entry in partial[1:] if entry for v in entry.values()]
        if any(v > 1e-4 for v in values):
            raise TeacherServerError(
                f"the server at {self.base_url} returns positive 'log-probs' (max {max(values):.3g}): it is configured "
                "to return logits (--logprobs-mode raw_logits/processed_logits); restart it with the default "
                "--logprobs-mode raw_logprobs"
            )
        try:  # the full distribution at one position (needs --max-logprobs -1; 400 otherwise)
            full = self._prompt_logprobs([probe[:2]], -1)[0][1]
        except TeacherServerError as error:
            logger.info("full-vocabulary prompt_logprobs refused by %s (%s); skipping the mass check", self.base_url, error)
            full = None
        if full:
            self._vocab_size = len(full)
            mass = sum(math.exp(v["logprob"]) for v in full.values())
            if abs(mass - 1.0) > 1e-3:
                warnings.warn(f"the teacher server at {self.base_url} returns log-probs summing to {mass:.4f} over the "
                              "vocabulary, not 1: its log-probs are processed (temperature/penalties); results will be biased")
            reference = {int(t): v["logprob"] for t, v in full.items()}
            sent = {int(t): v["logprob"] for t, v in partial[1].items()}
            gap = max(abs(reference[t] - v) for t, v in sent.items())
            if gap > 1e-3:
                warnings.warn(f"the teacher server at {self.base_url} returns different top-{top_k} log-probs than its "
                              f"full distribution (max gap {gap:.3g}): it renormalises truncated log-probs "
                              "(--logprobs-mode processed_logprobs with top-k/top-p); use raw_logprobs")
        else:
            masses = [sum(math.exp(v["logprob"]) for v in entry.values()) for entry in partial[1:] if entry]
            if masses and all(abs(m - 1.0) < 1e-6 for m in masses):
                warnings.warn(f"the top-{top_k} probabilities of the teacher server at {self.base_url} sum to 1 at every "
                              "probe position: it probably renormalises over the truncated support")

    def check_tokenizer(self, tokenizer) -> None:
        """The served tokenizer must give the student's ids on a probe covering the chat markers, special tokens
        and tokens spread over the whole vocabulary; and the served vocabulary must cover the student's ids."""
        vocab = student_token_ids(tokenizer)
        ids = sorted(vocab.values())
        spread = [ids[i] for i in range(0, len(ids), max(1, len(ids) // 64))] + [ids[-1]]
        specials = [t for t in tokenizer.all_special_tokens if t in vocab]
        text = " ".join(specials) + " " + PROBE_TEXT + " " + tokenizer.decode(spread)
        if getattr(tokenizer, "chat_template", None):
            text += tokenizer.apply_chat_template([{"role": "user", "content": PROBE_TEXT}], tokenize=False,
                                                  add_generation_prompt=True)
        local = tokenizer(text, add_special_tokens=False)["input_ids"]
        served = self._request("POST", "/tokenize", {"model": self.model, "prompt": text,
                                                    "add_special_tokens": False}).get("tokens")
        if served != local:
            first = next((i for i, (a, b) in enumerate(zip(local, served or [])) if a != b), min(len(local), len(served or [])))
            raise ValueError(
                f"the teacher served at {self.base_url} ({self.model}) tokenizes differently from the student's "
                f"tokenizer: first difference at token {first} (student {local[first:first + 5]}, server "
                f"{(served or [])[first:first + 5]}); teacher and student must share one vocabulary"
            )
        if self._vocab_size is not None and ids[-1] >= self._vocab_size:
            raise ValueError(f"the teacher served at {self.base_url} has {self._vocab_size} vocabulary rows but the "
                             f"student's tokenizer uses ids up to {ids[-1]}")


def _finite(value: float) -> float:
    # vLLM reports NaN for -inf log-probs in some versions; -inf is what they mean.
    return float("-inf") if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)
