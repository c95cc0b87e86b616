"""evaluate_reranker / evaluate_prerank_floor with a fake sampler: exact metrics, fallback, throughput."""

import json
import math

import pytest
from datasets import Dataset

from dgr2_trl.evaluation import binomial_lower_bound, evaluate_prerank_floor, evaluate_reranker
from dgr2_trl.rewards import ColumnValueError
from dgr2_trl.samplers.output import GenerationOutput


CANDS = ["a", "b", "c", "d", "e"]


def make_dataset():
    # targets at pre-ranker positions 2, 0, 4
    return Dataset.from_list([
        {"prompt": [{"role": "user", "content": f"q{i}"}], "candidates": CANDS, "target": t, "pre_rank": CANDS.index(t)}
        for i, t in enumerate(["c", "a", "e"])
    ])  # fmt: skip


class FakeSampler:
    """Answers from a script keyed by prompt; each completion is 4 tokens needing `steps` denoising steps."""

    def __init__(self, answers, steps=2):
        self.answers, self.steps, self.calls = answers, steps, []

    def generate(self, prompts, max_new_tokens, **kw):
        self.calls.append((len(prompts), max_new_tokens, kw))
        texts = [self.answers[p[0]["content"]] for p in prompts]
        return GenerationOutput(
            texts=texts, completion_ids=[[1, 2, 3, 4]] * len(prompts), num_forward_passes=self.steps,
            steps_per_row=[self.steps] * len(prompts), elapsed_s=0.5,
        )  # fmt: skip


def ans(*ids):
    return "because...\n" + json.dumps({"ranking": list(ids)})


def test_floor_exact():
    floor = evaluate_prerank_floor(make_dataset())
    assert floor["n"] == 3 and floor["num_target_in_candidates"] == 3
    assert floor["recall@1"] == pytest.approx(1 / 3)
    assert floor["recall@3"] == pytest.approx(2 / 3)
    assert floor["ndcg@3"] == pytest.approx((1 / math.log2(4) + 1) / 3)
    assert floor["ndcg@5"] == pytest.approx((1 / math.log2(4) + 1 + 1 / math.log2(6)) / 3)


def test_metrics_fallback_and_throughput():
    sampler = FakeSampler({
        "q0": ans("c", "a", "b", "d", "e"),  # target first
        "q1": ans("b", "a"),                 # invalid (missing) -> pre-ranker order, target a first
        "q2": "no answer at all",            # invalid (unparsable) -> pre-ranker order, e last
    })  # fmt: skip
    result = evaluate_reranker(
        sampler, make_dataset(), max_new_tokens=32, batch_size=2, show_progress=False, temperature=0.0
    )
    assert [c[:2] for c in sampler.calls] == [(2, 32), (1, 32)]
    assert sampler.calls[0][2] == {"temperature": 0.0}
    assert result["n"] == 3
    assert result["recall@1"] == pytest.approx(2 / 3)
    assert result["recall@3"] == pytest.approx(2 / 3)
    assert result["ndcg@5"] == pytest.approx((1 + 1 + 1 / math.log2(6)) / 3)
    assert result["valid_rate"] == pytest.approx(1 / 3)
    assert result["valid_rate_lower_95"] == pytest.approx(binomial_lower_bound(1, 3))
    assert result["invalid_reasons"] == {"unparsable": 1, "duplicate": 0, "missing": 1, "out_of_set": 0}
    assert result["floor"]["recall@1"] == pytest.approx(1 / 3)
    assert result["num_generated_tokens"] == 12 and result["num_forward_passes"] == 4
    assert result["tokens_per_second"] == pytest.approx(12 / 1.0)
    assert result["forward_passes_per_token"] == pytest.approx(0.5)
    assert result["copies_floor_rate"] == 0.0 and result["num_distinct_texts"] == 3  # fallbacks are not copies
    json.dumps(result)  # plain, JSON-serialisable


