"""What one forward pass costs by query width: the cost model behind every speed-up over AR on this machine.

A decoder that writes several tokens per pass only wins if a wide pass costs little more than an AR step (one query
per row). This times a KV-cached forward of the recipe's AR teacher (decoder and LM head, under a boolean 4D mask,
as the block and speculative samplers call it) after the prompt, at each query width and batch size, interleaved
over rounds; the report gives the median milliseconds and the cost in AR steps (width 1 at the same batch size).

With it, a speculative round's ceiling is `tokens per verification / (cost(drafter width) + cost(verifier width))`
AR steps: on a GPU widths up to a few hundred cost about one step, on a small CPU each query adds compute.

    python benchmarks/pass_cost.py --recipe_dir outputs/recipe-default --out benchmarks/results/pass_cost.json
"""

from __future__ import annotations

import statistics
import time

import torch
from decode_throughput import synchronize  # benchmarks/ is on sys.path when run as a script
from recipe_bench import DTYPES, recipe_parser, run_preset, write_report
from transformers import DynamicCache

from dgr2_trl.modeling.forward import decoder_hidden_states
from dgr2_trl.modeling.masks import block_attention_mask, position_ids_from_mask, prompt_block_ids
from dgr2_trl.recipe.run import machine_info
from dgr2_trl.recipe.stages import Recipe
from dgr2_trl.samplers.common import encode_prompts


def pass_seconds(model, prompt_ids, prompt_mask, width: int, repeats: int) -> float:
    """Median wall time of a `width`-query forward (and LM head) after the cached prompt; the cache is cut back to
    the prompt after each call, so every call sees the same context."""
    batch = prompt_ids.shape[0]
    cache = DynamicCache(config=model.config)
    blocks, clean = prompt_block_ids(prompt_mask), torch.zeros_like(prompt_mask, dtype=torch.bool)
    prompt_allowed = block_attention_mask(blocks, clean, blocks, clean, prompt_mask.bool())  # as the samplers prefill
    decoder_hidden_states(model, prompt_ids, position_ids_from_mask(prompt_mask), prompt_allowed, cache)
    ids = torch.randint(3, model.config.vocab_size - 1, (batch, width), device=prompt_ids.device)
    positions = prompt_mask.sum(-1, keepdim=True) + torch.arange(width, device=prompt_ids.device)
    causal = torch.ones(width, width, dtype=torch.bool, device=ids.device).tril()
    cached = prompt_mask.bool()[:, None, None, :].expand(-1, 1, width, -1)
    allowed = torch.cat([cached, causal.expand(batch, 1, -1, -1)], -1)
    times = []
    for _ in range(repeats):
        synchronize()
        start = time.perf_counter()
        hidden = decoder_hidden_states(model, ids, positions, allowed, cache)
        model.get_output_embeddings()(hidden)
        synchronize()
        times.append(time.perf_counter() - start)
        cache.crop(-width)
    return statistics.median(times)


def main():
    parser = recipe_parser(__doc__, stage=False)
    parser.add_argument("--widths", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32, 48, 64])
    parser.add_argument("--batch_sizes", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=10, help="timed calls per width and round")
    args = parser.parse_args()
    recipe = Recipe(run_preset(args), args.recipe_dir)
    model = recipe.load("ar", DTYPES[args.dtype])
    report = {"machine": machine_info(), "dtype": args.dtype, "rounds": args.rounds, "results": []}
    with torch.no_grad():
        for batch_size in args.batch_sizes:
            prompts = [recipe.test[i]["prompt"] for i in range(batch_size)]
            prompt_ids, prompt_mask = encode_prompts(recipe.tokenizer, prompts, recipe.device)
            pass_seconds(model, prompt_ids, prompt_mask, max(args.widths), 2)  # first-call costs
            seconds = {width: [] for width in args.widths}
            for _ in range(args.rounds):
                for width in args.widths:
                    seconds[width].append(pass_seconds(model, prompt_ids, prompt_mask, width, args.repeats))
            step = statistics.median(seconds[1]) if 1 in seconds else None
            for width in args.widths:
                ms = 1000 * statistics.median(seconds[width])
                row = {"batch_size": batch_size, "width": width, "ms": ms, "prompt_length": prompt_ids.shape[1]}
                if step:
                    row["ar_steps"] = statistics.median(seconds[width]) / step
                report["results"].append(row)
                steps = f" = {row['ar_steps']:.2f} AR steps" if step else ""
                print(f"batch {batch_size:>2} width {width:>3}: {ms:6.2f} ms{steps}", flush=True)
    write_report(args.out, report)


if __name__ == "__main__":
    main()
