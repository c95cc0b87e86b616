"""Build the re-ranking datasets (train / validation / test) for any data in the two-file format.

Per query: pre-ranker top-k candidates (never a history item; training queries leak-corrected), item ids, a chat
prompt, and a target completion (trace + JSON ranking with the true item first, the rest in pre-ranker order).
"""

from __future__ import annotations

import dataclasses
import logging
import numbers
import random
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from datasets import Dataset

from .evidence import FEATURES, EvidenceModel, evidence_tokens
from .feature_ranker import FeatureRanker, LevelScorer, order_by_score_levels, out_of_fold_scores, strong_first_order
from .item_ids import ItemIdentifiers, make_item_ids
from .loading import SequenceData, load_amazon_beauty, load_sequence_data
from .preranker import TransitionPreRanker, ranking_metrics, top_of_scores
from .prompts import EVIDENCE_LETTERS, PROMPT_STYLES, TRACE_STYLES, build_completion, build_prompt, score_level_tokens
from .split import Query, leave_one_out_split, training_queries


logger = logging.getLogger(__name__)


class _Progress:
    """One log line per finished phase of the data build, with the seconds since the start (a build of the
    bundled data takes tens of seconds)."""

    def __init__(self, num_users: int):
        self.start = time.perf_counter()
        logger.info("building the re-ranking datasets from %d users", num_users)

    def __call__(self, what: str) -> None:
        logger.info("data: %s (%.1fs)", what, time.perf_counter() - self.start)


INSERT_POSITIONS = ("empirical", "last", "uniform")
TARGET_ORDERS = ("preranker", "feature_ranker", "evidence_score", "evidence_strong")
SCORED_ORDERS = ("evidence_score", "evidence_strong")


@dataclass
class RerankData:
    """The built datasets plus what is needed to use them (ids, their tokens, the fitted pre-ranker, stats)."""

    train: Dataset
    validation: Dataset
    test: Dataset
    item_ids: ItemIdentifiers
    preranker: TransitionPreRanker
    titles: dict[int, str]
    stats: dict = field(default_factory=dict)

    @property
    def special_tokens(self) -> list[str]:
        """Id tokens to register with a tokenizer (empty for the plain scheme)."""
        return list(self.item_ids.special_tokens)


def _scores(preranker: TransitionPreRanker, query: Query, train: list[list[int]] | None):
    if train is None:
        return preranker.scores(query.history)
    # training query: remove the user's own pairs from the target onwards (see TransitionPreRanker)
    return preranker.scores(query.history, own_prefix=train[query.user_index], position=query.position)


def _row(
    query: Query,
    candidates: list[int],
    ids: ItemIdentifiers,
    titles: dict[str, str],
    history_length: int,
    inserted: bool,
    max_title_words: int = 12,
    slot_ids: bool = False,
    prompt_style: str = "full",
    trace_style: str = "full",
    evidence: list[list[int]] | None = None,
    ranker_order: list[int] | None = None,
    candidate_title_words: int = 0,
    promote_top: int | None = None,
    scores: list[tuple[int, str]] | None = None,
    true_first: bool = True,
) -> dict:
    """One query. With `slot_ids`, candidates are named by their slot `[1]`..`[k]` in this prompt (RankGPT-style
    identifiers: copying a slot label is far easier for a small model than copying an item id). `evidence` holds
    each candidate's evidence levels; `ranker_order` (candidate indices, best first) orders the target ranking
    below the true item instead of the pre-ranker order."""
    if slot_ids:
        cand_ids = [f"[{k}]" for k in range(1, len(candidates) + 1)]
        titles = {**titles, **{label: titles[ids.id_of[item]] for label, item in zip(cand_ids, candidates)}}
        target_id = cand_ids[candidates.index(query.target)] if query.target in candidates else ids.id_of[query.target]
    else:
        cand_ids = [ids.id_of[c] for c in candidates]
        target_id = ids.id_of[query.target]
    hist_ids = [ids.id_of[i] for i in query.history[-history_length:]] if history_length > 0 else []
    in_cands = query.target in candidates
    pre_rank = candidates.index(query.target) if in_cands else -1
    # target ranking: true item first, the rest in pre-ranker order (or the feature ranker's; with `promote_top`
    # only the first `promote_top` come from it, the rest keep the pre-ranker order)
    order = [cand_ids[k] for k in ranker_order] if ranker_order is not None else cand_ids
    ranking = [target_id] + [c for c in order if c != target_id] if in_cands and true_first else order
    if promote_top is not None:
        head = ranking[:promote_top]
        ranking = head + [c for c in cand_ids if c not in head]
    row = {
        "prompt": build_prompt(
            hist_ids,
            cand_ids,
            titles,
            max_title_words,
            style=prompt_style,
            evidence=evidence,
            candidate_title_words=candidate_title_words,
            scores=scores,
        ),
        "completion": build_completion(
            hist_ids, ranking, titles, trace_style, cand_ids, max_title_words, evidence, scores
        ),
        "candidates": cand_ids,
        "target": target_id,
        "pre_rank": pre_rank,
        "target_in_candidates": in_cands,
        "target_inserted": inserted,
        "user_id": query.user_id,
        "history": hist_ids,
        "target_item": query.target,
        "candidate_items": candidates,
    }
    if evidence is not None:
        row["evidence"] = [list(map(int, levels)) for levels in evidence]
    if scores is not None:
        row["score_levels"] = [int(r) for r, _ in scores]
        row["score_evidence"] = [t for _, t in scores]
    return row


