"""Reward functions: exact values on hand-computed cases, TRL signature, errors, never raising."""

import json
import math
import pickle

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dgr2_trl.rewards import (
    ColumnValueError,
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
    return f(
        prompts=[None] * n,
        completions=completions,
        candidates=[cands] * n,
        target=[target] * n,
        pre_rank=[pre_rank] * n,
    )


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
    comps = [
        ans("c", "a", "b", "d", "e"),
        ans("a", "c", "b", "d", "e"),
        ans("a", "b", "c", "d", "e"),
        ans("a", "b", "d", "e", "c"),
        "x",
    ]
    assert call(conditional_format_reward, comps) == [1.0, 1.0, 0.0, 0.0, 0.0]
    # already first and kept first: bonus; absent target: none
    assert call(conditional_format_reward, comps[:1], pre_rank=0, cands=["c", "a", "b", "d", "e"]) == [1.0]
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
    for f in (
        ndcg_reward,
        recall_reward,
        validity_reward,
        rank_promotion_reward,
        conditional_format_reward,
        default_rl_reward,
    ):
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
@given(
    st.lists(
        st.one_of(st.text(), st.sampled_from([ans(*CANDS), ans("c", "c"), '{"ranking": [' * 30])),
        min_size=1,
        max_size=4,
    )
)
def test_rewards_never_raise_and_stay_in_range(texts):
    for f, lo, hi in (
        (ndcg_reward, -1, 1),
        (recall_reward, -1, 1),
        (validity_reward, 0, 1),
        (rank_promotion_reward, -1, 1),
        (conditional_format_reward, 0, 1),
        (default_rl_reward, -1, 1.2),
    ):
        values = call(f, texts)
        assert len(values) == len(texts)
        assert all(lo <= v <= hi for v in values)


# --- bad dataset columns raise, naming the reward, the column and the row (issue 18) -----------------------------

RANKING_REWARDS = (
    ndcg_reward,
    recall_reward,
    validity_reward,
    rank_promotion_reward,
    conditional_format_reward,
    default_rl_reward,
)


def call_rows(f, rows, completion=None):
    """`f` on one completion per row; each row a dict of column values (candidates, target, pre_rank)."""
    completions = [completion or ans(*CANDS)] * len(rows)
    columns = {c: [r[c] for r in rows] for c in rows[0]}
    return f(prompts=[None] * len(rows), completions=completions, **columns)


def good_row(**changes):
    return {"candidates": CANDS, "target": "c", "pre_rank": 2, **changes}


@pytest.mark.parametrize(
    "pre_rank, problem",
    [
        (50, "got 50, expected 2"),  # out of range: was 12.5, outside [-1, 1]
        (-3, "got -3, expected 2"),
        (0, "got 0, expected 2"),  # in range but not the target's position: was used as given
        ("1.0", r"got '1.0' \(str\), expected the int 2"),  # was a bare ValueError from int()
        (float("nan"), r"got nan \(float\), expected the int 2"),
        (2.0, r"got 2.0 \(float\), expected the int 2"),
        (None, r"got None \(NoneType\), expected the int 2"),  # was silently a reward of 0
        (True, r"got True \(bool\)"),
    ],
)
@pytest.mark.parametrize("f", [rank_promotion_reward, conditional_format_reward, default_rl_reward])
def test_bad_pre_rank_raises_naming_reward_column_and_row(f, pre_rank, problem):
    rows = [good_row(), good_row(pre_rank=pre_rank)]
    with pytest.raises(ColumnValueError, match=rf"{f.__name__}.*column 'pre_rank', row 1 of the batch: {problem}"):
        call_rows(f, rows)
    # also when the completion is malformed: the column is wrong whatever the model wrote
    with pytest.raises(ColumnValueError, match="'pre_rank'"):
        call_rows(f, rows, completion="not an answer")


def test_pre_rank_of_an_absent_target_must_be_minus_one():
    assert call_rows(rank_promotion_reward, [good_row(target="z", pre_rank=-1)]) == [0.0]
    with pytest.raises(
        ColumnValueError, match=r"row 0 of the batch: got 3, expected -1 \(the target 'z' is not among"
    ):
        call_rows(rank_promotion_reward, [good_row(target="z", pre_rank=3)])


@pytest.mark.parametrize(
    "candidates, problem",
    [
        (json.dumps(CANDS), r"got the string '\[\"a\", .*expected a non-empty list .*json.loads"),  # CSV round trip
        ([], "got an empty list"),  # was validity 1.0 for the answer []
        (["a", "b", "a", "c", "d"], r"repeated id\(s\) 'a' x2"),  # was validity 1.0 for a 4-id answer
        ([" a", "b", "c", "d", "e"], r"entry 0 ' a' is empty or has surrounding whitespace"),  # could never match
        (["a", "", "c"], "entry 1 '' is empty"),
        (None, "got None"),  # was a bare TypeError
        (["a", None, "c"], r"entry 1 is None \(NoneType\), expected an id string"),
        (["a", 1.5, "c"], r"entry 1 is 1.5 \(float\)"),
        ({"a": 1}, r"got \{'a': 1\} \(dict\), expected a non-empty list"),
    ],
)
@pytest.mark.parametrize("f", RANKING_REWARDS)
def test_bad_candidates_raise_naming_reward_column_and_row(f, candidates, problem):
    rows = [good_row(), good_row(candidates=candidates, target="z", pre_rank=-1)]
    with pytest.raises(ColumnValueError, match=rf"{f.__name__}.*column 'candidates', row 1 of the batch: {problem}"):
        call_rows(f, rows)


@pytest.mark.parametrize(
    "target, problem",
    [
        (None, "the target is None"),
        (["c"], r"the target is \['c'\] \(list\), expected an id string"),
        (" c", "the target ' c' is empty or has surrounding whitespace"),
        (2.0, r"the target is 2.0 \(float\)"),
    ],
)
@pytest.mark.parametrize(
    "f", [ndcg_reward, recall_reward, rank_promotion_reward, conditional_format_reward, default_rl_reward]
)
def test_bad_target_raises_naming_reward_column_and_row(f, target, problem):
    with pytest.raises(ColumnValueError, match=rf"{f.__name__}.*column 'target', row 0 of the batch: {problem}"):
        call_rows(f, [good_row(target=target)])


def test_a_column_given_as_one_string_is_not_read_per_character():
    # target "cc" for two completions was read as "c", "c"
    with pytest.raises(ColumnValueError, match=r"ndcg_reward: column 'target' is the string 'cc', expected a list"):
        ndcg_reward(prompts=[None, None], completions=[ans(*CANDS)] * 2, candidates=[CANDS] * 2, target="cc")


def test_numeric_ids_and_numpy_candidates_are_accepted():
    np = pytest.importorskip("numpy")
    comps = [ans("3", "1", "2")]
    assert ndcg_reward(prompts=[None], completions=comps, candidates=[[1, 2, 3]], target=[3]) == [1.0]
    assert rank_promotion_reward(
        prompts=[None], completions=comps, candidates=[np.array(["1", "2", "3"])], target=["3"], pre_rank=[np.int64(2)]
    ) == [pytest.approx(2 / 3)]


def test_prompts_of_another_length_than_completions_raise():
    for f in RANKING_REWARDS:
        with pytest.raises(ValueError, match=rf"{f.__name__}: got 1 prompts for 2 completions"):
            f(
                prompts=[None],
                completions=[ans(*CANDS)] * 2,
                candidates=[CANDS] * 2,
                target=["c"] * 2,
                pre_rank=[2] * 2,
            )


@pytest.mark.parametrize(
    "make, k",
    [
        (make_ndcg_reward, 0),
        (make_ndcg_reward, -1),
        (make_ndcg_reward, 1.5),
        (make_recall_reward, 0),
        (make_recall_reward, None),
    ],
)
def test_k_below_one_is_refused(make, k):
    with pytest.raises(ValueError, match=rf"{make.__name__}: k must be .*an int >= 1, got {k}"):
        make(k)
    assert make_ndcg_reward(1)(
        prompts=None, completions=[ans("c", "a", "b", "d", "e")], candidates=[CANDS], target=["c"]
    ) == [1.0]


def _half_none(prompts, completions, **kwargs):
    """A user's reward that applies to every other sample only (TRL's None: not applicable)."""
    return [1.0 if i % 2 == 0 else None for i in range(len(completions))]


def _never_applies(prompts, completions, **kwargs):
    return [None] * len(completions)


def test_combine_rewards_sums_like_trl_when_a_part_returns_none():
    comps = [ans("c", "a", "b", "d", "e")] * 3 + ["invalid"]
    mixed = combine_rewards([(rank_promotion_reward, 1.0), (_half_none, 0.5)], invalid_reward=-1.0)
    # like TRL's nansum over reward functions: a None part is left out of that row's sum
    assert call(mixed, comps) == pytest.approx([2 / 5 + 0.5, 2 / 5, 2 / 5 + 0.5, -1.0])
    # a row that no part applies to is None (TRL: unscorable), unless the answer is invalid
    none = combine_rewards([(_never_applies, 1.0)], invalid_reward=-1.0)
    assert call(none, comps) == [None, None, None, -1.0]
    assert call(combine_rewards([(_never_applies, 1.0), (_half_none, 2.0)], invalid_reward=None), comps[:2]) == [
        2.0,
        None,
    ]


def test_combine_rewards_refuses_a_part_with_the_wrong_number_or_type_of_values():
    def one_too_many(prompts, completions, **kwargs):
        return [0.0] * (len(completions) + 1)

    def text_values(prompts, completions, **kwargs):
        return ["0.5"] * len(completions)

    f = combine_rewards([(ndcg_reward, 1.0), (one_too_many, 1.0)], name="mix")
    with pytest.raises(ValueError, match=r"mix: reward 'one_too_many' returned 3 values for 2 completions"):
        call(f, [ans(*CANDS)] * 2)
    with pytest.raises(TypeError, match=r"reward 'text_values' returned '0.5' for completion 0, expected a float"):
        call(combine_rewards([(text_values, 1.0)]), [ans(*CANDS)])


def test_combined_reward_names_itself_and_the_part_on_a_bad_column():
    rows = [good_row(pre_rank=50)]
    with pytest.raises(ColumnValueError, match=r"default_rl_reward: rank_promotion_reward: column 'pre_rank', row 0"):
        call_rows(default_rl_reward, rows)


@settings(max_examples=100, deadline=None)
@given(
    st.permutations(CANDS),
    st.sampled_from(CANDS + ["z"]),
    st.lists(st.one_of(st.text(max_size=30), st.permutations(CANDS).map(lambda p: ans(*p))), min_size=1, max_size=3),
)
def test_promotion_rewards_stay_in_range_on_any_consistent_row(candidates, target, texts):
    pre_rank = candidates.index(target) if target in candidates else -1
    for f, lo, hi in ((rank_promotion_reward, -1, 1), (conditional_format_reward, 0, 1), (default_rl_reward, -1, 1.2)):
        values = call(f, texts, target=target, pre_rank=pre_rank, cands=candidates)
        assert all(lo <= v <= hi for v in values)
