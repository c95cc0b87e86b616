"""Cost of a CFT step (DiffusionSFTTrainer) against an AR SFT step (trl.SFTTrainer): same model, same batch.

Both trainers are built on the same re-ranking rows (bundled Amazon Beauty, real prompt/completion lengths) and
each times its own `training_step` (collated batch -> loss -> backward; the optimizer step, identical for both, is
left out). Steps alternate between the two trainers so that load from other processes hits both alike; the median
is reported.

Memory: on CUDA, the peak allocated memory of the step (`torch.cuda.max_memory_allocated`). On CPU there is no
allocator counter for torch, so it reports the bytes of the tensors autograd saves for backward (deduplicated by
storage, via `torch.autograd.graph.saved_tensors_hooks`): the activation memory, which is what the 2x-long
training layout grows. Parameters, gradients and optimizer state are the same for both and not counted.

    python benchmarks/cft_step.py --batch_size 8 --output outputs/benchmarks/cft_step.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch
from trl import SFTConfig, SFTTrainer

from dgr2_trl.data import RANKING_ANSWER_PREFIX, build_rerank_datasets, train_rerank_tokenizer
from dgr2_trl.modeling import tiny_causal_lm
from dgr2_trl.trainers import DiffusionSFTConfig, DiffusionSFTTrainer


class SavedTensorBytes:
    """Bytes of distinct storages autograd saves for backward while active."""

    def __init__(self):
        self.storages: dict[int, int] = {}

    def pack(self, tensor):
        storage = tensor.untyped_storage()
        self.storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    def __enter__(self):
        self.storages.clear()
        self.context = torch.autograd.graph.saved_tensors_hooks(self.pack, lambda t: t)
        self.context.__enter__()
        return self

    def __exit__(self, *exc):
        self.context.__exit__(*exc)

    @property
    def total(self) -> int:
        return sum(self.storages.values())


def one_step(trainer, batch, device) -> tuple[float, int]:
    """Seconds and memory (see module docstring) of one forward + backward."""
    trainer.model.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    with SavedTensorBytes() as saved:
        trainer.training_step(trainer.model, dict(batch), None)
    if device.type == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    memory = torch.cuda.max_memory_allocated() if device.type == "cuda" else saved.total
    return elapsed, memory


def build(args):
    data = build_rerank_datasets(
        id_scheme="single", max_train_queries=max(64, args.batch_size), max_eval_queries=4, seed=0
    )
    tokenizer = train_rerank_tokenizer(data, vocab_size=2000)
    model = tiny_causal_lm(
        len(tokenizer) + 1, hidden_size=args.hidden_size, num_layers=args.num_layers,
        intermediate_size=4 * args.hidden_size, num_heads=max(1, args.hidden_size // 64) * 2, num_kv_heads=2,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, dtype=torch.float32,
    )  # fmt: skip
    common = dict(
        report_to="none", bf16=False, activation_checkpointing=False, dataloader_num_workers=0, disable_tqdm=True,
        save_strategy="no", per_device_train_batch_size=args.batch_size, max_steps=1, seed=0,
    )  # fmt: skip
    out = tempfile.mkdtemp()
    ar = SFTTrainer(
        model, args=SFTConfig(output_dir=out, **common), train_dataset=data.train, processing_class=tokenizer
    )
    cft_args = DiffusionSFTConfig(
        output_dir=out, block_size=args.block_size, complementary_masking=args.complementary_masking,
        answer_prefix=RANKING_ANSWER_PREFIX, answer_weight=2.0, **common,
    )  # fmt: skip
    cft = DiffusionSFTTrainer(model, args=cft_args, train_dataset=data.train, processing_class=tokenizer)
    return ar, cft


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--hidden_size", type=int, default=256)
    parser.add_argument("--num_layers", type=int, default=4)
    parser.add_argument("--block_size", type=int, default=32)
    parser.add_argument("--complementary_masking", action="store_true")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per trainer (after 1 warm-up step each)")
    parser.add_argument("--output", default="outputs/benchmarks/cft_step.json")
    args = parser.parse_args()

    ar, cft = build(args)
    device = ar.args.device
    ar_batch = ar._prepare_inputs(next(iter(ar.get_train_dataloader())))
    cft_batch = cft._prepare_inputs(next(iter(cft.get_train_dataloader())))
    cft._add_noise(cft_batch, 0)  # what get_batch_samples does in training
    ar.current_gradient_accumulation_steps = cft.current_gradient_accumulation_steps = 1
    results = {"ar": [], "cft": []}
    for step in range(args.steps + 1):  # alternate, so background load hits both alike; step 0 is warm-up
        for name, trainer, batch in (("ar", ar, ar_batch), ("cft", cft, cft_batch)):
            measured = one_step(trainer, batch, device)
            if step > 0:
                results[name].append(measured)
    seconds = {k: statistics.median(t for t, _ in v) for k, v in results.items()}
    memory = {k: max(m for _, m in v) for k, v in results.items()}
    report = {
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
        + (torch.cuda.get_device_name() if device.type == "cuda" else "CPU"),
        "memory_measure": "cuda max_memory_allocated" if device.type == "cuda" else "bytes saved for backward",
        "config": vars(args),
        "ar_tokens_per_row": float(ar_batch["attention_mask"].sum() / args.batch_size),
        "cft_tokens_per_row": float(
            (cft_batch["prompt_mask"].sum() + 2 * cft_batch["completion_mask"].sum()) / args.batch_size
        ),
        "ar_step_s": seconds["ar"],
        "cft_step_s": seconds["cft"],
        "time_ratio": seconds["cft"] / seconds["ar"],
        "ar_memory_bytes": memory["ar"],
        "cft_memory_bytes": memory["cft"],
        "memory_ratio": memory["cft"] / memory["ar"],
    }
    print(json.dumps(report, indent=2))
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
