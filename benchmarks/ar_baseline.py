"""Is the frontier's AR baseline fair? Our `ARSampler` against HF `generate` (greedy, KV cache) on the recipe's prompts.

Times both on the same test prompts of a finished recipe run (its AR teacher), at batch 1 and 16, after one
warm-up call each, and prints tokens/s (generated tokens up to and including EOS over the wall time).

    python benchmarks/ar_baseline.py --recipe_dir outputs/recipe-default --out benchmarks/results/ar_baseline.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from dgr2_trl.recipe import get_preset
from dgr2_trl.recipe.stages import Recipe
from dgr2_trl.samplers import ARSampler
from dgr2_trl.samplers.common import encode_prompts


def _sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def hf_generate(model, tokenizer, prompts, max_new_tokens: int, eos: int) -> tuple[int, float]:
    ids, mask = encode_prompts(tokenizer, prompts, model.device)
    _sync()
    start = time.perf_counter()
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                             eos_token_id=eos, pad_token_id=tokenizer.pad_token_id)
    _sync()
    elapsed = time.perf_counter() - start
    rows = out[:, ids.shape[1]:].tolist()
    return sum(row.index(eos) + 1 if eos in row else len(row) for row in rows), elapsed


def ar_sampler(sampler, prompts, max_new_tokens: int) -> tuple[int, float]:
    out = sampler.generate(prompts, max_new_tokens=max_new_tokens)
    return sum(len(ids) for ids in out.completion_ids), out.elapsed_s


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe_dir", default="outputs/recipe-default")
    parser.add_argument("--preset", default="default")
    parser.add_argument("--queries_batch1", type=int, default=32)
    parser.add_argument("--queries_batch16", type=int, default=128)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    recipe = Recipe(get_preset(args.preset), args.recipe_dir)
    model, tokenizer = recipe.load("ar"), recipe.tokenizer
    max_new = recipe.preset.max_new_tokens
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    prompts = [row["prompt"] for row in recipe.test.select(range(max(args.queries_batch1, args.queries_batch16)))]
    sampler = ARSampler(model, tokenizer)
    runners = {"hf_generate": lambda batch: hf_generate(model, tokenizer, batch, max_new, eos),
               "ar_sampler": lambda batch: ar_sampler(sampler, batch, max_new)}
    for run in runners.values():
        run(prompts[:1])  # warm-up
    report = {"device": str(recipe.device), "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    for batch_size, n in ((1, args.queries_batch1), (16, args.queries_batch16)):
        for name, run in runners.items():
            tokens = seconds = 0.0
            for start in range(0, n, batch_size):
                t, s = run(prompts[start : start + batch_size])
                tokens, seconds = tokens + t, seconds + s
            report[f"{name}_b{batch_size}_tokens_per_s"] = tokens / seconds
            print(f"{name:12s} batch {batch_size:>2}: {int(tokens)} tokens in {seconds:.2f}s = {tokens / seconds:.1f} tok/s")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
