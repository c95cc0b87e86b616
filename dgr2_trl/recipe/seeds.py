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

from ..evaluation import aggregate_seeds, compare_rankings, read_jsonl
from .report import ROWS, _interval


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


def _summary(stages_per_run: list[dict], comparisons_per_run: list[dict]) -> dict:
    """Mean and spread over the runs of one decoding's stage scores, teacher-vs-floor and stage-vs-teacher
    comparisons, each stage's per-seed differences to the teacher, and the gain kept."""
    n = len(stages_per_run)
    out: dict = {"stages": {}, "teacher_vs_floor": {}, "vs_teacher": {}, "vs_teacher_per_seed": {}}
    for key, _ in ROWS:
        per_seed = [s[key] for s in stages_per_run if key in s]
        if len(per_seed) == n:
            out["stages"][key] = aggregate_seeds(per_seed, KEYS)
    for split in ("test", "validation"):
        per_seed = [_flat(c.get("teacher_vs_floor", {}).get(split)) for c in comparisons_per_run]
        out["teacher_vs_floor"][split] = aggregate_seeds(per_seed)
    for key, _ in ROWS:
        per_seed = [_flat(c.get("vs_teacher", {}).get(key)) for c in comparisons_per_run]
        if all(per_seed):
            out["vs_teacher"][key] = aggregate_seeds(per_seed)
            out["vs_teacher_per_seed"][key] = per_seed
    for later, earlier in (("opd", "cft"), ("rl", "opd")):
        if all(later in s and earlier in s for s in stages_per_run):
            out["vs_teacher_per_seed"][f"{later} - {earlier}"] = [
                {k: s[later][k] - s[earlier][k] for k in ("ndcg@3", "recall@3") if k in s[later] and k in s[earlier]}
                for s in stages_per_run
            ]
    out["gain_kept"] = _gain_kept(stages_per_run, [s["floor"] for s in stages_per_run])
    return out


def _free_stages(stages: dict) -> dict:
    """A constrained run's free evaluation in the shape of its stages (the floor is the same)."""
    return {k: (v if k == "floor" else v["free"]) for k, v in stages.items() if k == "floor" or "free" in v}


def _pooled_rows(run_dirs, stage: str, prefix: str) -> list[dict] | None:
    """A stage's test rows of every run, concatenated; None where a run lacks them."""
    rows = []
    for d in map(Path, run_dirs):
        path = d / stage / f"{prefix}test_rows.jsonl"
        if not path.exists():
            return None
        rows += read_jsonl(path)
    return rows


def pooled_comparisons(run_dirs, prefix: str = "") -> dict:
    """Paired comparisons over the test users of every run pooled (n = runs x users), from the per-query rows
    (`<stage>/<prefix>test_rows.jsonl`): each stage against the teacher (key: the stage), and each training stage
    against the one before it ("opd - cft", "rl - opd")."""
    rows = {key: _pooled_rows(run_dirs, key, prefix) for key, _ in ROWS[1:]}
    pairs = [(key, key, "ar") for key, _ in ROWS[2:]] + [("opd - cft", "opd", "cft"), ("rl - opd", "rl", "opd")]
    out = {}
    for name, model, reference in pairs:
        a, b = rows.get(model), rows.get(reference)
        # a stage scored on a sample of the users (the naive conversion) is left out
        if a is not None and b is not None and len(a) == len(b):
            out[name] = compare_rankings(
                [r["ranking"] for r in a], [r["ranking"] for r in b], [r["target"] for r in a]
            )
    return out


def aggregate_runs(run_dirs, constrained=None) -> dict:
    """Per-stage mean and spread over the runs, and their comparisons; a run evaluated under the ranking
    constraint with its free evaluation beside it (`eval_constraint`) gets the same summary of the free one under
    `"free"`. `constrained` lists one `benchmarks/constrained_ranking.py` result per run (same order) to summarise
    a constrained decoding of runs evaluated free."""
    runs = [json.loads((Path(d) / "results.json").read_text()) for d in run_dirs]
    seeds = [r["preset"]["seed"] for r in runs]
    out: dict = {
        "seeds": seeds,
        "runs": [str(d) for d in run_dirs],
        "evaluated_constrained": all(r["stages"].get("ar", {}).get("constrained", False) for r in runs),
        **_summary([r["stages"] for r in runs], [r.get("comparisons", {}) for r in runs]),
        "anchor_vs_floor": {},
        "pooled_vs_teacher": pooled_comparisons(run_dirs),
    }
    for split in ("test", "validation"):
        per_seed = [_flat(r.get("comparisons", {}).get("anchor", {}).get(split, {}).get("vs_floor")) for r in runs]
        out["anchor_vs_floor"][split] = aggregate_seeds(per_seed)
    if all("free" in r["stages"].get("ar", {}) for r in runs):
        out["free"] = _summary(
            [_free_stages(r["stages"]) for r in runs], [r.get("comparisons", {}).get("free", {}) for r in runs]
        )
        out["free"]["pooled_vs_teacher"] = pooled_comparisons(run_dirs, prefix="free-")
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


def _cell(stats: dict, key: str, digits: int = 4) -> str:
    s = stats.get(key)
    return "-" if s is None else f"{s['mean']:.{digits}f} ± {s['std']:.{digits}f}"


