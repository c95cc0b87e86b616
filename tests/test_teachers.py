"""Teachers without a real server: in-process scoring (alignment, batching), vocabulary checks, the HTTP client's
retries and probes against a scripted stand-in server, and the OPD divergences."""

import contextlib
import copy
import json
import math
import threading
import time
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch

from dgr2_trl.modeling import tiny_causal_lm
from dgr2_trl.teachers import (
    InProcessTeacher,
    TeacherServerError,
    VLLMServerTeacher,
    bucket_divergence,
    student_buckets,
    teacher_buckets,
)
from dgr2_trl.tokenization import train_chat_tokenizer

from .conftest import CORPUS, make_model


SEQS = ([[5, 9, 3, 7], [11], [4, 4, 4, 8, 2, 6]], [[8, 1, 30, 2, 2], [7, 7], [9, 100, 3]])


def test_in_process_scores_are_ar_shifted_and_batch_invariant(tokenizer):
    """Entry i is the teacher's distribution over completion token i given prompt + completion[:i]: compared with
    an unpadded one-sequence forward; chunking (batch_size=1 vs 3) changes nothing."""
    model = make_model(tokenizer, seed=1)
    prompts, completions = SEQS
    batched = InProcessTeacher(model, batch_size=3).score(prompts, completions, top_k=5)
    single = InProcessTeacher(model, batch_size=1).score(prompts, completions, top_k=5)
    for row, (p, c) in enumerate(zip(prompts, completions)):
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([p + c])).logits[0]
        reference = torch.log_softmax(logits[len(p) - 1 : len(p) - 1 + len(c)], -1)
        top = reference.topk(5, -1)
        torch.testing.assert_close(batched.topk_logprobs[row, : len(c)].double(), top.values, rtol=0, atol=1e-6)
        assert torch.equal(batched.topk_ids[row, : len(c)], top.indices)
        # the actual token's log-prob is exact even outside the top-k
        torch.testing.assert_close(
            batched.token_logprobs[row, : len(c)].double(),
            reference.gather(-1, torch.tensor(c)[:, None]).squeeze(-1),
            rtol=0,
            atol=1e-6,
        )
        assert batched.mask[row].sum() == len(c) and not batched.mask[row, len(c) :].any()
    for a, b in zip(
        (batched.topk_logprobs, batched.topk_ids, batched.token_logprobs),
        (single.topk_logprobs, single.topk_ids, single.token_logprobs),
    ):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_in_process_rejects_bad_inputs(tokenizer):
    teacher = InProcessTeacher(make_model(tokenizer))
    with pytest.raises(ValueError, match="prompt 0 is empty"):
        teacher.score([[]], [[1]])
    with pytest.raises(ValueError, match="2 prompts but 1 completions"):
        teacher.score([[1], [2]], [[1]])


def test_vocabulary_checks(tokenizer):
    teacher = InProcessTeacher(make_model(tokenizer), tokenizer)
    teacher.check_tokenizer(copy.deepcopy(tokenizer))  # same vocabulary: fine
    other = train_chat_tokenizer([c[::-1] for c in CORPUS], vocab_size=400)
    with pytest.raises(ValueError, match="tokenizer differs from the student's"):
        teacher.check_tokenizer(other)
    small = InProcessTeacher(tiny_causal_lm(50))
    with pytest.raises(ValueError, match="has 50 output rows"):
        small.check_tokenizer(tokenizer)


# ---- divergences ----------------------------------------------------------------------------------------------
def test_tail_bucket_makes_top1_divergence_nonzero():
    """With k=1 the loss is the closed-form two-bucket (top-1, tail) divergence, not a trivial 0."""
    f64 = dict(dtype=torch.float64)
    teacher = teacher_buckets(torch.tensor([[math.log(0.6)]], **f64), torch.tensor([[True]]))
    torch.testing.assert_close(teacher.exp(), torch.tensor([[0.6, 0.4]], dtype=torch.float64))
    student = student_buckets(
        torch.tensor([[math.log(0.3)]], **f64), torch.tensor([math.log(0.7)], **f64), torch.tensor([[True]])
    )
    expected = 0.6 * math.log(0.6 / 0.3) + 0.4 * math.log(0.4 / 0.7)
    assert bucket_divergence(teacher, student, "forward_kl").item() == pytest.approx(expected, abs=1e-12)
    reverse = 0.3 * math.log(0.3 / 0.6) + 0.7 * math.log(0.7 / 0.4)
    assert bucket_divergence(teacher, student, "reverse_kl").item() == pytest.approx(reverse, abs=1e-12)
    m = [0.45, 0.55]
    jsd = 0.5 * (0.6 * math.log(0.6 / m[0]) + 0.4 * math.log(0.4 / m[1])) + 0.5 * (
        0.3 * math.log(0.3 / m[0]) + 0.7 * math.log(0.7 / m[1])
    )
    assert bucket_divergence(teacher, student, "jsd").item() == pytest.approx(jsd, abs=1e-12)
    assert bucket_divergence(teacher, teacher, "forward_kl").item() == 0.0
    with pytest.raises(ValueError, match="divergence must be one of"):
        bucket_divergence(teacher, student, "kl")


