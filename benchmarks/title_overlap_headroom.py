"""How much the evidence a small re-ranker can see adds to the pre-ranker, without training a model.

The recipe's default AR teacher reproduces the pre-ranker's order. Is there anything in the prompt to beat it
with, and can it be learnt from the training queries?

* Hand rule: re-score each evaluation query's 10 candidates as `-(pre-ranker position) + alpha * (informative
  title words shared with the most recent history item)`, for the full titles and for the titles as the default
  prompt shows them (first `--max-title-words` words). `alpha` is not fitted: the best one is chosen by looking.
* Fitted table: the best any learner can do with the same evidence, as a table of the true item's rate per
  (pre-ranker position, shown words shared with the most recent item (0/1/2+), shared with any shown history item
  (0/1/2+)), fitted on the real training queries (the true item among the candidates; `--train-positions` per
  user) or on the validation queries, and ranking each test query's candidates by it.

    python benchmarks/title_overlap_headroom.py --out benchmarks/results/title_overlap_headroom.json
"""

from __future__ import annotations

import argparse
import json
import math
from collections import defaultdict
from pathlib import Path

from dgr2_trl.data import build_rerank_datasets, shorten_title
from dgr2_trl.data.prompts import content_words


def title_word_sets(titles, max_title_words: int | None):
    def words(item: int) -> set[str]:
        title = titles.get(item, "")
        return set(content_words(shorten_title(title, max_title_words) if max_title_words else title))

    return words


def ranking_scores(rows, score_fn) -> dict:
    """R@1 / R@3 / NDCG@3 when each row's candidates are ordered by `score_fn(row)` (ties: pre-ranker order)."""
    r1 = r3 = ndcg3 = 0.0
    for row in rows:
        cands, score = row["candidate_items"], score_fn(row)
        order = sorted(range(len(cands)), key=lambda k: (-score[k], k))
        pos = [cands[k] for k in order].index(row["target_item"])
        r1 += pos == 0
        r3 += pos < 3
        ndcg3 += 1 / math.log2(pos + 2) if pos < 3 else 0.0
    n = len(rows)
    return {"recall@1": r1 / n, "recall@3": r3 / n, "ndcg@3": ndcg3 / n, "n": n}


def scores(rows, titles, alpha: float, max_title_words: int | None) -> dict:
    words = title_word_sets(titles, max_title_words)
    return ranking_scores(
        rows,
        lambda row: [
            -k + alpha * len(words(c) & words(row["history_items"][-1])) for k, c in enumerate(row["candidate_items"])
        ],
    )


def evidence_cells(row, words) -> list[tuple[int, int, int]]:
    """Per candidate: (pre-ranker position, words shared with the most recent item, with any history item), capped at 2."""
    last = words(row["history_items"][-1])
    seen = set().union(*(words(h) for h in row["history_items"]))
    return [
        (k, min(len(words(c) & last), 2), min(len(words(c) & seen), 2)) for k, c in enumerate(row["candidate_items"])
    ]


def fit_evidence_table(rows, words) -> dict:
    """The true item's smoothed rate in each evidence cell: what a learner that sees exactly this evidence can
    estimate from `rows` (each with its true item among the candidates)."""
    counts = defaultdict(lambda: [0, 0])
    for row in rows:
        for cell, item in zip(evidence_cells(row, words), row["candidate_items"]):
            counts[cell][0] += item == row["target_item"]
            counts[cell][1] += 1
    return {cell: (hits + 0.5) / (n + 1) for cell, (hits, n) in counts.items()}


def table_scores(rows, table, words) -> dict:
    return ranking_scores(rows, lambda row: [table.get(cell, 0.0) for cell in evidence_cells(row, words)])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-title-words", type=int, default=4)
    parser.add_argument("--alphas", type=float, nargs="+", default=[0.3, 1.0, 3.0])
    parser.add_argument("--history-length", type=int, default=3, help="history items shown (the default preset's)")
    parser.add_argument(
        "--train-positions", type=int, default=4, help="training queries per user for the fitted table"
    )
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    data = build_rerank_datasets(
        id_scheme="plain",
        history_length=args.history_length,
        max_train_queries=None,
        train_positions_per_user=args.train_positions,
        insert_target_fraction=0.0,
        max_eval_queries=None,
    )
    item_of = {v: k for k, v in data.item_ids.id_of.items()}

    def plain_rows(dataset):
        return [
            {
                "history_items": [item_of[h] for h in r["history"]],
                "candidate_items": r["candidate_items"],
                "target_item": r["target_item"],
            }
            for r in dataset
            if r["target_in_candidates"]
        ]

    splits = {name: plain_rows(getattr(data, name)) for name in ("train", "validation", "test")}
    results = []
    for split in ("validation", "test"):
        rows = splits[split]
        for titles_shown, limit in (("full", None), (f"first {args.max_title_words} words", args.max_title_words)):
            for alpha in [0.0, *args.alphas]:
                s = scores(rows, data.titles, alpha, limit)
                results.append({"split": split, "titles": titles_shown, "alpha": alpha, **s})
                print(
                    f"{split:10s} titles={titles_shown:14s} alpha={alpha:<4} R@1 {s['recall@1']:.4f}  "
                    f"R@3 {s['recall@3']:.4f}  NDCG@3 {s['ndcg@3']:.4f}  n {s['n']}"
                )
    words = title_word_sets(data.titles, args.max_title_words)
    for fitted_on in ("train", "validation"):
        table = fit_evidence_table(splits[fitted_on], words)
        for split in ("validation", "test"):
            if split == fitted_on:
                continue
            s = table_scores(splits[split], table, words)
            results.append(
                {
                    "split": split,
                    "titles": f"first {args.max_title_words} words",
                    "table_fitted_on": fitted_on,
                    "table_fit_queries": len(splits[fitted_on]),
                    **s,
                }
            )
            print(
                f"{split:10s} table fitted on {fitted_on} ({len(splits[fitted_on])} queries)  R@1 {s['recall@1']:.4f}  "
                f"R@3 {s['recall@3']:.4f}  NDCG@3 {s['ndcg@3']:.4f}  n {s['n']}"
            )
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
