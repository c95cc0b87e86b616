"""Is the frontier's AR baseline fair? Our `ARSampler` against HF `generate` (greedy, KV cache) on the recipe's prompts.

Times both on the same test prompts of a finished recipe run (its AR teacher), at batch 1 and 16, after one
warm-up call each, and prints tokens/s (generated tokens up to and including EOS over the wall time).

    python benchmarks/ar_baseline.py --recipe_dir outputs/recipe-default --out benchmarks/results/ar_baseline.json
"""

from __future__ import annotations

import time

import torch

# benchmarks/ is on sys.path when run as a script
from decode_throughput import HFGenerate, synchronize
from recipe_bench import DTYPES, recipe_parser, run_preset, write_report

from dgr2_trl.recipe.stages import Recipe
from dgr2_trl.samplers import ARSampler


def timed(generate, prompts, max_new_tokens: int) -> tuple[int, float]:
    """Generated tokens (up to and including EOS) and wall time of one call, timed the same way for both."""
    synchronize()
    start = time.perf_counter()
    out = generate(prompts, max_new_tokens)
    synchronize()
    return sum(len(ids) for ids in out.completion_ids), time.perf_counter() - start


def main():
    parser = recipe_parser(__doc__, stage=False)
    parser.add_argument("--queries_batch1", type=int, default=32)
    parser.add_argument("--queries_batch16", type=int, default=128)
    args = parser.parse_args()
    recipe = Recipe(run_preset(args), args.recipe_dir)
    model, tokenizer = recipe.load("ar", DTYPES[args.dtype]), recipe.tokenizer
    max_new = recipe.preset.max_new_tokens
    prompts = [row["prompt"] for row in recipe.test.select(range(max(args.queries_batch1, args.queries_batch16)))]
    sampler = ARSampler(model, tokenizer)
    hf = HFGenerate(model, tokenizer)
    runners = {
        "hf_generate": lambda batch: timed(hf, batch, max_new),
        "ar_sampler": lambda batch: timed(lambda p, n: sampler.generate(p, max_new_tokens=n), batch, max_new),
    }
    for run in runners.values():
        run(prompts[:1])  # warm-up
    report = {
        "device": str(recipe.device),
        "dtype": args.dtype,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    for batch_size, n in ((1, args.queries_batch1), (16, args.queries_batch16)):
        for name, run in runners.items():
            tokens = seconds = 0.0
            for start in range(0, n, batch_size):
                t, s = run(prompts[start : start + batch_size])
                tokens, seconds = tokens + t, seconds + s
            report[f"{name}_b{batch_size}_tokens_per_s"] = tokens / seconds
            print(
                f"{name:12s} batch {batch_size:>2}: {int(tokens)} tokens in {seconds:.2f}s = {tokens / seconds:.1f} tok/s"
            )
    write_report(args.out, report)


if __name__ == "__main__":
    main()
