"""What decoding with distinct candidate ids (`UniqueTokens`) does to a finished recipe's stages.

Every stage that writes text (the AR teacher, +CFT, +OPD, +RL) is decoded twice on the same users, at the
evaluation setting: free, and with `Recipe.ranking_constraint()` (after `{"ranking":["` an id already written cannot
be chosen again; in the block decoder, of one step's commits that chose the same id only the most confident is
kept; unless `--no_id_slots`, every slot of the list must also hold an id: no `","","`). Reported per stage and mode: the recipe's metrics, valid rate and its 95% lower bound, the invalid reasons,
copies of the pre-ranker, distinct texts and tokens/s; and paired 95% bootstrap intervals of constrained - free,
of each stage against the free teacher and against the constrained teacher.

    python benchmarks/constrained_ranking.py --recipe_dir outputs/recipe-default --seed 0 \\
        --out benchmarks/results/constrained_ranking_seed0.json
    python benchmarks/constrained_ranking.py --table benchmarks/results/constrained_ranking_seed*.json
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from recipe_bench import (  # benchmarks/ is on sys.path when run as a script
    DTYPES,
    invalid_answers,
    recipe_parser,
    run_preset,
    write_report,
)

from dgr2_trl.evaluation import METRIC_KEYS, compare_rankings
from dgr2_trl.recipe.run import machine_info
from dgr2_trl.recipe.stages import Recipe


STAGES = ("ar", "cft", "opd", "rl")
REPORTED = (
    "n",
    *METRIC_KEYS,
    "valid_rate",
    "valid_rate_lower_95",
    "invalid_reasons",
    "copies_floor_rate",
    "num_distinct_texts",
    "tokens_per_second",
    "forward_passes_per_token",
)


def _interval(c: dict, key: str) -> str:
    return f"{c[key]['diff']:+.4f} [{c[key]['low']:+.4f}, {c[key]['high']:+.4f}]"


def markdown_table(reports: list[dict]) -> str:
    """One row per seed and stage: valid rate free -> constrained, NDCG@3 and R@3 with the constraint, and the
    constrained stage against the constrained teacher (paired 95% intervals)."""
    lines = [
        "| seed | stage | valid free -> constrained (lower 95%) | NDCG@3 free -> constrained | R@3 free -> constrained "
        "| constrained - free NDCG@3 | NDCG@3 - constrained teacher | R@3 - constrained teacher |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for report in reports:
        runs = report["runs"]
        for stage in [key.split("/")[0] for key in runs if key.endswith("/free")]:
            free, cons = runs[f"{stage}/free"], runs[f"{stage}/constrained"]
            vs = report["vs_teacher_constrained"].get(stage, {}).get("constrained")
            lines.append(
                f"| {report['seed']} | {stage} | {free['valid_rate']:.4f} -> {cons['valid_rate']:.4f} "
                f"({cons['valid_rate_lower_95']:.4f}) | {free['ndcg@3']:.4f} -> {cons['ndcg@3']:.4f} "
                f"| {free['recall@3']:.4f} -> {cons['recall@3']:.4f} "
                f"| {_interval(report['constrained_vs_free'][stage], 'ndcg@3')} "
                f"| {_interval(vs, 'ndcg@3') if vs else '-'} | {_interval(vs, 'recall@3') if vs else '-'} |"
            )
    return "\n".join(lines)


def main():
    parser = recipe_parser(__doc__, stage=False)
    parser.add_argument("--split", default="test", choices=["test", "validation"])
    parser.add_argument("--stages", nargs="+", default=list(STAGES))
    parser.add_argument(
        "--no_id_slots",
        action="store_true",
        help="only distinct ids: leave the list's slots free (an id may be empty)",
    )
    parser.add_argument(
        "--threshold", type=float, default=None, help="the block stages' commit threshold (default: the preset's)"
    )
    parser.add_argument(
        "--fallback",
        default=None,
        choices=["confidence", "leftmost"],
        help="the block stages' fallback when nothing clears the threshold (default: the preset's)",
    )
    parser.add_argument(
        "--table", nargs="+", default=None, help="print the Markdown table of these reports, run nothing"
    )
    args = parser.parse_args()
    if args.table:
        print(markdown_table([json.loads(Path(path).read_text()) for path in args.table]))
        return
    preset = run_preset(args)
    recipe = Recipe(preset, args.recipe_dir)
    constraint = recipe.ranking_constraint(id_slots=not args.no_id_slots)
    targets = (
        list(getattr(recipe.data, args.split)["target"]) if args.split == "validation" else list(recipe.test["target"])
    )
    runs: dict[str, dict] = {}
    for stage in args.stages:
        model = recipe.load(stage, DTYPES[args.dtype])
        for mode in ("free", "constrained"):
            scores = recipe.evaluate(
                model,
                block=stage != "ar",
                threshold=args.threshold,
                fallback=args.fallback,
                split=args.split,
                constraint=constraint if mode == "constrained" else None,
                keep_rows=True,
            )
            runs[f"{stage}/{mode}"] = scores
            print(
                f"{stage:>4} {mode:>11}: valid {scores['valid_rate']:.4f} (lower {scores['valid_rate_lower_95']:.4f}) "
                f"NDCG@3 {scores['ndcg@3']:.4f} R@3 {scores['recall@3']:.4f} R@1 {scores['recall@1']:.4f} "
                f"reasons {scores['invalid_reasons']}",
                flush=True,
            )
    rankings = {key: [row["ranking"] for row in run["rows"]] for key, run in runs.items()}
    texts = {key: [row["text"] for row in run["rows"]] for key, run in runs.items()}
    report = {
        "machine": machine_info(),
        "recipe_dir": str(args.recipe_dir),
        "seed": preset.seed,
        "split": args.split,
        "dtype": args.dtype,
        "threshold": args.threshold or preset.eval_threshold,
        "fallback": args.fallback or preset.eval_fallback,
        "constraint": dataclasses.asdict(constraint),
        "runs": {
            key: {**{k: run[k] for k in REPORTED}, "invalid_answers": invalid_answers(run["rows"])}
            for key, run in runs.items()
        },
        "constrained_vs_free": {},
        "vs_teacher_free": {},
        "vs_teacher_constrained": {},
    }
    for stage in args.stages:
        free, constrained = f"{stage}/free", f"{stage}/constrained"
        same = sum(a == b for a, b in zip(texts[free], texts[constrained]))
        report["constrained_vs_free"][stage] = {
            **compare_rankings(rankings[constrained], rankings[free], targets),
            "identical_texts": same,
        }
        if stage != "ar" and "ar/free" in rankings:
            for mode in ("free", "constrained"):
                report[f"vs_teacher_{mode}"][stage] = {
                    "free": compare_rankings(rankings[free], rankings[f"ar/{mode}"], targets),
                    "constrained": compare_rankings(rankings[constrained], rankings[f"ar/{mode}"], targets),
                }
    write_report(args.out, report)


if __name__ == "__main__":
    main()
