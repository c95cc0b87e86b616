"""Mean and spread of finished recipe runs that differ only in `--seed`.

    python -m dgr2_trl.recipe.seeds outputs/seed0 outputs/seed1 outputs/seed2 --output docs/results-default-seeds \
        --constrained bench/constrained_seed0.json bench/constrained_seed1.json bench/constrained_seed2.json

writes `<output>.json` (per seed and aggregated) and `<output>.md`. `--constrained` adds the same runs decoded
with the distinct-ids constraint (`benchmarks/constrained_ranking.py`, one file per run, in the same order).
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


def gain_kept(stage: dict, teacher: dict, floor: dict, key: str = "ndcg@3") -> float | None:
    """Share of the teacher's gain over the floor that a stage keeps: (stage - floor) / (teacher - floor)."""
    gain = teacher[key] - floor[key]
    return None if gain <= 0 else (stage[key] - floor[key]) / gain


def aggregate_runs(run_dirs, constrained=None) -> dict:
    """Per-stage mean and spread over the runs, and their comparisons; `constrained` lists one
    `benchmarks/constrained_ranking.py` result per run (same order) to summarise the constrained decoding too."""
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
    out["gain_kept"] = _gain_kept([r["stages"] for r in runs], [r["stages"]["floor"] for r in runs])
    if constrained:
        out["constrained"] = aggregate_constrained(constrained, runs)
    return out


def _gain_kept(stages_per_seed: list[dict], floors: list[dict]) -> dict:
    """{stage: aggregate of the NDCG@3 gain kept}, for the stages after the teacher present in every seed and
    evaluated on the teacher's users (the naive conversion is checked on a sample only)."""
    out = {}
    for key, _ in ROWS[2:]:
        if all(key in s and "ar" in s and s[key].get("n") == s["ar"].get("n") for s in stages_per_seed):
            kept = [gain_kept(s[key], s["ar"], f) for s, f in zip(stages_per_seed, floors)]
            if all(k is not None for k in kept):
                out[key] = aggregate_seeds([{"ndcg@3": k} for k in kept])["ndcg@3"]
    return out


def aggregate_constrained(paths, runs: list[dict]) -> dict:
    """The constrained decoding of each run: its metrics, its paired difference to the free-decoded teacher (the
    teacher as deployed) and the gain it keeps, each as mean and spread over the runs."""
    if len(paths) != len(runs):
        raise ValueError(f"--constrained: got {len(paths)} files for {len(runs)} runs; give one per run, in order")
    benches = [json.loads(Path(p).read_text()) for p in paths]
    for path, bench, run in zip(paths, benches, runs):
        if bench.get("seed") != run["preset"]["seed"]:
            raise ValueError(f"{path}: seed {bench.get('seed')} but its run has seed {run['preset']['seed']}")
    out: dict = {"files": [str(p) for p in paths], "stages": {}, "vs_teacher": {}}
    stages = [k for k, _ in ROWS[1:] if all(f"{k}/constrained" in b["runs"] for b in benches)]
    for key in stages:
        out["stages"][key] = aggregate_seeds([b["runs"][f"{key}/constrained"] for b in benches], KEYS)
        per_seed = [_flat(b.get("vs_teacher_free", {}).get(key, {}).get("constrained")) for b in benches]
        if all(per_seed):
            out["vs_teacher"][key] = aggregate_seeds(per_seed)
    constrained_stages = [{**{k: b["runs"][f"{k}/constrained"] for k in stages}, "ar": b["runs"]["ar/free"]}
                          for b in benches]  # fmt: skip
    out["gain_kept"] = _gain_kept(constrained_stages, [r["stages"]["floor"] for r in runs])
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
    constrained = summary.get("constrained", {})
    rows += [
        (f"{label} constrained - teacher (test)", constrained["vs_teacher"][key])
        for key, label in ROWS
        if key in constrained.get("vs_teacher", {})
    ]
    for label, s in rows:
        if s:
            lines.append(
                f"| {label} | "
                + " | ".join(cell(s, k) for k in ("recall@1", "recall@3", "ndcg@3", "recall@5", "ndcg@5"))
                + " |"
            )
    kept = [("free", summary.get("gain_kept", {})), ("constrained", constrained.get("gain_kept", {}))]
    if any(k for _, k in kept):
        lines += ["", "| NDCG@3 gain over the floor kept | " + " | ".join(lab for k, lab in ROWS[2:]) + " |"]
        lines.append("|---" * (len(ROWS) - 1) + "|")
        for name, k in kept:
            if k:
                lines.append(f"| {name} | " + " | ".join(cell(k, key, 3) for key, _ in ROWS[2:]) + " |")
    if constrained.get("stages"):
        lines += ["", "Constrained decoding (distinct ids):", "", "| stage | R@1 | R@3 | NDCG@3 | valid rate |"]
        lines.append("|---|---|---|---|---|")
        for key, label in ROWS:
            if key in constrained["stages"]:
                s = constrained["stages"][key]
                lines.append(
                    f"| {label} | {cell(s, 'recall@1')} | {cell(s, 'recall@3')} | {cell(s, 'ndcg@3')} "
                    f"| {cell(s, 'valid_rate')} |"
                )
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="finished recipe output folders (each with results.json)")
    parser.add_argument("--output", required=True, help="path without suffix; writes .json and .md")
    parser.add_argument(
        "--constrained",
        nargs="+",
        default=None,
        help="benchmarks/constrained_ranking.py results, one per run in the same order",
    )
    args = parser.parse_args(argv)
    summary = aggregate_runs(args.runs, args.constrained)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(f"{args.output}.json").write_text(json.dumps(summary, indent=2))
    Path(f"{args.output}.md").write_text(markdown(summary))
    print(markdown(summary))


if __name__ == "__main__":
    main()
