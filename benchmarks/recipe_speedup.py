"""Block-diffusion speed-up over AR on a finished recipe run, interleaved and repeated so machine drift cancels.

A single frontier run times AR once and then each threshold: on a shared or throttling machine the ratio moves
with whatever the machine did in between. Here every round times AR and each block setting back to back on the
same queries; the report gives the median and range of the per-round ratios.

    python benchmarks/recipe_speedup.py --recipe_dir outputs/recipe-default --rounds 5 --out benchmarks/results/recipe_speedup.json
"""

from __future__ import annotations

import statistics

from recipe_bench import (  # benchmarks/ is on sys.path when run as a script
    DTYPES,
    recipe_parser,
    run_preset,
    write_report,
)

from dgr2_trl.recipe.run import machine_info
from dgr2_trl.recipe.stages import Recipe


def main():
    parser = recipe_parser(__doc__)
    parser.add_argument(
        "--settings",
        nargs="+",
        default=["0.9:leftmost", "0.95:leftmost", "0.7:confidence"],
        help="threshold:fallback pairs; threshold:fallback:distinct decodes that one with the ranking constraint",
    )
    parser.add_argument("--batch_sizes", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--queries", type=int, nargs="+", default=[32, 128], help="queries per batch size")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--distinct_ids",
        action="store_true",
        help="decode the block settings with Recipe.ranking_constraint() (distinct ids and id slots); AR stays free",
    )
    args = parser.parse_args()
    settings = []  # (threshold, fallback, distinct ids)
    for setting in args.settings:
        parts = setting.split(":")
        if (
            len(parts) not in (2, 3)
            or parts[1] not in ("confidence", "leftmost")
            or parts[2:] not in ([], ["distinct"])
        ):
            parser.error(
                f"--settings {setting!r}: expected threshold:fallback[:distinct], fallback confidence|leftmost"
            )
        settings.append((float(parts[0]), parts[1], args.distinct_ids or parts[2:] == ["distinct"]))
    recipe = Recipe(run_preset(args), args.recipe_dir)
    ar, block = recipe.load("ar", DTYPES[args.dtype]), recipe.load(args.stage, DTYPES[args.dtype])
    recipe.warm_up(ar, block)
    constraint = recipe.ranking_constraint() if any(distinct for *_, distinct in settings) else None
    report = {
        "machine": machine_info(),
        "dtype": args.dtype,
        "rounds": args.rounds,
        "distinct_ids": args.distinct_ids,
        "results": [],
    }
    for batch_size, n in zip(args.batch_sizes, args.queries):
        ratios = {s: [] for s in settings}
        speeds = {s: [] for s in settings}
        ar_speeds = []
        quality = {}
        for _ in range(args.rounds):
            base = recipe.evaluate(ar, block=False, batch_size=batch_size, max_queries=n)
            ar_speeds.append(base["tokens_per_second"])
            for threshold, fallback, distinct in settings:
                scores = recipe.evaluate(
                    block,
                    block=True,
                    threshold=threshold,
                    fallback=fallback,
                    batch_size=batch_size,
                    max_queries=n,
                    constraint=constraint if distinct else None,
                )
                ratios[(threshold, fallback, distinct)].append(scores["tokens_per_second"] / base["tokens_per_second"])
                speeds[(threshold, fallback, distinct)].append(scores["tokens_per_second"])
                quality[(threshold, fallback, distinct)] = (
                    scores["valid_rate"],
                    scores["recall@1"],
                    base["recall@1"],
                    scores["forward_passes_per_token"],
                    scores["ndcg@3"],
                    base["ndcg@3"],
                )
        for (threshold, fallback, distinct), values in ratios.items():
            valid, r1, ar_r1, passes, ndcg3, ar_ndcg3 = quality[(threshold, fallback, distinct)]
            row = {
                "batch_size": batch_size,
                "n": n,
                "threshold": threshold,
                "fallback": fallback,
                "distinct_ids": distinct,
                "speedup_median": statistics.median(values),
                "speedup_min": min(values),
                "speedup_max": max(values),
                # absolute speeds, so runs in different dtypes can be compared with each other's AR
                "tokens_per_second_median": statistics.median(speeds[(threshold, fallback, distinct)]),
                "ar_tokens_per_second_median": statistics.median(ar_speeds),
                "valid_rate": valid,
                "recall@1": r1,
                "ar_recall@1": ar_r1,
                "ndcg@3": ndcg3,
                "ar_ndcg@3": ar_ndcg3,
                "forward_passes_per_token": passes,
            }
            report["results"].append(row)
            print(
                f"batch {batch_size:>2} tau {threshold} {fallback:10s}{' distinct' if distinct else ''}: {row['speedup_median']:.2f}x AR "
                f"(range {row['speedup_min']:.2f}-{row['speedup_max']:.2f}, {args.rounds} rounds), valid {valid:.3f}, "
                f"R@1 {r1:.4f} vs AR {ar_r1:.4f}, {passes:.3f} passes/token",
                flush=True,
            )
    write_report(args.out, report)


if __name__ == "__main__":
    main()