def test_full_support_teacher_gives_finite_divergence():
    """A top-k covering the whole vocabulary leaves an empty tail: no NaN/inf (0 log 0 = 0)."""
    probs = torch.tensor([[0.5, 0.3, 0.2]], dtype=torch.float64)
    valid = torch.ones(1, 3, dtype=torch.bool)
    teacher = teacher_buckets(probs.log(), valid)
    student = student_buckets(torch.tensor([[0.4, 0.4, 0.2]]).log(), torch.tensor([float("-inf")]), valid)
    for name in ("forward_kl", "reverse_kl", "jsd"):
        value = bucket_divergence(teacher, student, name)
        assert torch.isfinite(value).all() and value.item() > 0


# ---- the HTTP client against a scripted stand-in ----------------------------------------------------------------
class FakeVLLM(BaseHTTPRequestHandler):
    """Answers like vLLM's OpenAI server for a 4-token 'model' whose next-token distribution is fixed; `mode`
    scripts failures and misconfigurations, `scripted` raw replies served first (per path, in order), `corrupt`
    rewrites the otherwise-correct JSON reply of a path."""

    mode = "ok"
    failures_left = 0
    probs = [0.5, 0.25, 0.15, 0.1]
    scripted: dict = {}  # path -> [(status, body bytes, headers)]
    corrupt = None  # (path, reply) -> reply
    seen: list = []  # paths requested, in order

    def log_message(self, *args):
        pass

    def _send_raw(self, code, body, headers=()):
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for name, value in dict(headers).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def _send(self, code, payload):
        cls = type(self)
        if code == 200 and cls.corrupt is not None:
            payload = cls.corrupt(self.path, payload)
        self._send_raw(code, json.dumps(payload).encode())

    def _send_scripted(self):
        replies = type(self).scripted.get(self.path)
        if not replies:
            return False
        self._send_raw(*replies.pop(0))
        return True

    def do_GET(self):
        type(self).seen.append(self.path)
        if not self._send_scripted():
            self._send(200, {"data": [{"id": "fake", "max_model_len": 64}]})

    def do_POST(self):
        request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        cls = type(self)
        cls.seen.append(self.path)
        if self._send_scripted():
            return
        if cls.failures_left > 0:
            cls.failures_left -= 1
            return self._send(503, {"error": "busy"})
        if self.path == "/tokenize":
            return self._send(200, {"tokens": [1, 2, 3, 0, 1, 2]})
        k = request["prompt_logprobs"]
        k = len(cls.probs) if k == -1 else min(k, len(cls.probs))
        values = [math.log(p) for p in cls.probs]
        if cls.mode == "renormalised" and request["prompt_logprobs"] != -1:  # over a truncated top-2 support
            k = 2
            values = [v - math.log(sum(cls.probs[:k])) for v in values]
        if cls.mode == "logits":
            values = [v + 3.0 for v in values]
        choices = []
        for index, seq in enumerate(request["prompt"]):
            entries = [None]
            for token in seq[1:]:
                entry = {str(t): {"logprob": values[t], "rank": t + 1} for t in range(k)}
                entry[str(token)] = {"logprob": values[token], "rank": token + 1}
                entries.append(entry)
            choices.append({"index": index, "prompt_logprobs": entries})
        self._send(200, {"choices": choices[::-1]})  # out of order on purpose: the client sorts by index


