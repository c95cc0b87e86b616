"""Conversion fine-tuning (CFT): turn the AR re-ranker into a block-diffusion re-ranker with `DiffusionSFTTrainer`.

Starts from `--model_name_or_path` (a saved AR teacher, e.g. the output of `examples/sft_ar.py`, or an already
converted model) or, when none is given, from a fresh small Qwen3 built from a config. The defaults run on a CPU in
a few minutes; every `DiffusionSFTConfig` field can be overridden on the command line:

    python examples/sft_ar.py && python examples/cft.py --model_name_or_path outputs/ar-teacher
    accelerate launch examples/cft.py --model_name_or_path outputs/ar-teacher --block_size 8 --complementary_masking

Logs the loss, `mask_ratio`, and the block-diffusion validation metrics (`valid_rate`, R@1, ...) of the naive
conversion (before training) and of the fine-tuned model; saves model + tokenizer (with the block settings in
`config.json`) to `output_dir`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import TrlParser

from dgr2_trl.data import build_rerank_datasets, train_rerank_tokenizer
from dgr2_trl.evaluation import evaluate_reranker
from dgr2_trl.modeling import tiny_causal_lm
from dgr2_trl.samplers import BlockDiffusionSampler
from dgr2_trl.trainers import DiffusionSFTConfig, DiffusionSFTTrainer


@dataclass
class ScriptArguments:
    model_name_or_path: str | None = field(default=None, metadata={"help": "Saved AR teacher (or converted model); None: a fresh small model."})
    id_scheme: str = field(default="single", metadata={"help": "Item ids: semantic, single or plain (match the teacher's)."})
    max_train_queries: int | None = field(default=2000, metadata={"help": "Training queries (None: all)."})
    max_eval_queries: int = field(default=64, metadata={"help": "Validation queries evaluated before and after."})
    hidden_size: int = field(default=128, metadata={"help": "Hidden size of a fresh model."})
    num_layers: int = field(default=2, metadata={"help": "Layers of a fresh model."})
    vocab_size: int = field(default=2000, metadata={"help": "BPE vocabulary of a fresh offline tokenizer."})
    threshold: float = field(default=0.9, metadata={"help": "Confidence threshold of the block sampler in evaluation."})
    eval_max_new_tokens: int = field(default=256, metadata={"help": "Decoding budget of the evaluation."})
    eval_batch_size: int = field(default=16, metadata={"help": "Prompts decoded together in the evaluation."})
    skip_naive_eval: bool = field(default=False, metadata={"help": "Do not evaluate the naive conversion first."})


CPU_DEFAULTS = dict(
    output_dir="outputs/cft", per_device_train_batch_size=8, max_steps=150, learning_rate=1e-3,
    lr_scheduler_type="cosine", warmup_steps=20, logging_steps=10, save_strategy="no", report_to="none",
    gradient_checkpointing=False, max_length=1024, seed=0, block_size=16,
    valid_rate_num_prompts=16, valid_rate_max_new_tokens=256,
)  # fmt: skip


def load_model_and_tokenizer(args: ScriptArguments, data):
    if args.model_name_or_path:
        return AutoModelForCausalLM.from_pretrained(args.model_name_or_path), AutoTokenizer.from_pretrained(args.model_name_or_path)
    tokenizer = train_rerank_tokenizer(data, vocab_size=args.vocab_size)
    model = tiny_causal_lm(
        len(tokenizer) + 1, hidden_size=args.hidden_size, num_layers=args.num_layers,
        intermediate_size=4 * args.hidden_size, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
    )  # fmt: skip
    return model, tokenizer


def block_metrics(trainer, script_args, dataset) -> dict:
    model = trainer.accelerator.unwrap_model(trainer.model).eval()
    sampler = BlockDiffusionSampler(model, trainer.processing_class, threshold=script_args.threshold)
    scores = evaluate_reranker(
        sampler, dataset, max_new_tokens=script_args.eval_max_new_tokens, batch_size=script_args.eval_batch_size
    )
    return {k: v for k, v in scores.items() if isinstance(v, (int, float)) and v is not None}


def main():
    parser = TrlParser((ScriptArguments, DiffusionSFTConfig))
    parser.set_defaults(**CPU_DEFAULTS, bf16=torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    script_args, training_args = parser.parse_args_and_config()
    data = build_rerank_datasets(
        id_scheme=script_args.id_scheme, max_train_queries=script_args.max_train_queries,
        max_eval_queries=script_args.max_eval_queries, seed=training_args.seed,
    )  # fmt: skip
    model, tokenizer = load_model_and_tokenizer(script_args, data)
    # the trainer converts an AR model with `block_size` (and keeps a converted model's settings)
    trainer = DiffusionSFTTrainer(
        model, args=training_args, train_dataset=data.train, eval_dataset=data.validation, processing_class=tokenizer
    )
    main_process = trainer.accelerator.is_main_process
    if main_process and not script_args.skip_naive_eval:
        naive = block_metrics(trainer, script_args, data.validation)
        trainer.log_metrics("naive_conversion", naive)
        trainer.save_metrics("naive_conversion", naive)
    trainer.train()
    trainer.evaluate()  # eval_loss and eval_valid_rate in the logs
    trainer.save_model(training_args.output_dir)
    tokenizer.save_pretrained(training_args.output_dir)
    if main_process:
        cft = block_metrics(trainer, script_args, data.validation)
        trainer.log_metrics("cft", cft)
        trainer.save_metrics("cft", cft)


if __name__ == "__main__":
    main()
