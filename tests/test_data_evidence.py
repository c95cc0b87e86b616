"""Evidence features, their levels, the feature ranker, the evidence prompt and trace."""

import numpy as np
import pytest

from dgr2_trl.data import build_rerank_datasets, load_amazon_beauty
from dgr2_trl.data.evidence import FEATURES, EvidenceModel, evidence_tokens
from dgr2_trl.data.feature_ranker import (
    FeatureRanker,
    LevelScorer,
    order_by_score_levels,
    out_of_fold_scores,
    strong_first_order,
)
from dgr2_trl.data.prompts import (
    STRONG_SCORE_LEVEL,
    build_best_trace,
    build_completion,
    build_evidence_trace,
    build_prompt,
    build_score_trace,
    evidence_reason,
    evidence_string,
    score_level_tokens,
)
from dgr2_trl.recipe.analysis import trace_agreement, trace_of
from dgr2_trl.rewards import parse_ranking


TITLES = dict(
    enumerate(
        [
            "Acme Rose Lip Balm",
            "Acme Rose Hand Cream",
            "Brio Nail Polish Red",
            "Brio Nail Polish Blue",
            "Cara Shampoo Mint",
            "Cara Conditioner Mint",
            "Dove Soap Bar",
            "Elan Eye Liner",
            "Elan Eye Shadow",
            "Fizz Bath Bomb",
            "Gala Face Mask",
            "Hale Sun Cream",
        ]
    )
)
SEQUENCES = [[0, 1, 2, 3, 4, 5], [2, 3, 7, 8, 0, 1], [4, 5, 6, 9, 10, 11], [7, 8, 2, 3, 1, 0], [9, 10, 11, 4, 5, 6]]


def test_features_never_see_a_training_querys_own_answer():
    """Statistics are fitted without each prefix's last item (the target of that user's training query): changing
    that item changes none of the features of that query."""
    changed = [list(s) for s in SEQUENCES]
    changed[1][-1] = 11
    history, candidates, scores = SEQUENCES[1][:-1], [1, 6, 9], [0.5, 0.4, 0.1]
    a = EvidenceModel(svd_rank=3).fit(SEQUENCES, TITLES).features(history, candidates, scores)
    b = EvidenceModel(svd_rank=3).fit(changed, TITLES).features(history, candidates, scores)
    np.testing.assert_array_equal(a, b)
    assert a.shape == (3, len(FEATURES))


def test_features_read_the_history():
    model = EvidenceModel(svd_rank=3).fit(SEQUENCES, TITLES)
    f = model.features([2, 3], [7, 11], [1.0, 0.5])
    cooc, title, brand = (FEATURES.index(k) for k in ("cooc", "title", "brand"))
    assert f[0, cooc] > 0 and f[1, cooc] == 0  # 7 follows 2, 3 in two sequences; 11 never near them
    assert f[0, FEATURES.index("score")] == 1.0 and f[1, FEATURES.index("score")] == 0.5
    g = model.features([0], [1, 6], [1.0, 1.0])  # "Acme Rose ..." shares the brand and "rose" with item 1 only
    assert g[0, title] > 0 and g[1, title] == 0 and g[0, brand] > 0 and g[1, brand] == 0


def test_levels_keep_zero_apart_and_are_monotone():
    rng = np.random.default_rng(0)
    x = rng.exponential(size=(2000, len(FEATURES)))
    x[:500, 1] = 0.0  # a feature that is often exactly 0
    model = EvidenceModel(num_levels=8).fit_levels(x)
    levels = model.levels(x)
    assert levels.min() == 0 and levels.max() == 7
    assert (levels[:500, 1] == 0).all() and (levels[500:, 1] >= 1).all()
    for f in range(len(FEATURES)):
        order = np.argsort(x[:, f])
        assert (np.diff(levels[order, f]) >= 0).all()


def test_feature_ranker_learns_a_rule_and_out_of_fold_scores_ignore_their_own_target():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 5, len(FEATURES)))
    targets = x[..., 1].argmax(axis=1)
    ranker = FeatureRanker(epochs=60).fit(x[:300], targets[:300])
    assert (ranker.rank(x[300:])[:, 0] == targets[300:]).mean() > 0.9
    scores = out_of_fold_scores(x, targets, folds=4, epochs=5)
    flipped = targets.copy()
    flipped[7] = (targets[7] + 1) % 5
    again = out_of_fold_scores(x, flipped, folds=4, epochs=5)
    np.testing.assert_array_equal(scores[7], again[7])  # query 7's model never saw query 7
    assert not np.array_equal(scores, again)


