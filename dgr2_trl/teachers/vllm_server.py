"""An AR teacher served by vLLM over HTTP (`/v1/completions` with `prompt_logprobs`), using only the stdlib.

vLLM is never imported here: the server runs in its own environment (see scripts/install_vllm_cpu.sh and
scripts/start_teacher_server.sh), the trainer only speaks HTTP to it.

Every reply is checked before use: well-formed JSON of the wrong shape, NaN or positive "log-probs" raise
`TeacherReplyError` (a `TeacherServerError`) naming the URL and what was expected, instead of an AttributeError deep
inside the parsing or, worse, scores that are silently wrong.
"""

from __future__ import annotations

import email.utils
import http.client
import io
import ipaddress
import json
import logging
import math
import time
import urllib.error
import urllib.parse
import urllib.request
import warnings
from datetime import datetime, timezone

from .base import Teacher, TeacherScores, check_inputs, empty_scores
from .in_process import student_token_ids


logger = logging.getLogger(__name__)

PROBE_TEXT = "The quick brown fox jumps over the lazy dog. 0123456789"
# log(1) = 0 computed in float32 can come out a hair above 0; anything larger is a logit, not a log-prob.
LOGPROB_TOLERANCE = 1e-4
# HTTP statuses that say "try again later" rather than "this request is wrong".
RETRIED_STATUSES = frozenset({429})
ENTRY_SHAPE = 'an object {"<token id>": {"logprob": <number <= 0>, "rank": <int>}, ...}'


class TeacherServerError(RuntimeError):
    """The teacher server could not be reached, or answered something unusable."""


class TeacherReplyError(TeacherServerError):
    """The teacher server answered well-formed JSON of the wrong shape or with impossible values. Not retried:
    asking again would get the same answer."""


def _preview(value, limit: int = 200) -> str:
    text = json.dumps(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_non_negative_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _is_loopback(hostname: str) -> bool:
    """True for names and addresses that reach this machine (0.0.0.0 and :: do too, on Linux)."""
    hostname = hostname.lower().rstrip(".")
    if hostname == "localhost" or hostname.endswith(".localhost"):
        return True
    try:
        address = ipaddress.ip_address(hostname)
    except ValueError:
        return False
    return address.is_loopback or address.is_unspecified


def _retry_after_s(headers) -> float | None:
    """Seconds a `Retry-After` header asks to wait (a number of seconds or an HTTP date), None without one."""
    value = headers.get("Retry-After") if headers is not None else None
    if value is None:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)
        seconds = (when - datetime.now(timezone.utc)).total_seconds()
    return max(0.0, seconds) if math.isfinite(seconds) else None


# ---- a per-request deadline -----------------------------------------------------------------------------------
# A socket timeout bounds each read, not the request: a server trickling one byte per read would hold a request
# for as long as it likes. So every send and receive on the connection gets only the time left before the deadline.
class _DeadlineSocket:
    def __init__(self, sock, deadline: float):
        self._sock, self._deadline = sock, deadline

    def arm(self) -> None:
        remaining = self._deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("no complete reply before the request's deadline")
        self._sock.settimeout(remaining)

    def sendall(self, data, *args):
        self.arm()
        return self._sock.sendall(data, *args)

    def makefile(self, mode="r", *args, **kwargs):
        if mode != "rb":  # http.client only ever reads the reply in binary
            raise ValueError(f"unsupported mode {mode!r}")
        # the socket's own unbuffered file keeps it open until the reply is read, as http.client expects
        return io.BufferedReader(_DeadlineReader(self, self._sock.makefile("rb", buffering=0)))

    def __getattr__(self, name):
        return getattr(self._sock, name)


class _DeadlineReader(io.RawIOBase):
    def __init__(self, sock: _DeadlineSocket, raw):
        super().__init__()
        self._sock, self._raw = sock, raw

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        self._sock.arm()
        return self._raw.readinto(buffer)

    def close(self) -> None:
        if not self.closed:
            self._raw.close()
        super().close()


class _DeadlineConnection:
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # urllib makes a connection per request right before using it: its timeout becomes the request's deadline
        self._deadline = time.monotonic() + self.timeout if _is_number(self.timeout) else None

    def connect(self):
        super().connect()  # bounded by the socket timeout, which is the whole budget at this point
        if self._deadline is not None:
            self.sock = _DeadlineSocket(self.sock, self._deadline)


