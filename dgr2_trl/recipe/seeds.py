"""Mean and spread of finished recipe runs that differ only in `--seed`.

    python -m dgr2_trl.recipe.seeds outputs/seed0 outputs/seed1 outputs/seed2 --output docs/results-default-seeds

writes `<output>.json` (per seed and aggregated) and `<output>.md`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..evaluation import aggregate_seeds
from .report import ROWS


KEYS = (
    "recall@1",
    "recall@3",
    "recall@5",
    "ndcg@3",
    "ndcg@5",
    "valid_rate",
    "copies_floor_rate",
    "forward_passes_per_token",
)


def _flat(comparison: dict | None) -> dict:
    """{"recall@3": {"diff": ...}, ...} -> {"recall@3": diff, ...} plus identical_rate / mean_kendall_tau."""
    if not comparison:
        return {}
    out = {k: v["diff"] for k, v in comparison.items() if isinstance(v, dict) and "diff" in v}
    out.update({k: comparison[k] for k in ("identical_rate", "mean_kendall_tau") if k in comparison})
    return out


def aggregate_runs(run_dirs) -> dict:
    runs = [json.loads((Path(d) / "results.json").read_text()) for d in run_dirs]
    seeds = [r["preset"]["seed"] for r in runs]
    out: dict = {
        "seeds": seeds,
        "runs": [str(d) for d in run_dirs],
        "stages": {},
        "teacher_vs_floor": {},
        "vs_teacher": {},
        "anchor_vs_floor": {},
    }
    for key, _ in ROWS:
        per_seed = [r["stages"][key] for r in runs if key in r["stages"]]
        if len(per_seed) == len(runs):
            out["stages"][key] = aggregate_seeds(per_seed, KEYS)
    for split in ("test", "validation"):
        per_seed = [_flat(r.get("comparisons", {}).get("teacher_vs_floor", {}).get(split)) for r in runs]
        out["teacher_vs_floor"][split] = aggregate_seeds(per_seed)
        per_seed = [_flat(r.get("comparisons", {}).get("anchor", {}).get(split, {}).get("vs_floor")) for r in runs]
        out["anchor_vs_floor"][split] = aggregate_seeds(per_seed)
    for key, _ in ROWS:
        per_seed = [_flat(r.get("comparisons", {}).get("vs_teacher", {}).get(key)) for r in runs]
        if all(per_seed):
            out["vs_teacher"][key] = aggregate_seeds(per_seed)
    return out


def markdown(summary: dict) -> str:
    def cell(stats: dict, key: str, digits: int = 4) -> str:
        s = stats.get(key)
        return "-" if s is None else f"{s['mean']:.{digits}f} ± {s['std']:.{digits}f}"

    lines = [
        f"Seeds {summary['seeds']}: mean ± sample std over seeds.",
        "",
        "| stage | R@1 | R@3 | R@5 | NDCG@3 | NDCG@5 | valid rate | copies pre-ranker |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for key, label in ROWS:
        if key in summary["stages"]:
            s = summary["stages"][key]
            lines.append(
                f"| {label} | " + " | ".join(cell(s, k) for k in KEYS[:5]) + f" | {cell(s, 'valid_rate', 3)} "
                f"| {cell(s, 'copies_floor_rate', 3)} |"
            )
    lines += ["", "| comparison | R@1 | R@3 | NDCG@3 | R@5 | NDCG@5 |", "|---|---|---|---|---|---|"]
    rows = [(f"teacher - floor ({split})", summary["teacher_vs_floor"][split]) for split in ("test", "validation")]
    rows += [(f"anchor - floor ({split})", summary["anchor_vs_floor"][split]) for split in ("test", "validation")]
    rows += [
        (f"{label} - teacher (test)", summary["vs_teacher"][key])
        for key, label in ROWS
        if key in summary["vs_teacher"]
    ]
    for label, s in rows:
        if s:
            lines.append(
                f"| {label} | "
                + " | ".join(cell(s, k) for k in ("recall@1", "recall@3", "ndcg@3", "recall@5", "ndcg@5"))
                + " |"
            )
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="finished recipe output folders (each with results.json)")
    parser.add_argument("--output", required=True, help="path without suffix; writes .json and .md")
    args = parser.parse_args(argv)
    summary = aggregate_runs(args.runs)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(f"{args.output}.json").write_text(json.dumps(summary, indent=2))
    Path(f"{args.output}.md").write_text(markdown(summary))
    print(markdown(summary))


if __name__ == "__main__":
    main()