@contextlib.contextmanager
def serving(handler):
    """`handler` on 127.0.0.1 (a free port) in a thread; yields its base URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def fake_server():
    FakeVLLM.mode, FakeVLLM.failures_left, FakeVLLM.scripted, FakeVLLM.corrupt = "ok", 0, {}, None
    FakeVLLM.seen = []
    with serving(FakeVLLM) as url:
        yield url


def raw_reply(code, body, **headers):
    """A scripted reply: `body` as given if bytes, else as JSON."""
    return code, body if isinstance(body, bytes) else json.dumps(body).encode(), headers


def test_server_client_parses_prompt_logprobs(fake_server):
    teacher = VLLMServerTeacher(fake_server + "/v1", backoff_s=0.01)
    assert teacher.vocab_size == 4 and teacher.max_model_len == 64
    scores = teacher.score([[0, 1], [2]], [[3, 0, 2], [1]], top_k=2)
    logs = [math.log(p) for p in FakeVLLM.probs]
    assert scores.topk_ids[0, :3].tolist() == [[0, 1]] * 3
    torch.testing.assert_close(scores.topk_logprobs[1, 0], torch.tensor(logs[:2]))
    # the actual token outside the top-2 (token 3) still gets its exact log-prob
    torch.testing.assert_close(scores.token_logprobs[0, :3], torch.tensor([logs[3], logs[0], logs[2]]))
    with pytest.raises(ValueError, match="more than the teacher server's max_model_len 64"):
        teacher.score([[1] * 60], [[1] * 5])


def test_server_client_retries_then_succeeds(fake_server):
    teacher = VLLMServerTeacher(fake_server, backoff_s=0.01, max_retries=3)
    FakeVLLM.failures_left = 2  # two 503s, then an answer
    scores = teacher.score([[0]], [[1]], top_k=1)
    assert teacher.num_retries == 2 and scores.topk_ids[0, 0, 0] == 0


def test_server_client_unreachable_names_url():
    port = 9  # discard port: nothing listens there on loopback
    start = time.perf_counter()
    with pytest.raises(TeacherServerError, match=rf"server at http://127.0.0.1:{port} is unreachable.*failed 3 times"):
        VLLMServerTeacher(f"http://127.0.0.1:{port}", max_retries=2, backoff_s=0.05)
    assert time.perf_counter() - start >= 0.05 + 0.1  # exponential back-off: 0.05 then 0.1 s


def test_server_probe_warns_on_renormalised_and_rejects_logits(fake_server):
    FakeVLLM.mode = "renormalised"
    with pytest.warns(UserWarning, match="sum to .* not 1|renormalises"):
        VLLMServerTeacher(fake_server)
    FakeVLLM.mode = "logits"
    with pytest.raises(TeacherServerError, match="returns positive 'log-probs'"):
        VLLMServerTeacher(fake_server)


def test_server_tokenizer_mismatch_is_an_error(fake_server, tokenizer):
    teacher = VLLMServerTeacher(fake_server)
    with pytest.raises(ValueError, match="tokenizes differently from the student's tokenizer"):
        teacher.check_tokenizer(tokenizer)


# ---- replies of the wrong shape: a clear error naming the URL, never an AttributeError/KeyError -----------------
@pytest.mark.parametrize(
    "reply",
    [
        None,
        [],
        {},
        {"data": "fake"},
        {"data": [{"name": "fake"}]},
        {"data": [{"id": None}]},
        {"data": [{"id": "fake", "max_model_len": "64"}]},
    ],
    ids=["null", "list", "no-data", "data-not-a-list", "entry-without-id", "null-id", "max_model_len-a-string"],
)
def test_server_models_of_wrong_shape_name_url_and_expectation(fake_server, reply):
    FakeVLLM.scripted["/v1/models"] = [raw_reply(200, reply)]
    with pytest.raises(TeacherServerError, match=rf"{fake_server}/v1/models answered .*; expected "):
        VLLMServerTeacher(fake_server, backoff_s=0.01)
    assert FakeVLLM.seen == ["/v1/models"]  # a well-formed answer is not retried: it would be the same


@pytest.mark.parametrize(
    "reply",
    [None, [], {"tokens": "1 2 3"}, {"tokens": [1, "2"]}, {"tokens": [1, -2]}],
    ids=["null", "list", "string", "string-id", "negative-id"],
)
def test_server_tokenize_of_wrong_shape_names_url(fake_server, tokenizer, reply):
    FakeVLLM.scripted["/tokenize"] = [raw_reply(200, reply)]
    with pytest.raises(TeacherServerError, match=rf"{fake_server}/tokenize answered .*; expected "):
        VLLMServerTeacher(fake_server, backoff_s=0.01)  # the probe tokenizes
    teacher = VLLMServerTeacher(fake_server, backoff_s=0.01)
    FakeVLLM.scripted["/tokenize"] = [raw_reply(200, reply)]
    with pytest.raises(TeacherServerError, match=rf"{fake_server}/tokenize answered .*; expected "):
        teacher.check_tokenizer(tokenizer)


def _last_entry(reply, change):
    """`change(entry)` on the last prompt_logprobs entry of every choice."""
    for choice in reply["choices"]:
        choice["prompt_logprobs"][-1] = change(choice["prompt_logprobs"][-1])
    return reply


def _set_choices(reply, key, value):
    for choice in reply["choices"]:
        choice[key] = value
    return reply


BAD_COMPLETIONS = {
    "null": lambda reply: None,
    "list": lambda reply: [],
    "null-choices": lambda reply: {"choices": None},
    "choices-not-objects": lambda reply: {"choices": [1] * len(reply["choices"])},
    "duplicate-indices": lambda reply: _set_choices(reply, "index", 0),
    "prompt_logprobs-an-object": lambda reply: _set_choices(reply, "prompt_logprobs", {"0": None}),
    "keyed-by-text": lambda reply: _last_entry(reply, lambda e: {"Hello": list(e.values())[-1]}),
    "keyed-by-padded-id": lambda reply: _last_entry(reply, lambda e: {f"0{t}": v for t, v in e.items()}),
    "entry-a-list": lambda reply: _last_entry(reply, lambda e: [[int(t), v["logprob"]] for t, v in e.items()]),
    "entry-null": lambda reply: _last_entry(reply, lambda e: None),
    "entry-empty": lambda reply: _last_entry(reply, lambda e: {}),
    "value-a-list": lambda reply: _last_entry(reply, lambda e: {t: [v["logprob"]] for t, v in e.items()}),
    "logprob-missing": lambda reply: _last_entry(reply, lambda e: {t: {"rank": v["rank"]} for t, v in e.items()}),
    "logprob-a-string": lambda reply: _last_entry(
        reply, lambda e: {t: {**v, "logprob": str(v["logprob"])} for t, v in e.items()}
    ),
    "logprob-null": lambda reply: _last_entry(reply, lambda e: {t: {**v, "logprob": None} for t, v in e.items()}),
    "rank-a-string": lambda reply: _last_entry(reply, lambda e: {t: {**v, "rank": "1"} for t, v in e.items()}),
}


@pytest.mark.parametrize("corruption", BAD_COMPLETIONS.values(), ids=BAD_COMPLETIONS.keys())
def test_server_completions_of_wrong_shape_name_url_and_expectation(fake_server, corruption):
    teacher = VLLMServerTeacher(fake_server, backoff_s=0.01)
    FakeVLLM.corrupt = lambda path, reply: corruption(reply) if path == "/v1/completions" else reply
    with pytest.raises(TeacherServerError, match=rf"{fake_server}/v1/completions answered .*; expected "):
        teacher.score([[0, 1], [2]], [[3, 0], [1]], top_k=2)
    assert teacher.num_retries == 0


def test_server_scores_must_be_logprobs(fake_server):
    """The start-up probe is not the only check: a server that starts returning logits, or NaN, mid-run is
    caught on the scoring reply itself. -inf (probability 0) stays a valid log-prob."""
    teacher = VLLMServerTeacher(fake_server, backoff_s=0.01)
    FakeVLLM.mode = "logits"
    with pytest.raises(
        TeacherServerError, match=rf"server at {fake_server} returns positive 'log-probs'.*expected <= 0"
    ):
        teacher.score([[0]], [[1, 2]], top_k=2)
    FakeVLLM.mode = "ok"
    nan_for_token_1 = {"1": {"logprob": float("nan"), "rank": 2}}
    FakeVLLM.corrupt = lambda path, reply: _last_entry(reply, lambda e: {**e, **nan_for_token_1})
    with pytest.raises(TeacherServerError, match=rf"{fake_server}/v1/completions returned a NaN log-prob for token 1"):
        teacher.score([[0]], [[1, 2]], top_k=2)
    zero_for_token_3 = {"3": {"logprob": float("-inf"), "rank": 4}}
    FakeVLLM.corrupt = lambda path, reply: _last_entry(reply, lambda e: {**e, **zero_for_token_3})
    scores = teacher.score([[0]], [[1, 3]], top_k=2)
    assert scores.token_logprobs[0, 1] == float("-inf") and scores.token_logprobs[0, 0] == pytest.approx(
        math.log(0.25)
    )


# ---- transport: undecodable bodies, 429, a per-request deadline, no proxy for loopback ---------------------------
NOT_UTF8 = b'{"data": [{"id": "fake\xff\xfe"}]}'


def test_server_client_retries_undecodable_body(fake_server):
    FakeVLLM.scripted["/v1/models"] = [raw_reply(200, NOT_UTF8)] * 2
    teacher = VLLMServerTeacher(fake_server, backoff_s=0.01, max_retries=2)
    assert teacher.num_retries == 2 and teacher.model == "fake"
    FakeVLLM.scripted["/v1/models"] = [raw_reply(200, NOT_UTF8)] * 3
    with pytest.raises(
        TeacherServerError,
        match=rf"server at {fake_server} is unreachable.*GET {fake_server}/v1/models"
        r" failed 3 times.*undecodable reply, expected UTF-8 JSON",
    ):
        VLLMServerTeacher(fake_server, backoff_s=0.01, max_retries=2)


def test_server_client_retries_429_honouring_retry_after(fake_server, monkeypatch):
    teacher = VLLMServerTeacher(fake_server, backoff_s=0.01, max_retries=2)
    FakeVLLM.scripted["/v1/completions"] = [raw_reply(429, {"error": "slow down"}, **{"Retry-After": "0.3"})]
    start = time.perf_counter()
    assert teacher.score([[0]], [[1]], top_k=1).topk_ids[0, 0, 0] == 0
    assert teacher.num_retries == 1 and time.perf_counter() - start >= 0.3  # not the 0.01 s back-off
    # a huge Retry-After is capped
    monkeypatch.setattr(VLLMServerTeacher, "max_retry_after_s", 0.2)
    FakeVLLM.scripted["/v1/completions"] = [raw_reply(429, {"error": "slow down"}, **{"Retry-After": "3600"})]
    start = time.perf_counter()
    teacher.score([[0]], [[1]], top_k=1)
    assert teacher.num_retries == 2 and 0.2 <= time.perf_counter() - start < 1.5
    # retries run out like for 5xx, naming the URL
    FakeVLLM.scripted["/v1/completions"] = [raw_reply(429, {"error": "slow down"})] * 3
    with pytest.raises(TeacherServerError, match=rf"POST {fake_server}/v1/completions failed 3 times.*HTTP 429"):
        teacher.score([[0]], [[1]], top_k=1)
    # other 4xx are still not retried
    FakeVLLM.scripted["/v1/completions"] = [raw_reply(400, {"error": "bad request"})]
    retries = teacher.num_retries
    with pytest.raises(TeacherServerError, match=rf"POST {fake_server}/v1/completions answered HTTP 400"):
        teacher.score([[0]], [[1]], top_k=1)
    assert teacher.num_retries == retries


def test_retry_after_header_forms():
    from email.utils import formatdate

    from dgr2_trl.teachers.vllm_server import _retry_after_s

    assert _retry_after_s({"Retry-After": " 2 "}) == 2.0
    assert 25 < _retry_after_s({"Retry-After": formatdate(time.time() + 30, usegmt=True)}) <= 30
    assert _retry_after_s({"Retry-After": formatdate(time.time() - 30, usegmt=True)}) == 0.0
    assert _retry_after_s({"Retry-After": "-5"}) == 0.0
    for unusable in ("soon", "nan", "inf", ""):
        assert _retry_after_s({"Retry-After": unusable}) is None
    assert _retry_after_s({}) is None


class TricklingServer(BaseHTTPRequestHandler):
    """Answers /v1/models correctly, but one byte every 0.04 s: of the headers and body, or of the body only.
    Each read gets a byte well within any socket timeout, so only a per-request deadline stops it."""

    slow_part = "body"

    def log_message(self, *args):
        pass

    def do_GET(self):
        body = json.dumps({"data": [{"id": "fake"}]}).encode() + b" " * 60  # 3.6 s at this pace
        head = (
            f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n"
        ).encode()
        fast, slow = (b"", head + body) if type(self).slow_part == "headers" else (head, body)
        try:
            self.wfile.write(fast)
            self.wfile.flush()
            for byte in slow:
                self.wfile.write(bytes([byte]))
                self.wfile.flush()
                time.sleep(0.04)
        except OSError:  # the client hung up: what the test expects
            pass


@pytest.mark.parametrize("slow_part", ["headers", "body"])
def test_server_timeout_is_a_per_request_deadline(slow_part):
    TricklingServer.slow_part = slow_part
    with serving(TricklingServer) as url:
        start = time.perf_counter()
        with pytest.raises(TeacherServerError, match=rf"GET {url}/v1/models failed 1 times.*TimeoutError"):
            VLLMServerTeacher(url, timeout=0.5, max_retries=0, check_logprobs=False)
        assert time.perf_counter() - start < 0.9
        # a timed-out attempt is retried: the whole call takes about (max_retries + 1) * timeout + back-off
        start = time.perf_counter()
        with pytest.raises(TeacherServerError, match=r"failed 2 times"):
            VLLMServerTeacher(url, timeout=0.3, max_retries=1, backoff_s=0.01, check_logprobs=False)
        assert time.perf_counter() - start < 1.0


class RecordingProxy(BaseHTTPRequestHandler):
    """A forward proxy that records what it was asked for and answers 502."""

    seen: list = []

    def log_message(self, *args):
        pass

    def _refuse(self):
        type(self).seen.append(self.path)
        self.send_response(502)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_GET = do_POST = do_CONNECT = _refuse


class ProxiedFakeVLLM(FakeVLLM):
    """A forward proxy whose upstream is the fake vLLM server itself: requests arrive with absolute URLs."""

    proxied: list = []

    def parse_request(self):
        ok = super().parse_request()
        if ok:
            type(self).proxied.append(self.path)
            self.path = urllib.parse.urlsplit(self.path).path
        return ok


def _proxy_environment(monkeypatch, proxy_url):
    for name in ("http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.setenv(name, proxy_url)
        monkeypatch.setenv(name.upper(), proxy_url)
    for name in ("no_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def fresh_global_opener():
    """urllib's shared opener reads the proxy environment once: rebuild it for this test, and after it."""
    urllib.request.install_opener(None)
    yield
    urllib.request.install_opener(None)


