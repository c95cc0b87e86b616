"""Exactness of the core on an accelerator: the CPU exactness tests' key identities, re-checked on `--device`.

tests/test_samplers.py and tests/test_loss.py pin the semantics on CPU in float64; this re-runs the identities that
can break only on another backend (kernels, SDPA variants, cache handling on the device):

* float64: block size 1 decodes exactly like HF greedy `generate`; batched = one-by-one decoding; replayed
  log-probs = the sampler's commit-time ones (|diff| < 1e-9 on CPU; < 1e-5 on CUDA, see FP64_REPLAY_TOL);
* bfloat16 (what training runs in): decoding runs, never emits the mask token, and replay agrees with the recorded
  log-probs to bf16 precision.

    python benchmarks/cuda_exactness.py --device cuda     # run by benchmarks/gpu_check.sh; --device cpu works too
Prints one JSON line and exits 1 if a check fails.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys

import torch

from dgr2_trl import BlockDiffusionSampler, convert_to_block_diffusion
from dgr2_trl.modeling import replay_logprobs, tiny_causal_lm
from dgr2_trl.samplers.common import encode_prompts
from dgr2_trl.tokenization import train_chat_tokenizer


PROMPTS = ["the quick brown fox", "nail polish and a face cream", "rank", "json list of ids for the lazy dog"]
CORPUS = [
    "the quick brown fox jumps over the lazy dog",
    "nail polish lip gloss shampoo conditioner face cream",
    "rank the candidates and answer with a json list of ids",
] * 20


def model_on(tokenizer, device, dtype, hidden_size, num_layers, block_size, initializer_range=0.5):
    # sharp random distributions (initializer_range 0.5), as the CPU tests use, so there are no near-ties
    ar = tiny_causal_lm(
        len(tokenizer) + 1,
        "qwen3",
        hidden_size=hidden_size,
        num_layers=num_layers,
        num_heads=hidden_size // 64,
        num_kv_heads=max(1, hidden_size // 256),
        intermediate_size=3 * hidden_size,
        initializer_range=initializer_range,
        seed=1,
        dtype=dtype,
    ).to(device)
    converted, tok = convert_to_block_diffusion(copy.deepcopy(ar), copy.deepcopy(tokenizer), block_size=block_size)
    return ar, converted, tok


# HF's Qwen3/Llama RMSNorm (and RoPE angles) compute in float32 even in a float64 model. On CPU the float32
# reductions give the same bits whatever the tensor shape, so replay (one full forward) and decoding (cached block
# forwards) agree to 1e-15; CUDA reduction kernels can differ by shape, so there they agree only to float32 rounding
# (measured on an H200: 1.4e-6). Token-level identities stay exact on both.
FP64_REPLAY_TOL = {"cpu": 1e-9, "cuda": 1e-5}


def replay_gap(model, tok, out, block_size, device):
    """Largest |replayed - recorded| log-prob over all committed tokens."""
    ids, mask = encode_prompts(tok, PROMPTS, device)
    rows = [c + t for c, t in zip(out.completion_ids, out.trailing_ids)]
    steps = [c + t for c, t in zip(out.commit_step, out.trailing_commit_step)]
    width = max(map(len, rows))
    completion = torch.full((len(rows), width), tok.pad_token_id, dtype=torch.long, device=device)
    completion_mask = torch.zeros_like(completion)
    commit = torch.full_like(completion, -1)
    for i, (row, step) in enumerate(zip(rows, steps)):
        completion[i, : len(row)] = torch.tensor(row, device=device)
        commit[i, : len(row)] = torch.tensor(step, device=device)
        completion_mask[i, : len(row)] = 1
    with torch.no_grad():
        replayed = replay_logprobs(
            model, ids, mask, completion, completion_mask, commit, tok.mask_token_id, block_size
        )
    return max(
        (replayed[i, : len(lp)].double().cpu() - torch.tensor(lp, dtype=torch.float64)).abs().max().item()
        for i, lp in enumerate(out.logprobs)
        if lp
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--hidden-size", type=int, default=512)
    parser.add_argument("--num-layers", type=int, default=8)
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit(f"--device {args.device}: CUDA is not available (torch {torch.__version__})")
    torch.backends.cuda.matmul.allow_tf32 = False  # float64 checks must not meet TF32 anywhere
    tokenizer = train_chat_tokenizer(CORPUS, vocab_size=400)
    checks = {}

    with torch.no_grad():
        ar, model, tok = model_on(tokenizer, device, torch.float64, args.hidden_size, args.num_layers, 1)
        ids, mask = encode_prompts(tokenizer, PROMPTS, device)
        hf = ar.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=24,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )[:, ids.shape[1] :]
        block = BlockDiffusionSampler(model, tok).generate(PROMPTS, max_new_tokens=24)
        checks["fp64_block1_equals_hf_greedy"] = all(
            row == hf[i, : len(row)].tolist() for i, row in enumerate(block.completion_ids)
        )

        _, model, tok = model_on(tokenizer, device, torch.float64, args.hidden_size, args.num_layers, 4)
        sampler = BlockDiffusionSampler(model, tok, threshold=0.5, eos_token_id=[])
        batched = sampler.generate(PROMPTS, max_new_tokens=37)
        single = [sampler.generate([p], max_new_tokens=37) for p in PROMPTS]
        checks["fp64_batched_equals_single"] = all(
            batched.completion_ids[i] == s.completion_ids[0] and batched.commit_step[i] == s.commit_step[0]
            for i, s in enumerate(single)
        )
        checks["fp64_parallel_commits"] = any(max(s, default=0) > 0 for s in batched.commit_step)
        gap64 = replay_gap(model, tok, batched, 4, device)
        checks["fp64_replay_equals_recorded"] = gap64 < FP64_REPLAY_TOL.get(device.type, 1e-9)

        # the default init (flat distributions): log-probs of moderate size, whose bf16 rounding stays small
        _, model, tok = model_on(tokenizer, device, torch.bfloat16, args.hidden_size, args.num_layers, 4, 0.02)
        out = BlockDiffusionSampler(model, tok, threshold=0.5, eos_token_id=[]).generate(PROMPTS, max_new_tokens=37)
        checks["bf16_mask_token_never_emitted"] = all(tok.mask_token_id not in row for row in out.completion_ids)
        gap16 = replay_gap(model, tok, out, 4, device)
        checks["bf16_replay_close_to_recorded"] = gap16 < 0.1  # bf16 has ~3 significant digits

    report = {
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "replay_gap_fp64": gap64,
        "replay_gap_bf16": gap16,
        **checks,
    }
    print(json.dumps(report))
    sys.exit(0 if all(checks.values()) else 1)


if __name__ == "__main__":
    main()
