"""Results of a recipe run: JSON, a Markdown table in the paper's shape, and the speed-frontier plot."""

from __future__ import annotations

import json
import logging
from pathlib import Path


logger = logging.getLogger(__name__)

ROWS = [
    ("floor", "pre-ranker floor"),
    ("ar", "AR teacher"),
    ("naive", "naive conversion"),
    ("cft", "+CFT"),
    ("opd", "+OPD"),
    ("rl", "+RL"),
]
PAPER = {  # arXiv 2607.01170, Amazon Beauty, Qwen3-8B (R@1 only is quoted in our design notes)
    "floor": 0.2811,
    "ar": 0.2960,
    "naive": 0.2811,
    "cft": 0.2930,
    "opd": 0.2944,
    "rl": 0.2951,
}


def _fmt(value, digits=4):
    return "-" if value is None else f"{value:.{digits}f}"


def _interval(c: dict | None, key: str) -> str:
    if not c or key not in c:
        return "-"
    d = c[key]
    return f"{d['diff']:+.4f} [{d['low']:+.4f}, {d['high']:+.4f}]"


def comparison_tables(comparisons: dict) -> list[str]:
    """The teacher and the feature-based anchor against the floor (per split), then each stage against the
    teacher: paired differences with 95% bootstrap intervals."""
    lines = [
        "",
        "| split | model | R@1 - floor | R@3 - floor | NDCG@3 - floor | R@5 - floor | NDCG@5 - floor | n |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for split in ("test", "validation"):
        for label, c in (
            ("AR teacher", comparisons.get("teacher_vs_floor", {}).get(split)),
            ("feature ranker (anchor)", comparisons.get("anchor", {}).get(split, {}).get("vs_floor")),
        ):
            if c:
                lines.append(
                    f"| {split} | {label} | "
                    + " | ".join(_interval(c, k) for k in ("recall@1", "recall@3", "ndcg@3", "recall@5", "ndcg@5"))
                    + f" | {c['n']} |"
                )
    vs = comparisons.get("vs_teacher", {})
    traces = comparisons.get("traces", {})
    if vs or traces:
        lines += [
            "",
            "| stage (test) | R@3 - teacher | NDCG@3 - teacher | same ranking as teacher | Kendall tau "
            "| distinct texts | trace = prompt's |",
            "|---|---|---|---|---|---|---|",
        ]
        for key, label in ROWS:
            if key not in vs and key not in traces:
                continue
            c, t = vs.get(key), traces.get(key, {})
            same = "-" if not c else f"{c['identical_rate']:.3f}"
            tau = "-" if not c else f"{c['mean_kendall_tau']:.3f}"
            lines.append(
                f"| {label} | {_interval(c, 'recall@3')} | {_interval(c, 'ndcg@3')} | {same} | {tau} "
                f"| {_fmt(t.get('distinct_text_rate'), 3)} | {_fmt(t.get('agreement'), 3)} |"
            )
    return lines


def stage_table(stages: dict, decoding: str | None = None) -> list[str]:
    """One row per stage: `stages` maps stage -> scores; `decoding` picks a stage's other evaluation (`"free"`)."""
    # "copies pre-ranker": share of answers that are exactly the pre-ranker's order (a model that ignores its
    # prompt scores the floor with 1.000 here)
    lines = [
        "| stage | R@1 | R@3 | R@5 | NDCG@3 | NDCG@5 | valid rate | copies pre-ranker | distinct texts "
        "| passes/token | n | paper R@1 |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for key, label in ROWS:
        s = stages.get(key)
        if s is not None and decoding is not None and key != "floor":
            s = s.get(decoding)
        if s is None:
            continue
        valid = 1.0 if key == "floor" else s.get("valid_rate")
        lines.append(
            f"| {label} | {_fmt(s.get('recall@1'))} | {_fmt(s.get('recall@3'))} | {_fmt(s.get('recall@5'))} "
            f"| {_fmt(s.get('ndcg@3'))} | {_fmt(s.get('ndcg@5'))} "
            f"| {_fmt(valid, 3)} | {_fmt(s.get('copies_floor_rate'), 3)} | {s.get('num_distinct_texts', '-')} "
            f"| {_fmt(s.get('forward_passes_per_token'), 3)} | {s.get('n', '-')} "
            f"| {PAPER[key]:.4f} |"
        )
    return lines


def markdown_table(stages: dict, frontier: list[dict], comparisons: dict | None = None) -> str:
    """The stage table, the paired comparisons, the same two for the free evaluation when there is one (a
    constrained run's), and the speed frontier."""
    lines = stage_table(stages)
    if comparisons:
        lines += comparison_tables(comparisons)
    free = [s["free"].get("threshold") for s in stages.values() if isinstance(s.get("free"), dict)]
    if free:
        threshold = next((t for t in free if t is not None), None)
        lines += [
            "",
            "Above: every stage decoded under the ranking constraint (distinct ids, id slots). Below: the same "
            f"models decoded free (block decoder at threshold {_fmt(threshold, 2)}): how often they write a valid "
            "ranking on their own.",
            "",
            *stage_table(stages, "free"),
        ]
        lines += comparison_tables((comparisons or {}).get("free", {}))
    if frontier:
        lines += [
            "",
            "| model | threshold | fallback | batch | tokens/s | speed-up vs AR | passes/token | R@1 | valid rate "
            "| n |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in frontier:
            tau = "-" if r["threshold"] is None else f"{r['threshold']:.2f}"
            lines.append(
                f"| {r['model']} | {tau} | {r.get('fallback') or '-'} | {r['batch_size']} | "
                f"{_fmt(r['tokens_per_second'], 1)} | "
                f"{_fmt(r['speedup_vs_ar'], 2)}x | {_fmt(r['forward_passes_per_token'], 3)} | "
                f"{_fmt(r['recall@1'])} | {_fmt(r['valid_rate'], 3)} | {r['n']} |"
            )
    return "\n".join(lines) + "\n"


def plot_frontier(frontier: list[dict], path: Path) -> bool:
    """Speed-up over AR (x) against valid rate (left) and R@1 (right), one line per batch size and commit
    fallback, thresholds annotated. False if matplotlib is missing (install the `recipe` extra)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.warning("matplotlib is not installed: no frontier plot (pip install 'dgr2-trl[recipe]')")
        return False
    figure, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for axis, metric, label in (
        (axes[0], "valid_rate", "valid rate"),
        (axes[1], "recall@1", "R@1 (invalid -> pre-ranker order)"),
    ):
        for batch_size in sorted({r["batch_size"] for r in frontier}):
            ar = [r for r in frontier if r["batch_size"] == batch_size and r["model"] == "ar"]
            block = [r for r in frontier if r.get("decoder", "block") == "block" and r["threshold"] is not None]
            fallbacks = dict.fromkeys(r.get("fallback") for r in block)
            for fallback, style in zip(fallbacks, ("-", "--", ":")):
                rows = [r for r in block if r["batch_size"] == batch_size and r.get("fallback") == fallback]
                xs = [r["speedup_vs_ar"] or 0 for r in rows]
                ys = [r[metric] or 0 for r in rows]
                axis.plot(xs, ys, style, marker="o", label=f"block, batch {batch_size}, fallback {fallback}")
                for r, x, y in zip(rows, xs, ys):
                    axis.annotate(
                        f"τ={r['threshold']:g}", (x, y), fontsize=7, textcoords="offset points", xytext=(3, 3)
                    )
            if ar:
                axis.scatter(
                    [1.0],
                    [ar[0][metric]],
                    marker="s",
                    color="black" if batch_size == 1 else "gray",
                    label=f"AR, batch {batch_size}",
                )
            speculative = [r for r in frontier if r["batch_size"] == batch_size and r.get("decoder") == "speculative"]
            for r in speculative:
                axis.scatter(
                    [r["speedup_vs_ar"] or 0],
                    [r[metric] or 0],
                    marker="*",
                    s=80,
                    label=f"{r['model']}, batch {batch_size}",
                )
        axis.axvline(1.0, color="gray", lw=0.5)
        axis.set_xlabel("tokens/s over AR tokens/s (same machine)")
        axis.set_ylabel(label)
        axis.grid(alpha=0.3)
    axes[0].legend(fontsize=6)
    figure.suptitle(
        "Speed frontier: block diffusion and speculative decoding (final model) vs AR decoding (AR teacher)"
    )
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return True


def write_report(
    output_dir: Path, preset: dict, stages: dict, frontier: list[dict], machine: dict, comparisons: dict | None = None
) -> str:
    table = markdown_table(stages, frontier, comparisons)
    (output_dir / "results.json").write_text(
        json.dumps(
            {
                "preset": preset,
                "machine": machine,
                "stages": stages,
                "comparisons": comparisons or {},
                "frontier": frontier,
            },
            indent=2,
            default=str,
        )
    )
    (output_dir / "results.md").write_text(table)
    plot_frontier(frontier, output_dir / "frontier.png") if frontier else None
    return table