def test_evidence_prompt_and_trace_come_from_the_prompt_only():
    candidates = ["[1]", "[2]", "[3]"]
    evidence = [[7, 0, 0, 1, 0, 3], [5, 6, 4, 0, 7, 2], [2, 3, 0, 0, 0, 1]]
    prompt = build_prompt(
        ["11", "12"], candidates, {"11": "Acme Rose Balm", "12": "Brio Nail"}, 2, "evidence", evidence=evidence
    )[0]["content"]
    assert "[2]<s5><c6><t4><v0><b7><p2>" in prompt and "11 Acme Rose..." in prompt
    trace = build_evidence_trace(candidates, evidence)
    # most related first ([2]: 6+4+7), its two strongest relation levels; [1] has only the svd level 1
    assert trace == "Related: [2]<b7><c6>;[3]<c3>;[1]<v1>."
    # the trace never depends on the answer: two rankings, the same trace line
    a = build_completion([], ["[1]", "[2]", "[3]"], {}, "evidence", candidates, evidence=evidence)[0]["content"]
    b = build_completion([], ["[3]", "[1]", "[2]"], {}, "evidence", candidates, evidence=evidence)[0]["content"]
    assert trace_of(a) == trace_of(b) == trace and a != b
    assert parse_ranking(b, candidates).ranking == ["[3]", "[1]", "[2]"]
    assert b.endswith('{"ranking":["[3]","[1]","[2]"]}')
    # other evidence, another trace
    assert build_evidence_trace(candidates, [[7, 5, 0, 0, 0, 0], *evidence[1:]]) != trace
    assert build_evidence_trace(candidates, [[0] * 6] * 3) == "Related: none."
    with pytest.raises(ValueError, match="6 evidence levels"):
        evidence_string([1, 2])


def test_trace_agreement_counts_exact_traces():
    class Rows(dict):
        column_names = ["candidates", "evidence"]

    data = Rows(candidates=[["[1]", "[2]"]] * 2, evidence=[[[0, 5, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0]]] * 2)
    right = "Related: [1]<c5>.\n{}"
    stats = trace_agreement([{"text": right}, {"text": "Related: [2]<c5>.\n{}"}], data)
    assert stats == {"num_distinct_traces": 2, "n": 2, "agreement": 0.5}
    # with completions (any trace style), the data's own trace is the expected one
    data = Rows(candidates=[["[1]", "[2]"]] * 2, completion=[[{"role": "assistant", "content": right}]] * 2)
    data.column_names = ["candidates", "completion"]
    best = "Strong evidence: none. The rest keep the retriever order.\n{}"
    stats = trace_agreement([{"text": right}, {"text": best}], data)
    assert stats == {"num_distinct_traces": 2, "n": 2, "agreement": 0.5}


def test_level_scorer_is_a_sum_of_token_weights():
    rng = np.random.default_rng(1)
    levels = rng.integers(0, 8, size=(300, 4, len(FEATURES)))
    targets = levels[..., 2].argmax(axis=1)  # the true item has the highest level of feature 2
    scorer = LevelScorer(epochs=100).fit(levels, targets)
    manual = np.array(
        [
            [
                sum(scorer.weights[f, lv[f]] for f in range(len(FEATURES))) + scorer.position_weights[k]
                for k, lv in enumerate(q)
            ]
            for q in levels[:5]
        ]
    )
    np.testing.assert_allclose(scorer.scores(levels[:5]), manual, rtol=0, atol=1e-12)
    assert (scorer.scores(levels).argmax(1) == targets).mean() > 0.8
    assert scorer.weights[2, 7] > scorer.weights[2, 0]
    score_levels = scorer.score_levels(levels)
    assert score_levels.min() == 0 and score_levels.max() == scorer.num_score_levels - 1
    assert set(scorer.strongest_feature(levels).ravel()) <= set(range(1, len(FEATURES)))  # never the score itself
    assert order_by_score_levels([3, 9, 3, 9]) == [1, 3, 0, 2]  # highest first, ties in prompt order


def test_score_trace_format():
    assert build_score_trace(["[1]", "[2]"], [4, 9], ["<t6>", "<c2>"]) == "Scores: [1]<r4><t6>;[2]<r9><c2>."
    assert build_score_trace(["[1]", "[2]"], [4, 9], ["<t6>", "<c2>"], num_best=2).endswith(" Best: <r9>[2]<r4>[1].")
    trace = build_score_trace(["[1]", "[2]", "[3]", "[4]"], [7, 7, 2, 9], ["<t6>", "<c2>", "<b1>", "<v3>"], num_best=3)
    assert trace.endswith("Best: <r9>[4]<r7>[1][2].")  # highest first, ties in prompt order, three of them
    with pytest.raises(ValueError):
        build_score_trace(["[1]"], [4, 9], ["<t6>"])


def test_best_trace_and_reasons_in_words():
    assert evidence_reason("<c5>") == "co-bought" and evidence_reason("<t0>") == "weak"
    for bad in ("<x3>", "<c>", "c5x"):
        with pytest.raises(ValueError, match="evidence level token"):
            evidence_reason(bad)
    strong = STRONG_SCORE_LEVEL
    candidates = ["[1]", "[2]", "[3]", "[4]"]
    scores = [(strong - 1, "<c2>"), (9, "<t6>"), (1, "<b0>"), (strong, "<v3>")]
    trace = build_best_trace(candidates, scores)
    assert trace == "Strong evidence: [2] similar title; [4] similar shoppers. The rest keep the retriever order."
    assert build_best_trace(candidates[:1], scores[:1]).startswith("Strong evidence: none.")
    with pytest.raises(ValueError, match="4 candidates"):
        build_best_trace(candidates, scores[:2])
    assert strong_first_order([level for level, _ in scores]) == [1, 3, 0, 2]
    prompt = build_prompt([], candidates, {}, style="scored", scores=scores)[0]["content"]
    assert "\n[1] weak\n[2] strong: similar title\n[3] weak\n[4] strong: similar shoppers\n" in prompt
    with pytest.raises(ValueError, match="scored"):
        build_prompt([], candidates, {}, style="scored", scores=scores[:2])


