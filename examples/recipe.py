"""The main job (same as the `dgr2-recipe` console script); see `dgr2_trl/recipe/cli.py` for the options.

python examples/recipe.py                 # default preset, CPU, 20-30 minutes on 2 cores
python examples/recipe.py --preset tiny   # seconds
"""

from dgr2_trl.recipe.cli import main


if __name__ == "__main__":
    main()
