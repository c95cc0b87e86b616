"""Speculative decoding on a finished recipe run, beside AR and the block decoder, interleaved and repeated.

Every round decodes the same queries with the AR teacher, the block decoder (the student alone) and the
speculative sampler (the student drafts; the teacher, or the student's own AR mode, verifies; "self, fused" shares
each block-completing verification with the next block's first denoising step; "self, causal" drafts from the
verifier's causal cache, `draft_context="causal"`), back to back. The
speculative rows must write exactly the AR verifier's text (reported as `identical_to_verifier`); the report gives
the median per-round speed ratio over AR, tokens per verification, drafter / verifier passes per token, and how
many drafts each verification accepted (a histogram: where rounds end is what bounds the speed-up).
`--distinct_ids` decodes with `Recipe.ranking_constraint()` everywhere: the speculative rows must then write the
constrained AR verifier's text, and the valid rate of each decoder is reported.

    python benchmarks/speculative.py --recipe_dir outputs/recipe-default --rounds 3 --out benchmarks/results/speculative.json
"""

from __future__ import annotations

import collections
import statistics

from recipe_bench import (  # benchmarks/ is on sys.path when run as a script
    DTYPES,
    recipe_parser,
    run_preset,
    write_report,
)

from dgr2_trl import ARSampler, BlockDiffusionSampler, SpeculativeSampler
from dgr2_trl.recipe.run import machine_info
from dgr2_trl.recipe.stages import Recipe
from dgr2_trl.rewards import parse_ranking


def decode(recipe, sampler, batch_size, n):
    """Tokens/s and the texts of `sampler` on the first `n` test prompts (plus its speculative statistics)."""
    prompts = [recipe.test[i]["prompt"] for i in range(n)]
    texts, tokens, seconds, passes = [], 0, 0.0, []
    verifications = accepted = drafter = verifier = fused = fused_kept = 0
    histogram = collections.Counter()  # accepted drafts per verification
    for start in range(0, n, batch_size):
        out = sampler.generate(prompts[start : start + batch_size], max_new_tokens=recipe.preset.max_new_tokens)
        texts += out.texts
        tokens += out.num_generated_tokens
        seconds += out.elapsed_s
        passes += [s / max(len(ids), 1) for s, ids in zip(out.steps_per_row, out.completion_ids)]
        if isinstance(sampler, SpeculativeSampler):
            verifications += sum(len(r) for r in out.accepted_per_round)
            histogram.update(n for r in out.accepted_per_round for n in r)
            accepted += sum(sum(r) for r in out.accepted_per_round)
            drafter += out.drafter_passes
            verifier += out.verifier_passes
            fused += out.fused_passes
            fused_kept += out.fused_kept
    stats = {"tokens_per_second": tokens / seconds, "forward_passes_per_token": statistics.mean(passes)}
    if verifications:
        stats.update(
            tokens_per_verification=tokens / verifications,
            mean_accepted_drafts=accepted / verifications,
            drafter_calls=drafter,
            verifier_calls=verifier,
            fused_verifier_calls=fused,
            fused_steps_kept=fused_kept,
            accepted_drafts_histogram={n: histogram[n] for n in sorted(histogram)},
            verifications_keeping_at_most_3=sum(c for n, c in histogram.items() if n <= 3) / verifications,
        )
    return texts, stats