def test_scored_prompt_needs_a_scored_order():
    with pytest.raises(ValueError, match="target_order='evidence_score'"):
        build_rerank_datasets(
            load_amazon_beauty(), prompt_style="scored", trace_style="best", target_order="preranker"
        )
    with pytest.raises(ValueError, match="promote_top=None"):
        build_rerank_datasets(
            load_amazon_beauty(), prompt_style="scored", target_order="evidence_strong", promote_top=3
        )


def test_scored_datasets_are_plain_text_and_promote_the_strong_candidates():
    """The pretrained CPU preset's data: no added token but the slot ids, prompt and trace in words, and the answer
    the candidates the prompt marks strong, then the rest, each in prompt order."""
    d = build_rerank_datasets(
        load_amazon_beauty(),
        id_scheme="slot",
        prompt_style="scored",
        trace_style="best",
        target_order="evidence_strong",
        history_length=0,
        promote_top=None,
        max_train_queries=500,
        max_eval_queries=100,
        seed=0,
    )
    assert d.special_tokens == [f"[{k}]" for k in range(1, 11)]
    promoted = []
    for split in (d.train, d.test):
        for row in split.select(range(100)):
            cands, prompt = row["candidates"], row["prompt"][0]["content"]
            text = row["completion"][0]["content"]
            assert "<" not in prompt + text  # no level tokens: a pretrained tokenizer reads it as it is
            scores = list(zip(row["score_levels"], row["score_evidence"]))
            strong = [c for c, (level, _) in zip(cands, scores) if level >= STRONG_SCORE_LEVEL]
            for c, (_, token) in zip(cands, scores):
                line = f"{c} strong: {evidence_reason(token)}" if c in strong else f"{c} weak"
                assert f"\n{line}\n" in prompt
            assert parse_ranking(text, cands).ranking == strong + [c for c in cands if c not in strong]
            assert trace_of(text) == build_best_trace(cands, scores)
            promoted.append(len(strong))
    assert 0 < sum(promoted) / len(promoted) < 9  # the answers differ from the prompt order, and not always


CONFIGS = {
    "feature_ranker": dict(trace_style="evidence", target_order="feature_ranker"),
    "evidence_score": dict(trace_style="scores", target_order="evidence_score"),  # the default preset's
}


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def evidence_data(request):
    return request.param, build_rerank_datasets(
        load_amazon_beauty(),
        id_scheme="slot",
        prompt_style="evidence",
        insert_target_fraction=0.0,
        history_length=3,
        max_title_words=2,
        promote_top=3,
        max_train_queries=6000,
        max_eval_queries=300,
        seed=0,
        **CONFIGS[request.param],
    )


def test_evidence_datasets_on_beauty(evidence_data):
    config, d = evidence_data
    assert set(evidence_tokens()) <= set(d.special_tokens)
    assert (set(score_level_tokens()) <= set(d.special_tokens)) == (config == "evidence_score")
    stats = d.stats["feature_ranker"]
    assert stats["num_fit_queries"] == sum(d.train["target_in_candidates"]) > 300
    assert d.stats["train"]["num_inserted"] == 0
    for split in (d.train, d.test):
        for row in split.select(range(100)):
            cands = row["candidates"]
            assert sorted(row["ranker_ranking"]) == sorted(cands)
            text = row["completion"][0]["content"]
            ranking = parse_ranking(text, cands).ranking
            if config == "feature_ranker":
                assert trace_of(text) == build_evidence_trace(cands, row["evidence"])
                rest = [c for c in row["ranker_ranking"] if c != row["target"]]
                order = [row["target"]] + rest if row["target_in_candidates"] else row["ranker_ranking"]
            else:  # the answer reads the trace's scores off: it never depends on the true item
                assert trace_of(text) == build_score_trace(cands, row["score_levels"], row["score_evidence"])
                order = [cands[k] for k in order_by_score_levels(row["score_levels"])]
            # three promoted, the rest in prompt order
            assert ranking == order[:3] + [c for c in cands if c not in order[:3]]
            assert all(
                f"{c}{evidence_string(e)}" in row["prompt"][0]["content"] for c, e in zip(cands, row["evidence"])
            )
    # the trace depends on the prompt: it varies across queries
    assert len({trace_of(r["completion"][0]["content"]) for r in d.test}) > 250
    if config == "evidence_score":
        assert d.stats["evidence_score_metrics"]["validation"]["n"] == len(d.validation)
