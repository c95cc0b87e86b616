"""The model card our trainers write: TRL's, with a quick start that decodes blocks instead of `pipeline`."""

from __future__ import annotations

import os
import re


QUICK_START = """## Quick start

This is a block-diffusion model: decode it with `dgr2_trl`'s sampler (several tokens per forward pass).
`model.generate` decodes blocks too when the model is loaded with `trust_remote_code=True` (the checkpoint's
`custom_generate/generate.py`) or with `dgr2_trl.modeling.pretrained.load_causal_lm`; a plain `from_pretrained`
without it decodes autoregressively.

```python
from transformers import AutoModelForCausalLM, AutoTokenizer
from dgr2_trl.samplers import BlockDiffusionSampler

model = AutoModelForCausalLM.from_pretrained("{path}")
tokenizer = AutoTokenizer.from_pretrained("{path}")
sampler = BlockDiffusionSampler(model, tokenizer, threshold=0.9)
output = sampler.generate([[{{"role": "user", "content": "Rank the candidates ..."}}]], max_new_tokens=128)
print(output.texts[0], output.num_forward_passes)
```

"""


def rewrite_quick_start(card_path: str, model_path: str) -> None:
    """Replace the `## Quick start` section of a TRL model card (which shows `pipeline`) with the sampler's."""
    if not os.path.isfile(card_path):
        return
    text = open(card_path, encoding="utf-8").read()
    section = re.compile(r"## Quick start\n.*?(?=\n## )", re.S)
    replacement = QUICK_START.format(path=model_path)
    text = (
        section.sub(lambda _: replacement.rstrip("\n") + "\n", text, count=1)
        if section.search(text)
        else (text + "\n" + replacement)
    )
    with open(card_path, "w", encoding="utf-8") as handle:
        handle.write(text)


class BlockDiffusionModelCardMixin:
    """Overrides TRL's `create_model_card` seam: same card, the block-diffusion quick start."""

    def create_model_card(self, *args, **kwargs):
        super().create_model_card(*args, **kwargs)
        if self.is_world_process_zero():
            rewrite_quick_start(
                os.path.join(self.args.output_dir, "README.md"), self.hub_model_id or self.args.output_dir
            )