def main():
    parser = recipe_parser(__doc__)
    parser.add_argument("--thresholds", type=float, nargs="+", default=[0.9, 0.5], help="drafting thresholds")
    parser.add_argument("--block_threshold", type=float, default=0.95, help="the block decoder's threshold")
    parser.add_argument("--fallback", default="leftmost")
    parser.add_argument("--batch_sizes", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--queries", type=int, nargs="+", default=[32, 128], help="queries per batch size")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no_fused", action="store_true", help="leave out self-speculation with fuse_next_draft=True")
    parser.add_argument(
        "--no_causal", action="store_true", help="leave out self-speculation with draft_context='causal'"
    )
    parser.add_argument(
        "--draft_block_sizes",
        type=int,
        nargs="*",
        default=[],
        help="also draft with these block sizes (teacher-verified), beside the student's own",
    )
    parser.add_argument(
        "--distinct_ids", action="store_true", help="decode with Recipe.ranking_constraint() (distinct ids, id slots)"
    )
    args = parser.parse_args()
    recipe = Recipe(run_preset(args), args.recipe_dir)
    teacher, student = recipe.load("ar", DTYPES[args.dtype]), recipe.load(args.stage, DTYPES[args.dtype])
    tok = recipe.tokenizer
    c = recipe.ranking_constraint() if args.distinct_ids else None
    samplers = {"ar": ARSampler(teacher, tok, constraint=c), "ar (student)": ARSampler(student, tok, constraint=c)}
    samplers["block"] = BlockDiffusionSampler(
        student, tok, threshold=args.block_threshold, fallback=args.fallback, constraint=c
    )
    for threshold in args.thresholds:
        for name, verifier in (("teacher", teacher), ("self", None)):
            samplers[f"speculative ({name}) {threshold}"] = SpeculativeSampler(
                student, tok, verifier=verifier, threshold=threshold, fallback=args.fallback, constraint=c
            )
        if not args.no_fused:
            samplers[f"speculative (self, fused) {threshold}"] = SpeculativeSampler(
                student, tok, threshold=threshold, fallback=args.fallback, fuse_next_draft=True, constraint=c
            )
        for size in args.draft_block_sizes:
            samplers[f"speculative (teacher) {threshold}, block {size}"] = SpeculativeSampler(
                student, tok, verifier=teacher, block_size=size, threshold=threshold, fallback=args.fallback,
                constraint=c,
            )  # fmt: skip
        if not args.no_causal:
            samplers[f"speculative (self, causal) {threshold}"] = SpeculativeSampler(
                student, tok, threshold=threshold, fallback=args.fallback, draft_context="causal", constraint=c
            )
    for sampler in samplers.values():  # no timed call pays for first-call costs
        sampler.generate([recipe.test[0]["prompt"]], max_new_tokens=8)
    report = {
        "machine": machine_info(),
        "dtype": args.dtype,
        "rounds": args.rounds,
        "stage": args.stage,
        "distinct_ids": args.distinct_ids,
        "results": [],
    }
    for batch_size, n in zip(args.batch_sizes, args.queries):
        speeds = {name: [] for name in samplers}
        last = {}
        for _ in range(args.rounds):
            for name, sampler in samplers.items():
                texts, stats = decode(recipe, sampler, batch_size, n)
                speeds[name].append(stats["tokens_per_second"])
                last[name] = (texts, stats)
        ar_texts = last["ar"][0]
        for name, (texts, stats) in last.items():
            verifier_texts = last["ar (student)"][0] if "(self" in name else ar_texts
            ratios = [s / a for s, a in zip(speeds[name], speeds["ar"])]
            row = {
                "batch_size": batch_size,
                "n": n,
                "decoder": name,
                "speedup_median": statistics.median(ratios),
                "speedup_min": min(ratios),
                "speedup_max": max(ratios),
                **stats,
                "tokens_per_second": statistics.median(speeds[name]),
                "identical_to_ar_teacher": sum(a == b for a, b in zip(texts, ar_texts)) / n,
                "identical_to_verifier": sum(a == b for a, b in zip(texts, verifier_texts)) / n,
                "valid_rate": sum(parse_ranking(t, recipe.test[i]["candidates"]).valid for i, t in enumerate(texts))
                / n,
            }
            report["results"].append(row)
            extra = (
                f", {row['tokens_per_verification']:.2f} tokens/verification"
                if "tokens_per_verification" in row
                else ""
            )
            print(
                f"batch {batch_size:>2} {name:28s}: {row['speedup_median']:.2f}x AR (range {row['speedup_min']:.2f}-"
                f"{row['speedup_max']:.2f}), {row['forward_passes_per_token']:.3f} passes/token{extra}, "
                f"same text as the teacher {row['identical_to_ar_teacher']:.3f}, valid {row['valid_rate']:.3f}",
                flush=True,
            )
    write_report(args.out, report)


if __name__ == "__main__":
    main()
