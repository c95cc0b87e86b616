"""Paired comparisons of the recipe's stages, from the per-query outputs each stage writes.

Every figure here can be recomputed from `<stage>/<split>_rows.jsonl` (and the data's `ranker_ranking` and
`evidence` columns): the teacher against the pre-ranker floor on test and validation users, the feature-based
anchor beside it, each diffusion stage against the teacher (paired 95% bootstrap intervals, identical rankings,
Kendall tau), and how often a model's trace is the one computed from its prompt.
"""

from __future__ import annotations

from pathlib import Path

from ..data.prompts import build_evidence_trace, build_score_trace
from ..evaluation import compare_rankings, per_query_metrics, read_jsonl


DIFFUSION_STAGES = ("naive", "cft", "opd", "rl")


def trace_of(text: str) -> str:
    """The reasoning part of a completion: everything before its last line (the answer)."""
    return text.rsplit("\n", 1)[0] if "\n" in text else ""


def trace_agreement(rows: list[dict], dataset) -> dict:
    """Share of outputs whose trace equals the one computed from the prompt, and the number of distinct traces.

    The expected trace is the data's own (the trace of its `completion`, computed from the prompt whatever the
    trace style: tests pin that it never depends on the answer); a dataset without completions falls back to
    `build_score_trace` where it has `score_levels`, else `build_evidence_trace` where it has `evidence`."""
    traces = [trace_of(r["text"]) for r in rows]
    out = {"num_distinct_traces": len(set(traces)), "n": len(rows)}
    names = dataset.column_names
    expected = None
    if "completion" in names:
        expected = [trace_of(c[-1]["content"] if isinstance(c, list) else c) for c in dataset["completion"]]
    elif "score_levels" in names:
        expected = [
            build_score_trace(c, r, t)
            for c, r, t in zip(dataset["candidates"], dataset["score_levels"], dataset["score_evidence"])
        ]
    elif "evidence" in names:
        expected = [build_evidence_trace(c, e) for c, e in zip(dataset["candidates"], dataset["evidence"])]
    if expected is not None:
        out["agreement"] = sum(t == e for t, e in zip(traces, expected)) / max(len(rows), 1)
    return out


def _metrics(rankings, targets) -> dict:
    return {k: float(v.mean()) for k, v in per_query_metrics(rankings, targets).items()}


def analyse(output_dir: str | Path, datasets: dict, stages=("ar", *DIFFUSION_STAGES), prefix: str = "") -> dict:
    """Comparisons for the stages whose rows files exist. `datasets` maps split name -> evaluation dataset;
    `prefix` picks another decoding's rows (`"free-"`: `<stage>/free-<split>_rows.jsonl`)."""
    output_dir = Path(output_dir)
    rows = {}
    for stage in stages:
        for split in datasets:
            path = output_dir / stage / f"{prefix}{split}_rows.jsonl"
            if path.exists():
                rows[stage, split] = read_jsonl(path)
    out: dict = {"teacher_vs_floor": {}, "anchor": {}, "vs_teacher": {}, "traces": {}}
    for split, dataset in datasets.items():
        targets = list(dataset["target"])
        floor = [list(c) for c in dataset["candidates"]]
        teacher = rows.get(("ar", split))
        if teacher is not None and len(teacher) == len(targets):
            out["teacher_vs_floor"][split] = compare_rankings([r["ranking"] for r in teacher], floor, targets)
        if "ranker_ranking" in dataset.column_names:
            anchor = [list(r) for r in dataset["ranker_ranking"]]
            out["anchor"][split] = {
                "metrics": _metrics(anchor, targets),
                "vs_floor": compare_rankings(anchor, floor, targets),
            }
            if teacher is not None and len(teacher) == len(targets):
                out["anchor"][split]["teacher_vs_anchor"] = compare_rankings(
                    [r["ranking"] for r in teacher], anchor, targets
                )
    test = datasets.get("test")
    teacher = rows.get(("ar", "test"))
    for stage in stages:
        stage_rows = rows.get((stage, "test"))
        if stage_rows is None or test is None or len(stage_rows) > len(test):
            continue
        # a stage scored on the first n test users (the naive conversion) is compared on those users
        n = len(stage_rows)
        users = test.select(range(n))
        out["traces"][stage] = trace_agreement(stage_rows, users)
        out["traces"][stage]["distinct_text_rate"] = len({r["text"] for r in stage_rows}) / max(n, 1)
        if stage != "ar" and teacher is not None and len(teacher) >= n:
            out["vs_teacher"][stage] = compare_rankings(
                [r["ranking"] for r in stage_rows], [r["ranking"] for r in teacher[:n]], list(users["target"])
            )
    return out
