"""Decode throughput: AR vs block-diffusion decoding on the same model, prompts and machine.

Random weights give flat distributions and no parallelism, so the script first trains a small Qwen3-style model
from a config for about a minute on a synthetic task with predictable structure (fill a fixed 120-word
template whose every 20th word is copied from the prompt's list), with the AR loss and the block-diffusion loss
together so the same weights decode both ways. It then times, at batch 1 and 16:

* AR: `ARSampler` (KV-cached, one token per model call) and HF `generate` (greedy, KV cache);
* block diffusion: `BlockDiffusionSampler` at thresholds {1.0, 0.9, 0.7, 0.5},

and prints tokens/s, forward passes per token, the exact-match rate of the completions and the speed ratio over
`ARSampler`, and writes them as JSON.

    python benchmarks/decode_throughput.py --train-seconds 60 --out benchmarks/results/decode_throughput.json

On a GPU (as benchmarks/gpu_check.sh runs it): `--device cuda --dtype bfloat16` trains under bf16 autocast (fp32
weights) and decodes with the weights cast to bf16; `--hidden-size/--num-layers/...` pick a larger model.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from dgr2_trl import ARSampler, BlockDiffusionSampler, convert_to_block_diffusion
from dgr2_trl.modeling import masked_diffusion_loss, sample_block_noise, tiny_causal_lm
from dgr2_trl.samplers.common import encode_prompts
from dgr2_trl.tokenization import train_chat_tokenizer


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


WORDS = [
    a + b
    for a in ("ba", "ko", "mi", "tu", "re", "sa", "li", "po")
    for b in ("ran", "tel", "vok", "dis", "mun", "gal", "fep", "hoz")
]
FILLER = [a + b for a in ("ze", "qu", "ja", "wy") for b in ("nor", "bix", "lum", "cet")]
NUM_ITEMS = 6
SLOT_EVERY = 20
# A fixed 120-word answer template (like the fixed parts of a re-ranker's trace and JSON), with the prompt's items
# copied into every 20th slot: most tokens are predictable, the slots need the prompt.
_TEMPLATE_RNG = random.Random(1234)
TEMPLATE = [_TEMPLATE_RNG.choice(FILLER) for _ in range(SLOT_EVERY * NUM_ITEMS)]


def make_example(rng: random.Random) -> tuple[str, str]:
    items = rng.sample(WORDS, NUM_ITEMS)
    words = list(TEMPLATE)
    for i, item in enumerate(items):
        words[i * SLOT_EVERY + SLOT_EVERY // 2] = item
    return "items: " + " ".join(items) + "\nanswer:", " " + " ".join(words)


def build_tokenizer():
    # one token per word, so the completion is ~126 tokens
    return train_chat_tokenizer([" " + " ".join(WORDS + FILLER)] * 4 + [" items: answer:"] * 4, vocab_size=600)


def encode_batch(tokenizer, pairs, device):
    prompt_ids, prompt_mask = encode_prompts(tokenizer, [p for p, _ in pairs], device)
    rows = [tokenizer(c, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id] for _, c in pairs]
    width = max(map(len, rows))
    completion = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long, device=device)
    completion_mask = torch.zeros_like(completion)
    for i, row in enumerate(rows):
        completion[i, : len(row)] = torch.tensor(row)
        completion_mask[i, : len(row)] = 1
    return prompt_ids, prompt_mask, completion, completion_mask


def train(model, tokenizer, block_size, seconds, batch_size, seed, dtype=torch.float32):
    """AR cross-entropy + block-diffusion loss, for a fixed wall-clock budget (fp32 weights; autocast to `dtype`)."""
    rng = random.Random(seed)
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)  # noise is drawn on the model's device
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    mask_id = tokenizer.mask_token_id
    model.train()
    start, steps = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        prompt_ids, prompt_mask, completion, completion_mask = encode_batch(
            tokenizer, [make_example(rng) for _ in range(batch_size)], device
        )
        ids = torch.cat([prompt_ids, completion], 1)
        mask = torch.cat([prompt_mask, completion_mask], 1)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            logits = model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0)).logits
            targets = ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100)
            targets[:, : prompt_ids.shape[1] - 1] = -100
            ar_loss = F.cross_entropy(logits[:, :-1].float().flatten(0, 1), targets.flatten(), ignore_index=-100)
            noise = sample_block_noise(completion_mask, block_size, generator=generator)
            diffusion = masked_diffusion_loss(
                model,
                prompt_ids,
                prompt_mask,
                completion,
                completion_mask,
                noise,
                mask_id,
                block_size,
                time_weighting=False,
            ).loss(time_weighting=False)
        loss = ar_loss + diffusion
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        steps += 1
        if steps % 25 == 0:
            print(f"  step {steps}: AR loss {ar_loss.item():.3f}  diffusion loss {diffusion.item():.3f}", flush=True)
    model.eval()
    return steps


def exact_match(tokenizer, texts, pairs):
    return sum(t.strip() == c.strip() for t, (_, c) in zip(texts, pairs)) / len(pairs)


def word_accuracy(texts, pairs):
    """Fraction of reference words reproduced at their position (the copied slots are the hard part)."""
    hits = total = 0
    for text, (_, reference) in zip(texts, pairs):
        got, want = text.split(), reference.split()
        hits += sum(a == b for a, b in zip(got, want))
        total += len(want)
    return hits / total


def synchronize():
    # CUDA kernels run asynchronously: wait for them before reading the clock
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def time_sampler(generate, pairs, batch_size, max_new_tokens, repeats):
    """Best-of-`repeats` tokens/s over the whole prompt set, decoded in batches of `batch_size`."""
    best = None
    for _ in range(repeats):
        texts, tokens, passes_per_token, elapsed = [], 0, [], 0.0
        for i in range(0, len(pairs), batch_size):
            chunk = pairs[i : i + batch_size]
            synchronize()
            start = time.perf_counter()
            out = generate([p for p, _ in chunk], max_new_tokens)
            synchronize()
            elapsed += time.perf_counter() - start
            texts += out.texts
            tokens += out.num_generated_tokens
            passes_per_token.append(out.forward_passes_per_token)
        result = {
            "tokens_per_s": tokens / elapsed,
            "forward_passes_per_token": sum(passes_per_token) / len(passes_per_token),
            "mean_tokens": tokens / len(pairs),
            "texts": texts,
        }
        if best is None or result["tokens_per_s"] > best["tokens_per_s"]:
            best = result
    return best


class HFGenerate:
    """HF `generate` (greedy, KV cache) behind the sampler interface, for reference."""

    def __init__(self, model, tokenizer):
        self.model, self.tokenizer = model, tokenizer

    def __call__(self, prompts, max_new_tokens):
        from dgr2_trl.samplers import GenerationOutput

        ids, mask = encode_prompts(self.tokenizer, prompts, self.model.device)
        mask_id = self.tokenizer.mask_token_id
        out = self.model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=self.tokenizer.pad_token_id,
            eos_token_id=self.tokenizer.eos_token_id,
            suppress_tokens=None if mask_id is None else [mask_id],  # None: an AR model has no mask token
        )[:, ids.shape[1] :]
        rows = []
        for row in out.tolist():
            cut = row.index(self.tokenizer.eos_token_id) + 1 if self.tokenizer.eos_token_id in row else len(row)
            rows.append(row[:cut])
        return GenerationOutput(
            texts=self.tokenizer.batch_decode(rows, skip_special_tokens=True),
            completion_ids=rows,
            steps_per_row=[len(r) for r in rows],
        )


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train-seconds", type=float, default=60.0)
    parser.add_argument("--block-size", type=int, default=32)
    parser.add_argument("--num-prompts", type=int, default=32)
    parser.add_argument("--thresholds", type=float, nargs="+", default=[1.0, 0.9, 0.7, 0.5])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="benchmarks/results/decode_throughput.json")
    parser.add_argument("--device", default="cpu", help="e.g. cpu, cuda, cuda:1")
    parser.add_argument(
        "--dtype",
        default="float32",
        choices=sorted(DTYPES),
        help="decoding dtype (training: fp32 weights under autocast to this dtype)",
    )
    parser.add_argument("--hidden-size", type=int, default=128)
    parser.add_argument("--num-layers", type=int, default=4)
    parser.add_argument("--num-heads", type=int, default=4)
    parser.add_argument("--num-kv-heads", type=int, default=2)
    parser.add_argument("--intermediate-size", type=int, default=384)
    parser.add_argument("--train-batch-size", type=int, default=16)
    args = parser.parse_args()
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {args.device}: CUDA is not available (torch {torch.__version__})")

    torch.manual_seed(args.seed)
    tokenizer = build_tokenizer()
    model = tiny_causal_lm(
        len(tokenizer) + 1,
        "qwen3",
        hidden_size=args.hidden_size,
        num_layers=args.num_layers,
        num_heads=args.num_heads,
        num_kv_heads=args.num_kv_heads,
        intermediate_size=args.intermediate_size,
        seed=args.seed,
    )
    model, tokenizer = convert_to_block_diffusion(model, tokenizer, block_size=args.block_size)
    model.to(device)
    print(
        f"training {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters for {args.train_seconds:.0f}s "
        f"on {device} ({args.dtype})"
    )
    steps = train(model, tokenizer, args.block_size, args.train_seconds, args.train_batch_size, args.seed, dtype)
    model.to(dtype)  # decode in the requested precision (a no-op in the fp32 default)

    pairs = [make_example(random.Random(10_000 + i)) for i in range(args.num_prompts)]
    max_new = max(len(tokenizer(c, add_special_tokens=False)["input_ids"]) for _, c in pairs) + 1
    rows = []
    for batch_size in args.batch_sizes:
        ar = ARSampler(model, tokenizer)
        reference = time_sampler(
            lambda p, n, ar=ar: ar.generate(p, max_new_tokens=n), pairs, batch_size, max_new, args.repeats
        )
        hf = HFGenerate(model, tokenizer)
        hf_result = time_sampler(hf, pairs, batch_size, max_new, args.repeats)
        entries = [("ar_sampler", None, reference), ("hf_generate", None, hf_result)]
        for threshold in args.thresholds:
            block = BlockDiffusionSampler(model, tokenizer, threshold=threshold)
            result = time_sampler(
                lambda p, n, block=block: block.generate(p, max_new_tokens=n), pairs, batch_size, max_new, args.repeats
            )
            entries.append(("block_diffusion", threshold, result))
        for name, threshold, result in entries:
            rows.append(
                {
                    "batch_size": batch_size,
                    "sampler": name,
                    "threshold": threshold,
                    "tokens_per_s": round(result["tokens_per_s"], 1),
                    "forward_passes_per_token": round(result["forward_passes_per_token"], 3),
                    "speedup_vs_ar_sampler": round(result["tokens_per_s"] / reference["tokens_per_s"], 2),
                    "exact_match": exact_match(tokenizer, result["texts"], pairs),
                    "word_accuracy": round(word_accuracy(result["texts"], pairs), 4),
                    "mean_tokens": round(result["mean_tokens"], 1),
                }
            )
    print(
        f"\n{'batch':>5} {'sampler':>16} {'tau':>5} {'tok/s':>8} {'passes/tok':>10} {'speed-up':>8} {'exact':>6} {'words':>6}"
    )
    for r in rows:
        tau = "" if r["threshold"] is None else f"{r['threshold']:.1f}"
        print(
            f"{r['batch_size']:>5} {r['sampler']:>16} {tau:>5} {r['tokens_per_s']:>8.1f} "
            f"{r['forward_passes_per_token']:>10.3f} {r['speedup_vs_ar_sampler']:>7.2f}x {r['exact_match']:>6.2f} "
            f"{r['word_accuracy']:>6.3f}"
        )
    report = {
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "device": str(device),
            "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        },
        "model": {
            "parameters": sum(p.numel() for p in model.parameters()),
            "block_size": args.block_size,
            "dtype": args.dtype,
            "hidden_size": args.hidden_size,
            "num_layers": args.num_layers,
            "train_seconds": args.train_seconds,
            "train_steps": steps,
        },
        "max_new_tokens": max_new,
        "num_prompts": args.num_prompts,
        "results": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(f"\nwritten to {args.out}")


if __name__ == "__main__":
    main()
