"""`run_recipe`: every stage, evaluation after each, the speed frontier, and the report."""

from __future__ import annotations

import logging
import os
import platform
import time
from pathlib import Path

import torch

from .analysis import analyse
from .presets import RecipePreset
from .report import write_report
from .stages import STAGES, Recipe, check_stage_order


logger = logging.getLogger(__name__)


def _cpu_model() -> str | None:
    """The CPU's model name on Linux (step times differ by a factor ~1.7 between two x86_64 machines here)."""
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), None)
    except OSError:
        return None


def machine_info() -> dict:
    info = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def run_recipe(
    preset: RecipePreset, output_dir: str | Path, stages=STAGES, frontier: bool = True, reevaluate: bool = False
) -> dict:
    """Run (or resume) the recipe; returns {"stages": {...}, "frontier": [...], "table": str}. With `reevaluate`,
    finished stages are scored again with the preset's evaluation settings instead of loading their metrics."""
    check_stage_order(output_dir, stages)
    start = time.perf_counter()
    recipe = Recipe(preset, output_dir)
    results = {"floor": recipe.floor()}
    # wall seconds of each phase in this call (a resumed stage counts only its loading), so the main job's time
    # budget can be read off results.json
    wall = {"data": time.perf_counter() - start}
    for stage in stages:
        began = time.perf_counter()
        results[stage] = recipe.reevaluate(stage) if reevaluate and recipe.done(stage) else recipe.run_stage(stage)
        wall[stage] = time.perf_counter() - began
        r = results[stage]
        print(
            f"[{stage}] R@1 {r['recall@1']:.4f}  R@3 {r['recall@3']:.4f}  NDCG@3 {r['ndcg@3']:.4f}  "
            f"valid {r['valid_rate']:.3f}  copies pre-ranker {r['copies_floor_rate']:.3f}  "
            f"distinct texts {r['num_distinct_texts']}  n {r['n']}"
            + (
                f"  | free: valid {r['free']['valid_rate']:.3f}  NDCG@3 {r['free']['ndcg@3']:.4f}"
                if "free" in r
                else ""
            ),
            flush=True,
        )
    began = time.perf_counter()
    splits = {"test": recipe.test, "validation": recipe.data.validation}
    comparisons = analyse(recipe.output_dir, splits)
    if (recipe.output_dir / "ar" / "free-test_rows.jsonl").exists():
        # the same comparisons for the evaluation without the ranking constraint
        free = analyse(recipe.output_dir, splits, prefix="free-")
        comparisons["free"] = {k: free[k] for k in ("teacher_vs_floor", "vs_teacher", "traces")}
    comparisons["feature_ranker_fit"] = recipe.data.stats.get("feature_ranker")
    wall["analysis"] = time.perf_counter() - began
    began = time.perf_counter()
    rows = recipe.frontier(stages[-1]) if frontier else []
    wall["frontier"] = time.perf_counter() - began
    wall["total"] = time.perf_counter() - start
    machine = {**machine_info(), "wall_seconds": {k: round(v, 1) for k, v in wall.items()}}
    table = write_report(recipe.output_dir, preset.to_dict(), results, rows, machine, comparisons)
    print(f"\n{table}\nresults in {recipe.output_dir} ({time.perf_counter() - start:.0f}s)", flush=True)
    return {"stages": results, "frontier": rows, "table": table}