def _fmt_diff(value) -> str:
    return "-" if value is None else f"{value:+.4f}"


def _decoding_tables(part: dict, anchor: dict | None = None, extra_rows=()) -> list[str]:
    """Stage scores, comparisons (mean ± std over seeds), per-seed NDCG@3 / R@3 differences to the teacher, the
    pooled paired intervals and the gain kept, for one decoding."""
    lines = [
        "| stage | R@1 | R@3 | R@5 | NDCG@3 | NDCG@5 | valid rate | copies pre-ranker |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for key, label in ROWS:
        if key in part["stages"]:
            s = part["stages"][key]
            lines.append(
                f"| {label} | " + " | ".join(_cell(s, k) for k in KEYS[:5]) + f" | {_cell(s, 'valid_rate', 3)} "
                f"| {_cell(s, 'copies_floor_rate', 3)} |"
            )
    lines += ["", "| comparison | R@1 | R@3 | NDCG@3 | R@5 | NDCG@5 |", "|---|---|---|---|---|---|"]
    rows = [(f"teacher - floor ({split})", part["teacher_vs_floor"].get(split)) for split in ("test", "validation")]
    rows += [(f"anchor - floor ({split})", (anchor or {}).get(split)) for split in ("test", "validation")]
    rows += [
        (f"{label} - teacher (test)", part["vs_teacher"][key]) for key, label in ROWS if key in part["vs_teacher"]
    ]
    rows += list(extra_rows)
    for label, s in rows:
        if s:
            lines.append(
                f"| {label} | "
                + " | ".join(_cell(s, k) for k in ("recall@1", "recall@3", "ndcg@3", "recall@5", "ndcg@5"))
                + " |"
            )
    per_seed = part.get("vs_teacher_per_seed", {})
    pooled = part.get("pooled_vs_teacher", {})
    if per_seed or pooled:
        lines += [
            "",
            "| stage - teacher (test; last rows: stage - stage) | NDCG@3 per seed | R@3 per seed | NDCG@3 pooled [95%] | R@3 pooled [95%] "
            "| same ranking | Kendall tau |",
            "|---|---|---|---|---|---|---|",
        ]
        labels = dict(ROWS)
        steps = [(k, f"{labels[k.split(' - ')[0]]} - {labels[k.split(' - ')[1]]}") for k in ("opd - cft", "rl - opd")]
        for key, label in [*ROWS[2:], *steps]:
            if key not in per_seed and key not in pooled:
                continue
            seeds = per_seed.get(key, [])
            ndcg, r3 = (" / ".join(_fmt_diff(s.get(k)) for s in seeds) or "-" for k in ("ndcg@3", "recall@3"))
            c = pooled.get(key)
            same = "-" if not c else f"{c['identical_rate']:.3f}"
            tau = "-" if not c else f"{c['mean_kendall_tau']:.3f}"
            lines.append(
                f"| {label} | {ndcg} | {r3} | {_interval(c, 'ndcg@3')} | {_interval(c, 'recall@3')} | {same} | {tau} |"
            )
    return lines


def _gain_kept_table(kept: list[tuple[str, dict]]) -> list[str]:
    if not any(k for _, k in kept):
        return []
    lines = ["", "| NDCG@3 gain over the floor kept | " + " | ".join(lab for k, lab in ROWS[2:]) + " |"]
    lines.append("|---" * (len(ROWS) - 1) + "|")
    for name, k in kept:
        if k:
            lines.append(f"| {name} | " + " | ".join(_cell(k, key, 3) for key, _ in ROWS[2:]) + " |")
    return lines


def markdown(summary: dict) -> str:
    constrained = summary.get("constrained", {})
    free = summary.get("free")
    headline = "constrained" if summary.get("evaluated_constrained") else "free"
    lines = [f"Seeds {summary['seeds']}: mean ± sample std over seeds.", ""]
    if free:
        lines += ["Every stage decoded under the ranking constraint (distinct ids, id slots):", ""]
    extra = [
        (f"{label} constrained - teacher (test)", constrained["vs_teacher"][key])
        for key, label in ROWS
        if key in constrained.get("vs_teacher", {})
    ]
    lines += _decoding_tables(summary, summary.get("anchor_vs_floor"), extra)
    kept = [(headline, summary.get("gain_kept", {})), ("constrained", constrained.get("gain_kept", {}))]
    if free:
        kept.append(("free", free.get("gain_kept", {})))
    lines += _gain_kept_table(kept)
    if free:
        lines += ["", "The same models decoded free (no constraint):", "", *_decoding_tables(free)]
    if constrained.get("stages"):
        lines += ["", "Constrained decoding (distinct ids):", "", "| stage | R@1 | R@3 | NDCG@3 | valid rate |"]
        lines.append("|---|---|---|---|---|")
        for key, label in ROWS:
            if key in constrained["stages"]:
                s = constrained["stages"][key]
                lines.append(
                    f"| {label} | {_cell(s, 'recall@1')} | {_cell(s, 'recall@3')} | {_cell(s, 'ndcg@3')} "
                    f"| {_cell(s, 'valid_rate')} |"
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