def _feature_ranker_orders(
    features, train_queries, train_cands, train_inserted, eval_pairs, seed, ranker_kwargs, out_of_fold: bool = True
):
    """Candidate orders (indices, best first) from a `FeatureRanker` fitted on the natural hits among the training
    queries (true item found by the pre-ranker, not inserted: an inserted item's score gives it away), out of fold
    for those queries; plus the anchor's metrics on the evaluation splits."""
    natural = np.array([q.target in c and not ins for q, c, ins in zip(train_queries, train_cands, train_inserted)])
    train_x = np.stack(features["train"])
    targets = np.array([c.index(q.target) if q.target in c else -1 for q, c in zip(train_queries, train_cands)])
    if natural.sum() < 2:
        raise ValueError(
            f"the feature ranker needs at least 2 training queries whose true item the pre-ranker "
            f"found (not inserted); got {int(natural.sum())}"
        )
    ranker = FeatureRanker(seed=seed, **ranker_kwargs).fit(train_x[natural], targets[natural])
    scores = ranker.scores(train_x)
    if out_of_fold:
        scores[natural] = out_of_fold_scores(
            train_x[natural], targets[natural], folds=min(5, int(natural.sum())), seed=seed, **ranker_kwargs
        )
    orders = {"train": [list(map(int, o)) for o in np.argsort(-scores, axis=1, kind="stable")]}
    stats = {"num_fit_queries": int(natural.sum())}
    for name, triples in eval_pairs.items():
        order = ranker.rank(np.stack(features[name])) if triples else np.zeros((0, 0), dtype=np.int64)
        orders[name] = [list(map(int, o)) for o in order]
        stats[name] = _order_metrics(triples, orders[name])
    return orders, stats


def _order_metrics(triples, orders) -> dict:
    """R@1, R@3, NDCG@3 and n of candidate orders (indices, best first) on evaluation (query, candidates, _)."""
    rankings = [[r[k] for k in o] for (_, r, _), o in zip(triples, orders)]
    truth = [q.target for q, _, _ in triples]
    m = ranking_metrics(rankings, truth, k=3)
    return {
        "recall@1": ranking_metrics(rankings, truth, k=1)["hr@1"],
        "recall@3": m["hr@3"],
        "ndcg@3": m["ndcg@3"],
        "n": m["n"],
    }


def _sample(items: list, limit: int | None, rng: random.Random) -> list:
    """A seeded subset of at most `limit` elements, in their original order."""
    if limit is None or limit >= len(items):
        return items
    keep = sorted(rng.sample(range(len(items)), limit))
    return [items[i] for i in keep]