def test_loopback_server_never_goes_through_a_proxy(fake_server, monkeypatch, fresh_global_opener):
    RecordingProxy.seen = []
    with serving(RecordingProxy) as proxy_url:
        _proxy_environment(monkeypatch, proxy_url)
        teacher = VLLMServerTeacher(fake_server, backoff_s=0.01, max_retries=0)
        teacher.score([[0]], [[1]], top_k=1)
        port = fake_server.rsplit(":", 1)[1]
        VLLMServerTeacher(f"http://localhost:{port}", backoff_s=0.01, max_retries=0)
    assert RecordingProxy.seen == [] and FakeVLLM.seen.count("/v1/models") == 2


def test_remote_server_uses_the_proxy_environment(monkeypatch, fresh_global_opener):
    """Documented choice: a server on another host is reached like any urllib client would (`*_proxy`, `no_proxy`)."""
    FakeVLLM.mode, FakeVLLM.failures_left, FakeVLLM.scripted, FakeVLLM.corrupt = "ok", 0, {}, None
    ProxiedFakeVLLM.proxied = []
    with serving(ProxiedFakeVLLM) as proxy_url:
        _proxy_environment(monkeypatch, proxy_url)
        remote = "http://192.0.2.1:8000"  # TEST-NET-1: never routed, so only the proxy can answer for it
        teacher = VLLMServerTeacher(remote, backoff_s=0.01, max_retries=0)
        assert teacher.model == "fake" and ProxiedFakeVLLM.proxied[0] == remote + "/v1/models"
        monkeypatch.setenv("no_proxy", "192.0.2.1")
        with pytest.raises(TeacherServerError, match=f"server at {remote} is unreachable"):
            VLLMServerTeacher(remote, timeout=0.3, backoff_s=0.01, max_retries=0)
    assert len(ProxiedFakeVLLM.proxied) == 4  # /v1/models, /tokenize and two /v1/completions: all via the proxy
