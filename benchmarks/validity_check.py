"""How often a finished recipe's final model writes a valid ranking, on thousands of held-out prompts.

The recipe's stage table is measured on 500 test queries; 500 valid answers out of 500 only bound the true valid
rate above 0.994 (one-sided 95%). This check decodes many more prompts (test users, or with `--split validation`
validation users, whether or not the pre-ranker found their true item: validity does not need it) at the
evaluation setting (or `--threshold`) and reports the exact (Clopper-Pearson) lower bound. `--distinct_ids` decodes
with the recipe's `UniqueTokens` constraint (an id already in the answer cannot be written again, and every slot of
the list holds an id unless `--no_id_slots`), as a run evaluated under it (`eval_constraint`) does by default
(`--free` turns it off); `--stage ar` checks the AR teacher.

    python benchmarks/validity_check.py --recipe_dir outputs/recipe-default --queries 5000 --out benchmarks/results/validity_check.json
"""

from __future__ import annotations

import dataclasses

from recipe_bench import (  # benchmarks/ is on sys.path when run as a script
    DTYPES,
    invalid_answers,
    recipe_parser,
    run_preset,
    write_report,
)

from dgr2_trl.data import build_rerank_datasets
from dgr2_trl.recipe.run import machine_info
from dgr2_trl.recipe.stages import Recipe, data_settings


def main():
    parser = recipe_parser(__doc__)
    parser.add_argument("--queries", type=int, default=5000)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument(
        "--split",
        default="test",
        choices=["test", "validation"],
        help="validation users to choose a setting, test users to report it",
    )
    parser.add_argument("--threshold", type=float, default=None, help="default: the preset's eval_threshold")
    parser.add_argument(
        "--distinct_ids",
        action="store_true",
        help=(
            "decode with Recipe.ranking_constraint() (an id already in the answer cannot be written again); the "
            "default for a run evaluated under it (its preset's eval_constraint)"
        ),
    )
    parser.add_argument("--free", action="store_true", help="decode without the constraint, whatever the run used")
    parser.add_argument(
        "--no_id_slots", action="store_true", help="with --distinct_ids: leave the list's slots free (no id slots)"
    )
    args = parser.parse_args()
    preset = run_preset(args)
    recipe = Recipe(preset, args.recipe_dir)
    # the recipe's own test prompts, but every user of the split (not only those the pre-ranker found)
    data = build_rerank_datasets(**data_settings(preset), keep_all_eval_queries=True, max_eval_queries=args.queries)
    recipe.test = getattr(data, args.split)
    threshold = preset.eval_threshold if args.threshold is None else args.threshold
    args.distinct_ids = (args.distinct_ids or preset.eval_constraint) and not args.free
    scores = recipe.evaluate(
        recipe.load(args.stage, DTYPES[args.dtype]),
        block=args.stage != "ar",
        threshold=threshold,
        batch_size=args.batch_size,
        constraint=recipe.ranking_constraint(id_slots=not args.no_id_slots) if args.distinct_ids else None,
        keep_rows=True,
    )
    valid = round(scores["valid_rate"] * scores["n"])
    report = {
        "machine": machine_info(),
        "dtype": args.dtype,
        "stage": args.stage,
        "split": args.split,
        "threshold": threshold,
        "distinct_ids": args.distinct_ids,
        "id_slots": args.distinct_ids and not args.no_id_slots,
        "fallback": preset.eval_fallback,
        "n": scores["n"],
        "valid": valid,
        "valid_rate": scores["valid_rate"],
        "valid_rate_lower_95": scores["valid_rate_lower_95"],
        "invalid_reasons": scores["invalid_reasons"],
        "invalid_answers": invalid_answers(scores["rows"]),
        "forward_passes_per_token": scores["forward_passes_per_token"],
        "preset": dataclasses.asdict(preset),
    }
    print(
        f"{args.stage}: valid {valid}/{scores['n']} (rate {scores['valid_rate']:.4f}, one-sided 95% lower bound "
        f"{report['valid_rate_lower_95']:.4f}) on {args.split} users at threshold {threshold} / {preset.eval_fallback}"
        f"{', distinct ids' if args.distinct_ids else ''}{', id slots' if report['id_slots'] else ''}; "
        f"invalid reasons {scores['invalid_reasons']}",
        flush=True,
    )
    write_report(args.out, report)


if __name__ == "__main__":
    main()
