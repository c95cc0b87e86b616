"""Teachers without a real server: in-process scoring (alignment, batching), vocabulary checks, the HTTP client's
retries and probes against a scripted stand-in server, and the OPD divergences."""

import copy
import json
import math
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch

from dgr2_trl.teachers import (
    InProcessTeacher,
    TeacherServerError,
    VLLMServerTeacher,
    bucket_divergence,
    student_buckets,
    teacher_buckets,
)
from dgr2_trl.modeling import tiny_causal_lm
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
        torch.testing.assert_close(batched.token_logprobs[row, : len(c)].double(),
                                   reference.gather(-1, torch.tensor(c)[:, None]).squeeze(-1), rtol=0, atol=1e-6)
        assert batched.mask[row].sum() == len(c) and not batched.mask[row, len(c):].any()
    for a, b in zip((batched.topk_logprobs, batched.topk_ids, batched.token_logprobs),
                    (single.topk_logprobs, single.topk_ids, single.token_logprobs)):
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
    student = student_buckets(torch.tensor([[math.log(0.3)]], **f64), torch.tensor([math.log(0.7)], **f64),
                              torch.tensor([[True]]))
    expected = 0.6 * math.log(0.6 / 0.3) + 0.4 * math.log(0.4 / 0.7)
    assert bucket_divergence(teacher, student, "forward_kl").item() == pytest.approx(expected, abs=1e-12)
    reverse = 0.3 * math.log(0.3 / 0.6) + 0.7 * math.log(0.7 / 0.4)
    assert bucket_divergence(teacher, student, "reverse_kl").item() == pytest.approx(reverse, abs=1e-12)
    m = [0.45, 0.55]
    jsd = 0.5 * (0.6 * math.log(0.6 / m[0]) + 0.4 * math.log(0.4 / m[1])) + 0.5 * (
        0.3 * math.log(0.3 / m[0]) + 0.7 * math.log(0.7 / m[1]))
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
    scripts failures and misconfigurations."""

    mode = "ok"
    failures_left = 0
    probs = [0.5, 0.25, 0.15, 0.1]

    def log_message(self, *args):
        pass

    def _send(self, code, payload):
        body = json.dumps(payload).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        self._send(200, {"data": [{"id": "fake", "max_model_len": 64}]})

    def do_POST(self):
        request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        cls = type(self)
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


@pytest.fixture
def fake_server():
    FakeVLLM.mode, FakeVLLM.failures_left = "ok", 0
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeVLLM)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


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
