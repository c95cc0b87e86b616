"""What the benchmarks on a finished recipe run share: their common flags and writing the JSON report."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import torch

from dgr2_trl.recipe import get_preset
from dgr2_trl.recipe.presets import RecipePreset


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def recipe_parser(doc: str, stage: bool = True) -> argparse.ArgumentParser:
    """A parser with `--recipe_dir`, `--preset`, `--seed`, `--dtype`, `--out` and (with `stage`) `--stage`, the
    model under test. `--dtype` loads every model of the run in that dtype (bfloat16 on CPUs with AMX: compute-bound block passes
    gain from it, small AR steps do not)."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe_dir", default="outputs/recipe-default")
    parser.add_argument("--preset", default="default")
    parser.add_argument(
        "--seed",
        type=int,
        default=None,
        help="the recipe run's --seed (it shapes the data); default: the one its results.json records, else 0",
    )
    if stage:
        parser.add_argument("--stage", default="rl")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32", help="dtype the models are loaded in")
    parser.add_argument("--out", default=None, help="write the report here as JSON")
    return parser


def invalid_answers(rows: list[dict], limit: int = 20) -> list[dict]:
    """The first `limit` invalid answers of an evaluation's `rows` (`keep_rows=True`): the query's index, why the
    answer is invalid, and the completion's last 200 characters (where the ranking is), so a report shows what
    failed and not only how often."""
    return [
        {"index": i, "reason": row["reason"], "text_tail": row["text"][-200:]}
        for i, row in enumerate(rows)
        if not row["valid"]
    ][:limit]


def write_report(path: str | None, report: dict) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(report, indent=2))


def run_preset(args) -> RecipePreset:
    """The settings the run in `--recipe_dir` was made with: the one its `results.json` records (a finished run),
    else `--preset`; `--seed` must agree with a recorded seed. The data are rebuilt from them, so a benchmark on a
    run made with `--seed 1` or any other override sees that run's prompts."""
    preset = get_preset(args.preset)
    results = Path(args.recipe_dir) / "results.json"
    if results.exists():
        recorded = json.loads(results.read_text())["preset"]
        if recorded.get("name") != preset.name:
            raise ValueError(f"{results} records preset {recorded.get('name')!r}, not --preset {args.preset!r}")
        names = {f.name for f in dataclasses.fields(RecipePreset)}
        preset = dataclasses.replace(preset, **{k: v for k, v in recorded.items() if k in names})
        if "eval_constraint" not in recorded:  # a run made before the field existed was evaluated free
            preset = dataclasses.replace(preset, eval_constraint=False)
        if args.seed is not None and args.seed != preset.seed:
            raise ValueError(f"--seed {args.seed}, but {results} records seed {preset.seed}")
    elif args.seed is not None:
        preset = dataclasses.replace(preset, seed=args.seed)
    return preset