class _DeadlineHTTPConnection(_DeadlineConnection, http.client.HTTPConnection):
    pass


class _DeadlineHTTPHandler(urllib.request.HTTPHandler):
    def http_open(self, req):
        return self.do_open(_DeadlineHTTPConnection, req)


_handlers = [_DeadlineHTTPHandler]
if hasattr(http.client, "HTTPSConnection"):  # Python built without ssl has none

    class _DeadlineHTTPSConnection(_DeadlineConnection, http.client.HTTPSConnection):
        pass

    class _DeadlineHTTPSHandler(urllib.request.HTTPSHandler):
        def https_open(self, req):
            return self.do_open(_DeadlineHTTPSConnection, req)  # http.client's default, verifying, context

    _handlers.append(_DeadlineHTTPSHandler)


def _opener_for(base_url: str) -> urllib.request.OpenerDirector:
    """Never through a proxy for a server on this machine (token ids must not leave it because `http_proxy` is set
    and `no_proxy` is not); for any other host the usual `*_proxy`/`no_proxy` environment, read now, applies."""
    hostname = urllib.parse.urlsplit(base_url).hostname or ""
    proxies = urllib.request.ProxyHandler({} if _is_loopback(hostname) else None)
    return urllib.request.build_opener(proxies, *(handler() for handler in _handlers))


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
    over the top-k support), warning otherwise. Every scoring reply is checked too: NaN or positive "log-probs", or
    JSON of another shape than vLLM's, raise `TeacherReplyError` naming the URL.

    Requests to a server on this machine (localhost, 127.0.0.0/8, ::1) never go through a proxy; for other hosts
    the `http_proxy`/`https_proxy`/`no_proxy` environment at construction applies, as for any urllib client.

    Args:
        base_url: e.g. `http://127.0.0.1:8000`.
        model: served model name; default: the first one `/v1/models` lists.
        timeout: seconds one HTTP attempt may take in all (connect, send, and reading the whole reply), not per
            socket read. A timed-out attempt is retried like a refused one, so one call takes at most
            `(max_retries + 1) * timeout` plus the back-off.
        max_retries: retries of a failed request (connection refused/reset, timeout, HTTP 429 and 5xx, a truncated,
            undecodable or non-JSON body), with exponential back-off `backoff_s * 2**attempt`, or longer when the
            server sends `Retry-After` (honoured up to `max_retry_after_s`); other HTTP 4xx are not retried.
        batch_size: sequences per `/v1/completions` request.
    """

    max_retry_after_s = 60.0  # a server asking to wait longer is treated as asking for this long

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
        self._opener = _opener_for(self.base_url)
        entry = self._model_entry(model)
        self.model = entry["id"]
        self.max_model_len = entry.get("max_model_len")
        if check_logprobs:
            self.check_logprobs()

    # ---- HTTP -----------------------------------------------------------------------------------------------
    def _request(self, method: str, path: str, payload: dict | None = None):
        """The decoded JSON reply, after retrying transport failures and garbage (its shape is the caller's to
        check)."""
        url = self.base_url + path
        data = None if payload is None else json.dumps(payload).encode()
        errors = []
        retry_after = None
        start = time.monotonic()
        for attempt in range(self.max_retries + 1):
            if attempt:
                self.num_retries += 1
                delay = self.backoff_s * 2 ** (attempt - 1)
                if retry_after is not None:
                    delay = max(delay, min(retry_after, self.max_retry_after_s))
                logger.warning(
                    "teacher server %s: %s failed (%s); retry %d/%d in %.1fs",
                    self.base_url,
                    path,
                    errors[-1],
                    attempt,
                    self.max_retries,
                    delay,
                )
                time.sleep(delay)
            retry_after = None
            request = urllib.request.Request(
                url, data=data, method=method, headers={"Content-Type": "application/json"}
            )
            try:
                with self._opener.open(request, timeout=self.timeout) as response:
                    body = response.read()
            except urllib.error.HTTPError as error:
                detail = _error_detail(error)
                if error.code < 500 and error.code not in RETRIED_STATUSES:  # the request itself is wrong
                    raise TeacherServerError(f"{method} {url} answered HTTP {error.code}: {detail}") from error
                retry_after = _retry_after_s(error.headers)
                errors.append(f"HTTP {error.code}: {detail}")
                continue
            except (OSError, http.client.HTTPException) as error:  # URLError, refused/reset, timeout, truncated
                errors.append(f"{type(error).__name__}: {getattr(error, 'reason', error)}")
                continue
            try:
                return json.loads(body.decode("utf-8-sig"))
            except UnicodeDecodeError as error:
                errors.append(f"undecodable reply, expected UTF-8 JSON: {error}")
            except (ValueError, RecursionError) as error:  # JSONDecodeError is a ValueError
                errors.append(f"invalid JSON: {error}")
        raise TeacherServerError(
            f"the vLLM teacher server at {self.base_url} is unreachable or failing: {method} {url} failed "
            f"{self.max_retries + 1} times in {time.monotonic() - start:.1f}s (last error: {errors[-1]}). "
            "Is it running? See scripts/start_teacher_server.sh."
        )

    def _unexpected(self, path: str, what: str, value, expected: str) -> TeacherReplyError:
        subject = f"{what} " if what else ""
        return TeacherReplyError(
            f"{self.base_url}{path} answered {subject}{_preview(value)}; expected {expected}. Is this a vLLM server?"
        )

    # ---- replies, checked ---------------------------------------------------------------------------------------
    def _model_entry(self, model: str | None) -> dict:
        path = "/v1/models"
        reply = self._request("GET", path)
        models = reply.get("data") if isinstance(reply, dict) else None
        if not isinstance(models, list):
            raise self._unexpected(path, "", reply, 'an object {"data": [{"id": "<model name>", ...}, ...]}')
        for entry in models:
            if not isinstance(entry, dict) or not isinstance(entry.get("id"), str) or not entry["id"]:
                raise self._unexpected(path, "a model entry", entry, 'an object {"id": "<model name>", ...}')
            length = entry.get("max_model_len")
            if length is not None and not (_is_non_negative_int(length) and length > 0):
                raise self._unexpected(path, "max_model_len", length, "a positive integer or null")
        if not models:
            raise TeacherServerError(f"the vLLM server at {self.base_url} serves no model (/v1/models is empty)")
        names = [m["id"] for m in models]
        if model is not None and model not in names:
            raise TeacherServerError(f"the vLLM server at {self.base_url} serves {names}, not {model!r}")
        return models[names.index(model)] if model is not None else models[0]

    def _tokenize(self, text: str) -> list[int]:
        path = "/tokenize"
        reply = self._request("POST", path, {"model": self.model, "prompt": text, "add_special_tokens": False})
        tokens = reply.get("tokens") if isinstance(reply, dict) else None
        if not isinstance(tokens, list) or not all(_is_non_negative_int(t) for t in tokens):
            raise self._unexpected(path, "", reply, 'an object {"tokens": [<token id>, ...]}')
        return tokens

    def _prompt_logprobs(self, sequences: list[list[int]], top_k: int) -> list[list]:
        """Per sequence, vLLM's raw prompt_logprobs list (one entry per token), in the order of `sequences`. The
        entries are parsed by `_logprob_entry` only where used: prompts are often far longer than completions."""
        path = "/v1/completions"
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
        reply = self._request("POST", path, payload)
        choices = reply.get("choices") if isinstance(reply, dict) else None
        if not isinstance(choices, list) or not all(isinstance(c, dict) for c in choices):
            raise self._unexpected(path, "", reply, 'an object {"choices": [...]} with one object per prompt')
        if len(choices) != len(sequences):
            raise TeacherReplyError(
                f"{self.base_url}{path} returned {len(choices)} choices for {len(sequences)} "
                "prompts; expected one per prompt"
            )
        indices = [c.get("index") for c in choices]
        if any(i is not None for i in indices):  # vLLM numbers them; order them by it
            if not all(_is_non_negative_int(i) for i in indices) or sorted(indices) != list(range(len(choices))):
                raise self._unexpected(path, "choice indices", indices, f"each of 0..{len(choices) - 1} once")
            choices = sorted(choices, key=lambda c: c["index"])
        out = []
        for prompt, (choice, seq) in enumerate(zip(choices, sequences)):
            entries = choice.get("prompt_logprobs")
            if entries is not None and not isinstance(entries, list):
                raise self._unexpected(
                    path,
                    f"prompt_logprobs of prompt {prompt}",
                    entries,
                    f"a list with one {ENTRY_SHAPE} per prompt token",
                )
            if entries is None or len(entries) != len(seq):
                count = None if entries is None else len(entries)
                raise TeacherReplyError(
                    f"{self.base_url}{path} returned no/short prompt_logprobs ({count} for {len(seq)} tokens; "
                    "expected one entry per prompt token); is this a vLLM server?"
                )
            out.append(entries)
        return out

    def _logprob_entry(self, entry, row: int, position: int) -> dict[int, tuple[float, int | None]]:
        """One prompt_logprobs entry as `{token id: (logprob, rank or None)}`, every value checked to be a log-prob."""
        path = "/v1/completions"
        where = f"at token {position} of sequence {row}"
        if not isinstance(entry, dict) or not entry:
            raise self._unexpected(path, f"prompt_logprobs {where}:", entry, ENTRY_SHAPE)
        parsed = {}
        for key, value in entry.items():
            # canonical decimal ids only: "07" or " 7" would alias token 7, a token's text is not an id at all
            if not (key.isascii() and key.isdigit() and str(int(key)) == key):
                raise self._unexpected(
                    path, f"a prompt_logprobs key {where}:", key, f"token ids as keys of {ENTRY_SHAPE}"
                )
            if not isinstance(value, dict) or not _is_number(value.get("logprob")):
                raise self._unexpected(
                    path,
                    f"the entry of token {key} {where}:",
                    value,
                    'an object {"logprob": <number <= 0>, "rank": <int>}',
                )
            logprob, rank = float(value["logprob"]), value.get("rank")
            if math.isnan(logprob):
                raise TeacherReplyError(
                    f"{self.base_url}{path} returned a NaN log-prob for token {key} {where}: "
                    "the teacher's forward pass is broken (overflow in its dtype?)"
                )
            if logprob > LOGPROB_TOLERANCE:
                raise TeacherReplyError(
                    f"the server at {self.base_url} returns positive 'log-probs' ({logprob:.3g} for token {key} "
                    f"{where}; expected <= 0): it is configured to return logits (--logprobs-mode "
                    "raw_logits/processed_logits); restart it with the default --logprobs-mode raw_logprobs"
                )
            if rank is not None and not _is_non_negative_int(rank):
                raise self._unexpected(path, f"the rank of token {key} {where}:", rank, "a non-negative integer")
            parsed[int(key)] = (logprob, rank)
        return parsed

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
                    entry = self._logprob_entry(entries[offset + j], r, offset + j)
                    self._fill(scores, r, j, entry, seq[offset + j], top_k)
        return scores

    def _fill(self, scores: TeacherScores, row: int, j: int, entry: dict, token: int, top_k: int) -> None:
        # vLLM ranks are 1-based ranks in the whole vocabulary: the actual token may be there with a rank > top_k
        ranked = sorted(entry.items(), key=lambda item: (item[1][1] or 0, -item[1][0]))
        top = [(t, logprob) for t, (logprob, rank) in ranked if (1 if rank is None else rank) <= top_k][:top_k]
        if token not in entry:
            raise TeacherReplyError(
                f"{self.base_url}/v1/completions omitted the actual token {token} at completion "
                f"position {j} of row {row}"
            )
        for k, (t, value) in enumerate(top):
            scores.topk_ids[row, j, k] = t
            scores.topk_logprobs[row, j, k] = value
        scores.token_logprobs[row, j] = entry[token][0]

    def check_logprobs(self, top_k: int = 5) -> None:
        """Probe that the server returns untruncated temperature-1 log-probs: error on logits, warn on
        renormalisation over the top-k support or on a distribution that does not sum to 1."""
        probe = self._tokenize(PROBE_TEXT)[:8]
        if len(probe) < 2:  # position 0 predicts nothing: at least two tokens
            probe = [0, 1, 2]
        # positive values (logits) raise while parsing
        partial = [None] + [
            self._logprob_entry(entry, 0, position)
            for position, entry in enumerate(self._prompt_logprobs([probe], top_k)[0])
            if position
        ]
        try:  # the full distribution at one position (needs --max-logprobs -1; 400 otherwise)
            full = self._logprob_entry(self._prompt_logprobs([probe[:2]], -1)[0][1], 0, 1)
        except TeacherReplyError:
            raise  # the server answered, wrongly: not a refusal to skip
        except TeacherServerError as error:
            logger.info(
                "full-vocabulary prompt_logprobs refused by %s (%s); skipping the mass check", self.base_url, error
            )
            full = None
        if full:
            self._vocab_size = len(full)
            mass = sum(math.exp(logprob) for logprob, _ in full.values())
            if abs(mass - 1.0) > 1e-3:
                warnings.warn(
                    f"the teacher server at {self.base_url} returns log-probs summing to {mass:.4f} over the "
                    "vocabulary, not 1: its log-probs are processed (temperature/penalties); results will be biased"
                )
            missing = sorted(set(partial[1]) - set(full))
            if missing:
                raise TeacherReplyError(
                    f"the full distribution from {self.base_url}/v1/completions lacks tokens "
                    f"{missing[:10]} that its top-{top_k} reply has; expected every vocabulary id"
                )
            gap = max(abs(full[t][0] - logprob) for t, (logprob, _) in partial[1].items())
            if gap > 1e-3:
                warnings.warn(
                    f"the teacher server at {self.base_url} returns different top-{top_k} log-probs than its "
                    f"full distribution (max gap {gap:.3g}): it renormalises truncated log-probs "
                    "(--logprobs-mode processed_logprobs with top-k/top-p); use raw_logprobs"
                )
        else:
            masses = [sum(math.exp(logprob) for logprob, _ in entry.values()) for entry in partial[1:]]
            if masses and all(abs(m - 1.0) < 1e-6 for m in masses):
                warnings.warn(
                    f"the top-{top_k} probabilities of the teacher server at {self.base_url} sum to 1 at every "
                    "probe position: it probably renormalises over the truncated support"
                )

    def check_tokenizer(self, tokenizer) -> None:
        """The served tokenizer must give the student's ids on a probe covering the chat markers, special tokens
        and tokens spread over the whole vocabulary; and the served vocabulary must cover the student's ids."""
        vocab = student_token_ids(tokenizer)
        ids = sorted(vocab.values())
        spread = [ids[i] for i in range(0, len(ids), max(1, len(ids) // 64))] + [ids[-1]]
        specials = [t for t in tokenizer.all_special_tokens if t in vocab]
        text = " ".join(specials) + " " + PROBE_TEXT + " " + tokenizer.decode(spread)
        if getattr(tokenizer, "chat_template", None):
            text += tokenizer.apply_chat_template(
                [{"role": "user", "content": PROBE_TEXT}], tokenize=False, add_generation_prompt=True
            )
        local = tokenizer(text, add_special_tokens=False)["input_ids"]
        served = self._tokenize(text)
        if served != local:
            first = next((i for i, (a, b) in enumerate(zip(local, served)) if a != b), min(len(local), len(served)))
            raise ValueError(
                f"the teacher served at {self.base_url} ({self.model}) tokenizes differently from the student's "
                f"tokenizer: first difference at token {first} (student {local[first : first + 5]}, server "
                f"{served[first : first + 5]}); teacher and student must share one vocabulary"
            )
        if self._vocab_size is not None and ids[-1] >= self._vocab_size:
            raise ValueError(
                f"the teacher served at {self.base_url} has {self._vocab_size} vocabulary rows but the "
                f"student's tokenizer uses ids up to {ids[-1]}"
            )


def _error_detail(error: urllib.error.HTTPError) -> str:
    """The start of an HTTP error's body; reading it may fail like any read (it is under the same deadline)."""
    try:
        return error.read(500).decode(errors="replace")
    except (OSError, http.client.HTTPException) as read_error:
        return f"(body unreadable: {type(read_error).__name__})"
    finally:
        error.close()