def _check_count(name: str, value, minimum: int, meaning: str) -> None:
    """A count argument must be an int >= `minimum`: checked first, not left to an IndexError deep in the build."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum} ({meaning}), got {value!r}")


def build_rerank_datasets(
    data: SequenceData | str | Path | None = None,
    *,
    id_scheme: str = "semantic",
    num_candidates: int = 10,
    history_length: int = 10,
    max_title_words: int = 12,
    train_positions_per_user: int = 1,
    max_train_queries: int | None = None,
    max_eval_queries: int | None = None,
    insert_target_fraction: float = 0.5,
    insert_position: str = "empirical",
    keep_all_eval_queries: bool = False,
    preranker: TransitionPreRanker | None = None,
    id_kwargs: dict | None = None,
    prompt_style: str = "full",
    trace_style: str = "full",
    target_order: str = "preranker",
    candidate_title_words: int = 0,
    promote_top: int | None = None,
    ranker_kwargs: dict | None = None,
    seed: int = 0,
) -> RerankData:
    """Split leave-one-out, fit the pre-ranker on training interactions, and build one `datasets.Dataset` per split.

    Args:
        data: a loaded `SequenceData`, a folder in the two-file format, or None for the bundled Amazon Beauty.
        id_scheme: `semantic`, `single` or `plain` (see `dgr2_trl.data.item_ids`), or `slot`: candidates named
            `[1]`..`[k]` by their position in the prompt (history items keep plain ids).
        num_candidates: the pre-ranker's top-k shown per query (>= 1).
        history_length: the user's most recent items shown in the prompt (>= 0). 0 shows none: the `history`
            column is empty, the `evidence` prompt leaves out its History block, `compact`/`full` keep their
            (empty) history heading; `trace_style="full"` needs at least one item (its rationale starts from the
            most recent one).
        max_title_words: title words shown per item (>= 1).
        train_positions_per_user: training queries per user (the last training items, latest first).
        max_train_queries / max_eval_queries: seeded subsets (eval: taken after the filter below).
        insert_target_fraction: fraction of training queries whose true item the pre-ranker missed that get it
            inserted (dropping the last candidate). It goes to a position drawn from the positions of the true
            item in the training queries where the pre-ranker found it (`insert_position="empirical"`), so the
            position in the prompt does not give it away; `"last"` or `"uniform"` otherwise.
        prompt_style: `full` (system message + instructions), `compact` or `evidence` (compact, each candidate
            with its evidence level tokens, see `dgr2_trl.data.evidence`; see `build_prompt`) or `scored` (plain
            text for a pretrained tokenizer: each candidate's evidence score level and strongest evidence in words;
            needs `target_order="evidence_score"`).
        trace_style: `full` (templated rationale, ~60-150 tokens) or `short` (one evidence line from the prompt's
            titles, then the pick; see `build_short_trace`) or `ids` (the same naming only the related candidates)
            or `evidence` (the candidates most related to the history by their evidence levels, with the strongest
            levels; see `build_evidence_trace`) or `scores` (every candidate's score level, see `build_score_trace`)
            or `best` (the `scored` prompt's strong candidates and their evidence in words, see `build_best_trace`);
            `scores` and `best` need `target_order="evidence_score"` or `"evidence_strong"`.
        target_order: how the target ranking orders the candidates below the true item: `preranker` (their
            prompt order) or `feature_ranker` (a `FeatureRanker` on the evidence features, fitted on the training
            queries whose true item the pre-ranker found; those queries get out-of-fold orders). Training queries
            whose true item is not among the candidates then learn the feature ranker's whole order (listwise
            distillation of a stronger ranker). `evidence_score`: every target ranking (true item or not) is the
            order of a `LevelScorer`'s score levels (a sum of one weight per level token of the prompt, fitted on
            those same natural hits), which the `scores` trace writes out: the answer is a function of the
            prompt, computed through the trace. `evidence_strong`: the candidates whose score level is at least
            `STRONG_SCORE_LEVEL` first, then the rest, each part in prompt order (the `scored` prompt marks them;
            needs `promote_top=None`).
        candidate_title_words: title words after each candidate's evidence in the `evidence` prompt (0: none).
        promote_top: with it, the target ranking is its first `promote_top` ids (true item first, then the order
            above) followed by the other candidates in pre-ranker order: R@k and NDCG@k for k <= promote_top are
            those of the whole target order, and the rest of the answer is a copy of the prompt's order (which a
            small model learns to write validly far sooner than an arbitrary permutation).
        ranker_kwargs: `FeatureRanker` settings.
        keep_all_eval_queries: keep validation/test queries whose true item is not among the candidates (by
            default they are dropped: the paper evaluates on queries with the true item in the top-k).

    Columns: prompt, completion (TRL conversational prompt-completion), candidates (id strings, pre-ranker
    order), target (id string), pre_rank (0-based position of the target in candidates, -1 if absent),
    target_in_candidates, target_inserted, user_id, history, target_item, candidate_items; with evidence also
    `evidence` (levels per candidate) and, with `target_order="feature_ranker"`, `ranker_ranking` (the feature
    ranker's order of the candidates: the feature-based anchor).
    `stats` holds, per split, the query counts, how many have the true item among the candidates, and the
    pre-ranker's full-ranking HR@k / NDCG@k.
    """
    _check_count("num_candidates", num_candidates, 1, "the candidates per query")
    _check_count("history_length", history_length, 0, "the history items shown per prompt; 0 shows none")
    _check_count(
        "max_title_words", max_title_words, 1, "the title words shown per item; 0 would show every title as '...'"
    )
    _check_count(
        "candidate_title_words",
        candidate_title_words,
        0,
        "the title words after each candidate's evidence; 0 shows none",
    )
    if not 0.0 <= insert_target_fraction <= 1.0:
        raise ValueError(f"insert_target_fraction must be in [0, 1], got {insert_target_fraction}")
    if prompt_style not in PROMPT_STYLES:
        raise ValueError(f"prompt_style must be one of {PROMPT_STYLES}, got {prompt_style!r}")
    if trace_style not in TRACE_STYLES:
        raise ValueError(f"trace_style must be one of {TRACE_STYLES}, got {trace_style!r}")
    if trace_style == "full" and history_length == 0:
        raise ValueError(
            "trace_style='full' writes a rationale about the shown history, starting from its most recent "
            "item, so it needs history_length >= 1; with history_length=0 use trace_style 'short', "
            "'ids', 'evidence' or 'scores'"
        )
    if target_order not in TARGET_ORDERS:
        raise ValueError(f"target_order must be one of {TARGET_ORDERS}, got {target_order!r}")
    needs_scores = [name for name in (prompt_style, trace_style) if name in ("scored", "scores", "best")]
    if needs_scores and target_order not in SCORED_ORDERS:
        raise ValueError(
            f"style {needs_scores[0]!r} writes the evidence score levels of a LevelScorer, which only "
            f"target_order='evidence_score' or 'evidence_strong' fits; got target_order={target_order!r}"
        )
    if target_order == "evidence_strong" and promote_top is not None:
        raise ValueError("target_order='evidence_strong' promotes every strong candidate; pass promote_top=None")
    if insert_position not in INSERT_POSITIONS:
        raise ValueError(f"insert_position must be one of {INSERT_POSITIONS}, got {insert_position!r}")
    if data is None:
        data = load_amazon_beauty()
    elif not isinstance(data, SequenceData):
        data = load_sequence_data(data)
    progress = _Progress(len(data.sequences))
    rng = random.Random(seed)
    split = leave_one_out_split(data.sequences, data.user_ids)
    catalogue = sorted(data.titles)
    preranker = (preranker or TransitionPreRanker()).fit(split.train, catalogue=catalogue)
    slot_ids = id_scheme == "slot"
    ids = make_item_ids(
        "plain" if slot_ids else id_scheme, catalogue, split.train, data.titles, seed=seed, **(id_kwargs or {})
    )
    if slot_ids:
        ids = dataclasses.replace(ids, special_tokens=[f"[{k}]" for k in range(1, num_candidates + 1)])
    titles_by_id = {ids.id_of[i]: t for i, t in data.titles.items()}
    stats: dict = {
        "id_scheme": id_scheme,
        "item_ids": ids.stats,
        "num_users": len(data.sequences),
        "num_items": len(catalogue),
    }

    def split_stats(queries, ranked):
        m = ranking_metrics(ranked, [q.target for q in queries], k=num_candidates)
        hits = m["n"] and round(m[f"hr@{num_candidates}"] * m["n"])
        return {
            "num_queries": len(queries),
            "num_target_in_candidates": int(hits),
            **{k: float(v) for k, v in m.items() if k != "n"},
        }

    use_evidence = (
        "evidence" in (prompt_style, trace_style)
        or prompt_style == "scored"
        or target_order in ("feature_ranker", *SCORED_ORDERS)
    )
    evidence_model = EvidenceModel(seed=seed).fit(split.train, data.titles) if use_evidence else None

    progress("pre-ranker and item ids fitted" + (", evidence statistics fitted" if use_evidence else ""))
    # --- training queries -----------------------------------------------------------------------------------
    train_queries = _sample(training_queries(split, data.user_ids, train_positions_per_user), max_train_queries, rng)
    train_ranked, train_cands, train_cand_scores, train_inserted = [], [], [], []
    hit_positions: list[int] = []
    for q in train_queries:  # first pass: positions of the true item where the pre-ranker found it
        scores = _scores(preranker, q, split.train)
        train_ranked.append(top_of_scores(scores, num_candidates))
        if q.target in train_ranked[-1]:
            hit_positions.append(train_ranked[-1].index(q.target))
        # only the candidates' scores are kept (a full score vector per query would not fit in memory)
        train_cand_scores.append({"target": float(scores[q.target]), "top": scores[train_ranked[-1]].tolist()})
    stats["train"] = split_stats(train_queries, train_ranked)
    inserted = 0
    for q, cands, sc in zip(train_queries, train_ranked, train_cand_scores):
        was_inserted = False
        cand_scores = list(sc["top"])
        if q.target not in cands and len(cands) == num_candidates and rng.random() < insert_target_fraction:
            if insert_position == "last" or not hit_positions:
                pos = num_candidates - 1
            elif insert_position == "uniform":
                pos = rng.randrange(num_candidates)
            else:
                pos = rng.choice(hit_positions)
            cands, cand_scores = cands[:-1], cand_scores[:-1]
            cands.insert(pos, q.target)
            cand_scores.insert(pos, sc["target"])
            was_inserted, inserted = True, inserted + 1
        train_cands.append(cands)
        sc["cands"] = cand_scores
        train_inserted.append(was_inserted)
    stats["train"]["num_inserted"] = inserted

    progress(f"{len(train_queries)} training queries ranked")
    # --- evaluation queries ---------------------------------------------------------------------------------
    # evaluation samples get their own generator, so they do not move when the training settings change
    eval_rng = random.Random(seed + 1_000_003)
    eval_pairs = {}
    for name, queries in (("validation", split.validation), ("test", split.test)):
        ranked, cand_scores = [], []
        for q in queries:
            scores = _scores(preranker, q, None)
            ranked.append(top_of_scores(scores, num_candidates))
            cand_scores.append(scores[ranked[-1]].tolist())
        stats[name] = split_stats(queries, ranked)
        triples = [t for t in zip(queries, ranked, cand_scores) if keep_all_eval_queries or t[0].target in t[1]]
        eval_pairs[name] = _sample(triples, max_eval_queries, eval_rng)
        stats[name]["num_kept"] = len(eval_pairs[name])

    progress("validation and test queries ranked")
    # --- evidence and the feature ranker --------------------------------------------------------------------
    evidence = dict.fromkeys(("train", "validation", "test"))
    orders, anchor, score_rows = dict(evidence), dict(evidence), dict(evidence)
    if use_evidence:
        features = {
            "train": [
                evidence_model.features(q.history, c, sc["cands"])
                for q, c, sc in zip(train_queries, train_cands, train_cand_scores)
            ]
        }
        for name, triples in eval_pairs.items():
            features[name] = [evidence_model.features(q.history, r, sc) for q, r, sc in triples]
        evidence_model.fit_levels(np.concatenate(features["train"]) if features["train"] else np.zeros((1, 6)))
        evidence = {name: [evidence_model.levels(f) for f in fs] for name, fs in features.items()}
        anchor, stats["feature_ranker"] = _feature_ranker_orders(
            features,
            train_queries,
            train_cands,
            train_inserted,
            eval_pairs,
            seed,
            ranker_kwargs or {},
            out_of_fold=target_order == "feature_ranker",
        )
        if target_order == "feature_ranker":
            orders = anchor
        elif target_order in SCORED_ORDERS:
            natural = [q.target in c and not ins for q, c, ins in zip(train_queries, train_cands, train_inserted)]
            fit = np.stack([lv for lv, ok in zip(evidence["train"], natural) if ok])
            targets = np.array([c.index(q.target) for q, c, ok in zip(train_queries, train_cands, natural) if ok])
            scorer = LevelScorer(num_levels=evidence_model.num_levels, seed=seed).fit(fit, targets)
            score_rows = {}
            for name, levels in evidence.items():
                stacked = np.stack(levels) if levels else np.zeros((0, num_candidates, len(FEATURES)), dtype=np.int64)
                score_levels, strongest = scorer.score_levels(stacked), scorer.strongest_feature(stacked)
                score_rows[name] = [
                    [(int(r), f"<{EVIDENCE_LETTERS[f]}{int(lv[f])}>") for r, f, lv in zip(rs, fs, lvs)]
                    for rs, fs, lvs in zip(score_levels, strongest, stacked)
                ]
                order = order_by_score_levels if target_order == "evidence_score" else strong_first_order
                orders[name] = [order(rs) for rs in score_levels]
            stats["evidence_score_metrics"] = {
                name: _order_metrics(triples, orders[name]) for name, triples in eval_pairs.items()
            }
            stats["evidence_score"] = {
                "weights": scorer.weights.round(4).tolist(),
                "position_weights": scorer.position_weights.round(4).tolist(),
                "num_fit_queries": int(len(fit)),
            }

    if use_evidence:
        progress("evidence levels and the feature ranker fitted")

    def rows(name, queries, cand_lists, inserted_flags):
        out = [
            _row(
                q,
                c,
                ids,
                titles_by_id,
                history_length,
                ins,
                max_title_words,
                slot_ids,
                prompt_style,
                trace_style,
                None if evidence[name] is None else evidence[name][k],
                None if orders[name] is None else orders[name][k],
                candidate_title_words,
                promote_top,
                None if score_rows[name] is None else score_rows[name][k],
                target_order not in SCORED_ORDERS,
            )
            for k, (q, c, ins) in enumerate(zip(queries, cand_lists, inserted_flags))
        ]
        if anchor[name] is not None:  # the feature ranker's whole order: the feature-based anchor
            for row, order in zip(out, anchor[name]):
                row["ranker_ranking"] = [row["candidates"][k] for k in order]
        return out

    train_rows = rows("train", train_queries, train_cands, train_inserted)
    eval_sets = {
        name: Dataset.from_list(rows(name, [t[0] for t in triples], [t[1] for t in triples], [False] * len(triples)))
        for name, triples in eval_pairs.items()
    }
    progress("prompts and completions written")
    for name in ("train", "validation", "test"):
        s = stats[name]
        logger.info(
            "%s: %d queries, %d (%.1f%%) with the true item among the %d candidates; "
            "pre-ranker HR@%d %.4f NDCG@%d %.4f",
            name, s["num_queries"], s["num_target_in_candidates"],
            100 * s["num_target_in_candidates"] / max(s["num_queries"], 1), num_candidates,
            num_candidates, s[f"hr@{num_candidates}"], num_candidates, s[f"ndcg@{num_candidates}"],
        )  # fmt: skip
    return RerankData(
        train=Dataset.from_list(train_rows),
        validation=eval_sets["validation"],
        test=eval_sets["test"],
        item_ids=dataclasses.replace(
            ids,
            special_tokens=[
                *ids.special_tokens,
                *(evidence_tokens() if "evidence" in (prompt_style, trace_style) else ()),
                *(score_level_tokens() if trace_style == "scores" else ()),
            ],
        ),
        preranker=preranker,
        titles=dict(data.titles),
        stats=stats,
    )


def rerank_tokenizer_texts(data: RerankData, max_rows: int = 2000) -> list[str]:
    """Texts to train a small tokenizer on: all titles plus prompts/completions of some training rows."""
    texts = list(data.titles.values())
    for row in data.train.select(range(min(max_rows, len(data.train)))):
        texts += [m["content"] for m in row["prompt"]] + [m["content"] for m in row["completion"]]
    return texts


def train_rerank_tokenizer(data: RerankData, vocab_size: int = 2000, extra_special_tokens: Sequence[str] = ()):
    """An offline chat tokenizer (`dgr2_trl.tokenization.train_chat_tokenizer`) with the id tokens registered."""
    from dgr2_trl.tokenization import train_chat_tokenizer

    return train_chat_tokenizer(
        rerank_tokenizer_texts(data),
        vocab_size=vocab_size,
        extra_special_tokens=[*data.special_tokens, *extra_special_tokens],
    )


def target_position_histogram(dataset: Dataset) -> dict[int, int]:
    """How often the target sits at each pre-ranker position (-1 = absent); handy to check insertion."""
    return dict(sorted(Counter(dataset["pre_rank"]).items()))
