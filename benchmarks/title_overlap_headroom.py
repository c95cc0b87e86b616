"""How much the evidence a small re-ranker can see adds to the pre-ranker: a hand rule, no training.

The recipe's default AR teacher reproduces the pre-ranker's order. Is there anything in the prompt to beat it
with? This re-scores each evaluation query's 10 candidates as `-(pre-ranker position) + alpha * (informative
title words shared with the most recent history item)` and prints R@1 / R@3 / NDCG@3 against the floor, for the
full titles and for the titles as the default prompt shows them (first `--max-title-words` words).

    python benchmarks/title_overlap_headroom.py --out benchmarks/results/title_overlap_headroom.json
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from dgr2_trl.data import build_rerank_datasets, shorten_title
from dgr2_trl.data.prompts import content_words


def scores(rows, titles, alpha: float, max_title_words: int | None) -> dict:
    def words(item: int) -> set[str]:
        title = titles.get(item, "")
        return set(content_words(shorten_title(title, max_title_words) if max_title_words else title))

    r1 = r3 = ndcg3 = 0.0
    for row in rows:
        last = words(row["history_items"][-1])
        cands = row["candidate_items"]
        score = [-k + alpha * len(words(c) & last) for k, c in enumerate(cands)]
        order = sorted(range(len(cands)), key=lambda k: (-score[k], k))
        pos = [cands[k] for k in order].index(row["target_item"])
        r1 += pos == 0
        r3 += pos < 3
        ndcg3 += 1 / math.log2(pos + 2) if pos < 3 else 0.0
    n = len(rows)
    return {"recall@1": r1 / n, "recall@3": r3 / n, "ndcg@3": ndcg3 / n, "n": n}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-title-words", type=int, default=4)
    parser.add_argument("--alphas", type=float, nargs="+", default=[0.3, 1.0, 3.0])
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    data = build_rerank_datasets(id_scheme="plain", history_length=1, max_train_queries=1, max_eval_queries=None)
    item_of = {v: k for k, v in data.item_ids.id_of.items()}
    results = []
    for split in ("validation", "test"):
        rows = [{"history_items": [item_of[h] for h in r["history"]], "candidate_items": r["candidate_items"],
                 "target_item": r["target_item"]} for r in getattr(data, split)]
        for titles_shown, limit in (("full", None), (f"first {args.max_title_words} words", args.max_title_words)):
            for alpha in [0.0, *args.alphas]:
                s = scores(rows, data.titles, alpha, limit)
                results.append({"split": split, "titles": titles_shown, "alpha": alpha, **s})
                print(f"{split:10s} titles={titles_shown:14s} alpha={alpha:<4} R@1 {s['recall@1']:.4f}  "
                      f"R@3 {s['recall@3']:.4f}  NDCG@3 {s['ndcg@3']:.4f}  n {s['n']}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
