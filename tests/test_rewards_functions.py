"""Reward functions: exact values on hand-computed cases, TRL signature, errors, never raising."""

import json
import math
import pickle

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dgr2_trl.rewards import (
    MissingColumnError,
    combine_rewards,
    conditional_format_reward,
    default_rl_reward,
    make_ndcg_reward,
    make_recall_reward,
    ndcg_at_k,
    ndcg_reward,
    rank_promotion_reward,
    recall_reward,
    validity_reward,
)

CANDS = ["a", "b", "c", "d", "e"]


def ans(*ids):
    return "Reasoning first.\n" + json.dumps({"ranking": list(ids)})


def call(f, completions, target="c", pre_rank=2, cands=CANDS):
    n = len(completions)
    return f(prompts=[None] * n, completions=completions, candidates=[cands] * n, target=[target] * n, pre_rank=[pre_rank] * n)


def test_metric_values():
    assert ndcg_at_k(["x", "t"], "t") == pytest.approx(1 / math.log2(3))
    assert ndcg_at_k(["x", "y", "t"], "t", k=2) == 0.0
    assert ndcg_at_k(["x"], "t") == 0.0


def test_ndcg_and_recall_values():
    comps = [ans("c", "a", "b", "d", "e"), ans("a", "c", "b", "d", "e"), ans("a", "b", "d", "e", "c"), "garbage"]
    assert call(ndcg_reward, comps) == pytest.approx([1.0, 1 / math.log2(3), 1 / math.log2(6), -1.0])
    assert call(make_ndcg_reward(3), comps) == pytest.approx([1.0, 1 / math.log2(3), 0.0, -1.0])
    assert call(recall_reward, comps) == [1.0, 0.0, 0.0, -1.0]
    assert call(make_recall_reward(2, invalid_reward=-0.5), comps) == [1.0, 1.0, 0.0, -0.5]
    assert make_ndcg_reward(3).__name__ == "ndcg_at_3_reward"
    assert make_recall_reward(3).__name__ == "recall_at_3_reward"


def test_rank_promotion_values():
    comps = [ans("c", "a", "b", "d", "e"), ans("a", "b", "c", "d", "e"), ans("a", "b", "d", "e", "c"), ans("a", "a")]
    # target c was at position 2 of 5
    assert call(rank_promotion_reward, comps) == pytest.approx([2 / 5, 0.0, -2 / 5, -1.0])
    # target not among the candidates: 0 for a valid answer
    assert call(rank_promotion_reward, comps[:1], target="z", pre_rank=-1) == [0.0]


def test_conditional_format_values():
    comps = [ans("c", "a", "b", "d", "e"), ans("a", "c", "b", "d", "e"), ans("a", "b", "c", "d", "e"), ans("a", "b", "d", "e", "c"), "x"]
    assert call(conditional_format_reward, comps) == [1.0, 1.0, 0.0, 0.0, 0.0]
    # already first and kept first: bonus; absent target: none
    assert call(conditional_format_reward, comps[:1], pre_rank=0) == [1.0]
    assert call(conditional_format_reward, comps[:1], target="z", pre_rank=-1) == [0.0]


def test_validity_and_default_rl_reward():
    comps = [ans("c", "a", "b", "d", "e"), ans("a", "b", "c", "d", "e"), ans("a", "b", "c", "d", "z"), ""]
    assert call(validity_reward, comps) == [1.0, 1.0, 0.0, 0.0]
    assert call(default_rl_reward, comps) == pytest.approx([2 / 5 + 0.2, 0.0, -1.0, -1.0])
    assert default_rl_reward.__name__ == "default_rl_reward"


def test_combine_rewards_weights_name_and_invalid():
    f = combine_rewards([(ndcg_reward, 2.0), (validity_reward, 0.5)], invalid_reward=-3.0)
    assert f.__name__ == "2*ndcg_reward+0.5*validity_reward"
    assert call(f, [ans("a", "c", "b", "d", "e"), "nope"]) == pytest.approx([2 / math.log2(3) + 0.5, -3.0])
    keep = combine_rewards([(ndcg_reward, 1.0), (validity_reward, 1.0)], invalid_reward=None, name="mix")
    assert keep.__name__ == "mix" and call(keep, ["nope"]) == [-1.0]
    with pytest.raises(ValueError):
        combine_rewards([])


def test_chat_message_completions_equal_strings():
    texts = [ans("c", "a", "b", "d", "e"), ans("a", "b", "d", "e", "c"), "bad"]
    chats = [[{"role": "assistant", "content": t}] for t in texts]
    for f in (ndcg_reward, recall_reward, validity_reward, rank_promotion_reward, conditional_format_reward, default_rl_reward):
        assert call(f, chats) == call(f, texts)


def test_missing_column_names_column_and_reward():
    with pytest.raises(MissingColumnError, match=r"rank_promotion_reward.*'pre_rank'"):
        rank_promotion_reward(prompts=[None], completions=[ans("a")], candidates=[CANDS], target=["a"])
    with pytest.raises(MissingColumnError, match=r"ndcg_reward.*'target'"):
        ndcg_reward(prompts=[None], completions=[ans("a")], candidates=[CANDS])
    with pytest.raises(MissingColumnError, match=r"'candidates'"):
        default_rl_reward(prompts=[None], completions=[ans("a")], target=["a"], pre_rank=[0])


def test_rewards_pickle_with_their_names():
    for f in (ndcg_reward, make_ndcg_reward(3), default_rl_reward):
        g = pickle.loads(pickle.dumps(f))
        assert g.__name__ == f.__name__
        assert call(g, [ans("c", "a", "b", "d", "e")]) == call(f, [ans("c", "a", "b", "d", "e")])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(st.text(), st.sampled_from([ans(*CANDS), ans("c", "c"), '{"ranking": [' * 30])), min_size=1, max_size=4))
def test_rewards_never_raise_and_stay_in_range(texts):
    for f, lo, hi in ((ndcg_reward, -1, 1), (recall_reward, -1, 1), (validity_reward, 0, 1), (rank_promotion_reward, -1, 1), (conditional_format_reward, 0, 1), (default_rl_reward, -1, 1.2)):
        values = call(f, texts)
        assert len(values) == len(texts)
        assert all(lo <= v <= hi for v in values)
