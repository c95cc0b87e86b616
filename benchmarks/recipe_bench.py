"""What the benchmarks on a finished recipe run share: their common flags and writing the JSON report."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def recipe_parser(doc: str, stage: bool = True) -> argparse.ArgumentParser:
    """A parser with `--recipe_dir`, `--preset`, `--dtype`, `--out` and (with `stage`) `--stage`, the model under
    test. `--dtype` loads every model of the run in that dtype (bfloat16 on CPUs with AMX: compute-bound block passes
    gain from it, small AR steps do not)."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe_dir", default="outputs/recipe-default")
    parser.add_argument("--preset", default="default")
    if stage:
        parser.add_argument("--stage", default="rl")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32", help="dtype the models are loaded in")
    parser.add_argument("--out", default=None, help="write the report here as JSON")
    return parser


def write_report(path: str | None, report: dict) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(report, indent=2))