def test_all_invalid_equals_floor_and_rows():
    sampler = FakeSampler({f"q{i}": '{"ranking": ["z"]}' for i in range(3)})
    result = evaluate_reranker(sampler, make_dataset(), max_new_tokens=8, show_progress=False, return_rows=True)
    floor = evaluate_prerank_floor(make_dataset())
    for key in ("recall@1", "recall@3", "ndcg@3", "ndcg@5"):
        assert result[key] == pytest.approx(floor[key])
    assert result["invalid_reasons"]["out_of_set"] == 3
    assert [r["ranking"] for r in result["rows"]] == [CANDS] * 3
    assert result["copies_floor_rate"] == 0.0 and result["num_distinct_texts"] == 1


def test_a_model_that_copies_the_preranker_is_flagged():
    sampler = FakeSampler({"q0": ans(*CANDS), "q1": ans(*CANDS), "q2": ans("e", "a", "b", "c", "d")})
    result = evaluate_reranker(sampler, make_dataset(), show_progress=False)
    assert result["copies_floor_rate"] == pytest.approx(2 / 3) and result["num_distinct_texts"] == 2


def test_max_queries_and_missing_column():
    sampler = FakeSampler({f"q{i}": ans(*CANDS) for i in range(3)})
    assert evaluate_reranker(sampler, make_dataset(), max_queries=2, show_progress=False)["n"] == 2
    with pytest.raises(ValueError, match="candidates"):
        evaluate_reranker(sampler, make_dataset().remove_columns("candidates"), show_progress=False)


def test_binomial_lower_bound():
    # all successes: the bound solves p**n = 0.05 exactly
    for n in (1, 500, 5000):
        assert binomial_lower_bound(n, n) == pytest.approx(0.05 ** (1 / n), abs=1e-12)
    assert binomial_lower_bound(0, 10) == 0.0
    # P(X >= k | p = bound) is 0.05 for k < n too (checked by direct summation)
    n, k = 40, 31
    bound = binomial_lower_bound(k, n)
    tail = sum(math.comb(n, j) * bound**j * (1 - bound) ** (n - j) for j in range(k, n + 1))
    assert tail == pytest.approx(0.05, abs=1e-9)
    assert binomial_lower_bound(k, n) < binomial_lower_bound(k + 1, n) < (k + 1) / n
    with pytest.raises(ValueError, match="successes <= n"):
        binomial_lower_bound(5, 4)


@pytest.mark.parametrize(
    "column, value, problem",
    [
        # a CSV/Parquet round trip: was read per character, every answer invalid, R@3 reported as 0.0
        ("candidates", json.dumps(CANDS), r"got the string '\[\"a\", .*json.loads"),
        ("candidates", ["a", "b", "b", "d", "e"], r"repeated id\(s\) 'b' x2"),
        ("candidates", [], "got an empty list"),
        ("candidates", ["a ", "b", "c", "d", "e"], "entry 0 'a ' is empty or has surrounding whitespace"),
        ("target", ["c"], r"the target is \['c'\] \(list\), expected an id string"),
        ("target", "c ", "the target 'c ' is empty or has surrounding whitespace"),
    ],
)
def test_mistyped_columns_are_refused_before_generating(column, value, problem):
    rows = make_dataset().to_list()
    rows[1][column] = value
    sampler = FakeSampler({f"q{i}": ans(*CANDS) for i in range(3)})
    with pytest.raises(ColumnValueError, match=rf"evaluate_reranker: column '{column}', row 1: {problem}"):
        evaluate_reranker(sampler, rows, show_progress=False)
    assert sampler.calls == []  # refused before any generation
    with pytest.raises(ColumnValueError, match=rf"evaluate_prerank_floor: column '{column}', row 1: {problem}"):
        evaluate_prerank_floor(rows)


def test_a_none_entry_is_refused_with_its_row():
    rows = make_dataset().to_list()
    rows[2]["candidates"] = None
    with pytest.raises(ColumnValueError, match=r"evaluate_reranker: column 'candidates', row 2: got None"):
        evaluate_reranker(FakeSampler({}), rows, show_progress=False)
