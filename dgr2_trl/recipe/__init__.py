"""The end-to-end recipe: AR SFT -> naive conversion -> CFT -> OPD -> RL on Amazon Beauty, with evaluation."""

from .presets import PRESETS, RecipePreset, get_preset
from .run import run_recipe


__all__ = ["PRESETS", "RecipePreset", "get_preset", "run_recipe"]
