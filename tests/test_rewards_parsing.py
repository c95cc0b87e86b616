"""parse_ranking: tolerant around the JSON, strict about the permutation, never raises."""

import json
import string

from hypothesis import given, settings
from hypothesis import strategies as st

from dgr2_trl.rewards import REASONS, completion_text, parse_ranking


CANDS = ["<a_1><b_2>", "<a_3><b_4>", "<a_5><b_6>", "<a_7><b_8>"]


def answer(ids):
    return json.dumps({"ranking": list(ids)})


def test_valid_with_reasoning_and_code_fence():
    text = "The user buys nail polish, so {a} fits.\n```json\n" + answer(CANDS[::-1]) + "\n```\n"
    result = parse_ranking(text, CANDS)
    assert result.valid and result.reason == "ok"
    assert result.ranking == CANDS[::-1]


def test_whitespace_inside_ids_and_json_is_tolerated():
    text = '{ "ranking" : [ " <a_3><b_4> ", "<a_1><b_2>",\n "<a_5><b_6>", "<a_7><b_8>" ] }'
    assert parse_ranking(text, CANDS).ranking == ["<a_3><b_4>", "<a_1><b_2>", "<a_5><b_6>", "<a_7><b_8>"]


def test_last_ranking_object_wins():
    text = answer(CANDS) + " on reflection " + answer(CANDS[::-1])
    assert parse_ranking(text, CANDS).ranking == CANDS[::-1]


def test_reasons():
    assert parse_ranking("no json here", CANDS).reason == "unparsable"
    assert parse_ranking('{"ranking": "a b"}', CANDS).reason == "unparsable"
    assert parse_ranking('{"rank": []}', CANDS).reason == "unparsable"
    assert parse_ranking(answer(CANDS[:3]), CANDS).reason == "missing"
    assert parse_ranking(answer(CANDS[:3] + [CANDS[0]]), CANDS).reason == "duplicate"
    assert parse_ranking(answer(CANDS + [CANDS[0]]), CANDS).reason == "duplicate"
    assert parse_ranking(answer(CANDS[:3] + ["<a_9><b_9>"]), CANDS).reason == "out_of_set"
    assert parse_ranking('{"ranking": [1, 2, null, 4]}', CANDS).reason == "out_of_set"
    truncated = answer(CANDS)[:-3]
    assert parse_ranking(truncated, CANDS).reason == "unparsable"


def test_invalid_has_no_ranking_but_keeps_raw():
    result = parse_ranking(answer(CANDS[:2]), CANDS)
    assert result.ranking is None and not result.valid and result.raw == CANDS[:2]


def test_numeric_ids_and_chat_messages():
    cands = ["12", "7", "3"]
    assert parse_ranking('{"ranking": [7, 3, 12]}', cands).ranking == ["7", "3", "12"]
    msgs = [{"role": "assistant", "content": '{"ranking": ["3", "12", "7"]}'}]
    assert parse_ranking(msgs, cands).ranking == ["3", "12", "7"]
    parts = [{"role": "assistant", "content": [{"type": "text", "text": '{"ranking": ["3", "7", "12"]}'}]}]
    assert completion_text(parts) == '{"ranking": ["3", "7", "12"]}'


def test_adversarial_inputs_do_not_raise():
    texts = [
        "{" * 50_000,
        '{"ranking": [' * 5000,
        '{"ranking": [' + "9" * 10_000 + "]}",
        '{"ranking": [1e999999, -1e999999]}',
        '{"ranking": [NaN, Infinity]}',
        "[" * 100_000 + "]" * 100_000,
        '{"a": {"ranking": ' + json.dumps(CANDS) + "}}",
        "\x00\ud800" + answer(CANDS),
    ]
    for text in texts:
        result = parse_ranking(text, CANDS)
        assert result.reason in REASONS
    # the nested object still counts (last object with a ranking list), the lone surrogate prefix is ignored
    assert parse_ranking(texts[-2], CANDS).valid
    assert parse_ranking(texts[-1], CANDS).valid


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_random_unicode_never_raises(text):
    result = parse_ranking(text, CANDS)
    assert result.reason in REASONS
    assert result.valid == (result.reason == "ok") == (result.ranking is not None)


json_fragment = st.sampled_from(
    ['{"ranking": [', "]", "}", ",", '"', "[", "{", "null", "1e400", "9" * 30, " ", "\n"]
    + [json.dumps(c) for c in CANDS]
)


@settings(max_examples=300, deadline=None)
@given(st.lists(json_fragment, max_size=40))
def test_jsonish_noise_never_raises_and_valid_means_permutation(fragments):
    result = parse_ranking("".join(fragments), CANDS)
    assert result.reason in REASONS
    if result.valid:
        assert sorted(result.ranking) == sorted(CANDS)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(CANDS + ["x", "<a_1>"]), max_size=8), st.text(alphabet=string.printable, max_size=30))
def test_reason_matches_content(ids, prefix):
    result = parse_ranking(prefix.replace("{", "(") + answer(ids), CANDS)
    if any(i not in CANDS for i in ids):
        assert result.reason == "out_of_set"
    elif len(set(ids)) < len(ids):
        assert result.reason == "duplicate"
    elif len(ids) < len(CANDS):
        assert result.reason == "missing"
    else:
        assert result.reason == "ok" and result.ranking == ids


@settings(max_examples=100, deadline=None)
@given(st.permutations(CANDS), st.text(max_size=50), st.text(max_size=50))
def test_any_permutation_surrounded_by_text_is_found(perm, before, after):
    # text after the answer must not hold another ranking object; braces in it are fine
    result = parse_ranking(before + "\n" + answer(perm) + "\n" + after.replace("ranking", "r"), CANDS)
    assert result.valid and result.ranking == list(perm)
