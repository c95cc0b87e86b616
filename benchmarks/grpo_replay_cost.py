"""GRPO cost split: trajectory replay (policy log-probs for the loss) against the rollout that produced the samples.

For each block size and cap on denoising steps per block, on the same model and prompts: the rollout's wall time
(`BlockDiffusionSampler`, threshold 1.0 so each block takes exactly `steps` steps), the replay's forward and
forward+backward time (`replay_logprobs`, one pass over the `[prompt ; x_0 ; x_t]` layout per denoising step),
and their ratio. Replay passes = steps per block (all blocks are replayed together), so replay cost grows with
steps per block, not with the number of blocks; `--merge-steps` shows the cheaper, biased merge.

    python benchmarks/grpo_replay_cost.py --out benchmarks/results/grpo_replay_cost.json
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from dgr2_trl import BlockDiffusionSampler, convert_to_block_diffusion
from dgr2_trl.modeling import replay_logprobs, tiny_causal_lm
from dgr2_trl.samplers.common import encode_prompts
from dgr2_trl.tokenization import train_chat_tokenizer


TEXT = "the user bought nail polish and face cream then shampoo and conditioner so rank the lip gloss first"


def replay_inputs(tokenizer, prompts, out):
    ids, mask = encode_prompts(tokenizer, prompts)
    rows = [c + t for c, t in zip(out.completion_ids, out.trailing_ids)]
    steps = [s + t for s, t in zip(out.commit_step, out.trailing_commit_step)]
    width = max(map(len, rows))
    completion = torch.zeros(len(rows), width, dtype=torch.long)
    completion_mask = torch.zeros_like(completion)
    commit = torch.full_like(completion, -1)
    for i, (r, s) in enumerate(zip(rows, steps)):
        completion[i, : len(r)], completion_mask[i, : len(r)], commit[i, : len(s)] = (
            torch.tensor(r),
            1,
            torch.tensor(s),
        )
    return ids, mask, completion, completion_mask, commit


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--block-sizes", type=int, nargs="+", default=[4, 8, 16, 32])
    parser.add_argument("--steps", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--merge-steps", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--out", default="benchmarks/results/grpo_replay_cost.json")
    args = parser.parse_args()

    tokenizer = train_chat_tokenizer([TEXT] * 20, vocab_size=400)
    base = tiny_causal_lm(len(tokenizer) + 1, "qwen3", hidden_size=128, num_layers=4, intermediate_size=384, seed=0)
    prompts = [TEXT[: 40 + 7 * i] for i in range(args.batch_size)]
    rows = []
    warm, warm_tok = convert_to_block_diffusion(base, tokenizer, block_size=4)
    BlockDiffusionSampler(warm, warm_tok, eos_token_id=[]).generate(prompts, max_new_tokens=8)  # warm-up
    for block_size in args.block_sizes:
        model, tok = convert_to_block_diffusion(base, tokenizer, block_size=block_size)
        for steps in [s for s in args.steps if s <= block_size]:
            sampler = BlockDiffusionSampler(model, tok, threshold=1.0, max_steps_per_block=steps, eos_token_id=[])
            start = time.perf_counter()
            out = sampler.generate(prompts, max_new_tokens=args.new_tokens)
            rollout_s = time.perf_counter() - start
            inputs = replay_inputs(tok, prompts, out)
            start = time.perf_counter()
            with torch.no_grad():
                replay_logprobs(model, *inputs, tok.mask_token_id, block_size, merge_steps=args.merge_steps)
            forward_s = time.perf_counter() - start
            start = time.perf_counter()
            logps = replay_logprobs(model, *inputs, tok.mask_token_id, block_size, merge_steps=args.merge_steps)
            logps.sum().backward()
            model.zero_grad(set_to_none=True)
            train_s = time.perf_counter() - start
            rows.append(
                {
                    "block_size": block_size,
                    "steps_per_block": steps,
                    "rollout_passes": out.num_forward_passes + 1,
                    "replay_passes": -(-steps // args.merge_steps),
                    "rollout_s": round(rollout_s, 3),
                    "replay_forward_s": round(forward_s, 3),
                    "replay_forward_backward_s": round(train_s, 3),
                    "replay_over_rollout": round(train_s / rollout_s, 3),
                }
            )
            r = rows[-1]
            print(
                f"block {block_size:>3} steps {steps:>2}: rollout {r['rollout_passes']:>4} passes {rollout_s:7.3f}s | "
                f"replay {r['replay_passes']:>2} passes fwd {forward_s:6.3f}s fwd+bwd {train_s:6.3f}s | "
                f"replay/rollout {r['replay_over_rollout']:.2f}",
                flush=True,
            )
    report = {
        "machine": {"platform": platform.platform(), "torch_threads": torch.get_num_threads()},
        "batch_size": args.batch_size,
        "new_tokens": args.new_tokens,
        "merge_steps": args.merge_steps,
        "results": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
