"""Train the AR re-ranker (the teacher of the later stages) with TRL's plain `SFTTrainer`.

Data: the bundled Amazon Beauty re-ranking dataset (prompt / completion = reasoning trace + JSON ranking). Model: a
saved causal LM (`--model_name_or_path`) or, by default, a small Qwen3 built from a config with an offline tokenizer.
The defaults run on a CPU in a few minutes; every `SFTConfig` field can be overridden on the command line:

    python examples/sft_ar.py
    accelerate launch examples/sft_ar.py --max_steps 2000 --hidden_size 256 --output_dir outputs/ar-teacher

Saves model + tokenizer to `output_dir`, then logs the validation metrics of greedy AR decoding (`valid_rate`, R@1,
R@3, NDCG@3/5; invalid answers fall back to the pre-ranker order).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import SFTConfig, SFTTrainer, TrlParser

from dgr2_trl.data import build_rerank_datasets, train_rerank_tokenizer
from dgr2_trl.evaluation import evaluate_reranker
from dgr2_trl.modeling import tiny_causal_lm
from dgr2_trl.samplers import ARSampler


@dataclass
class ScriptArguments:
    model_name_or_path: str | None = field(default=None, metadata={"help": "Saved causal LM; None: a small model from a config."})
    id_scheme: str = field(default="single", metadata={"help": "Item ids: semantic, single or plain."})
    max_train_queries: int | None = field(default=2000, metadata={"help": "Training queries (None: all)."})
    max_eval_queries: int = field(default=64, metadata={"help": "Validation queries evaluated at the end."})
    hidden_size: int = field(default=128, metadata={"help": "Hidden size of the model built from a config."})
    num_layers: int = field(default=2, metadata={"help": "Layers of the model built from a config."})
    vocab_size: int = field(default=2000, metadata={"help": "BPE vocabulary of the offline tokenizer."})
    eval_max_new_tokens: int = field(default=256, metadata={"help": "Decoding budget of the final evaluation."})
    eval_batch_size: int = field(default=16, metadata={"help": "Prompts decoded together in the final evaluation."})


CPU_DEFAULTS = dict(
    output_dir="outputs/ar-teacher", per_device_train_batch_size=8, max_steps=150, learning_rate=3e-3,
    lr_scheduler_type="cosine", warmup_steps=20, logging_steps=10, save_strategy="no", report_to="none",
    gradient_checkpointing=False, max_length=1024, seed=0,
)  # fmt: skip


def load_model_and_tokenizer(args: ScriptArguments, data):
    if args.model_name_or_path:
        return AutoModelForCausalLM.from_pretrained(args.model_name_or_path), AutoTokenizer.from_pretrained(args.model_name_or_path)
    tokenizer = train_rerank_tokenizer(data, vocab_size=args.vocab_size)
    model = tiny_causal_lm(
        len(tokenizer) + 1,  # a spare row for the mask token of the later block-diffusion stages
        hidden_size=args.hidden_size, num_layers=args.num_layers, intermediate_size=4 * args.hidden_size,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
    )  # fmt: skip
    return model, tokenizer


def main():
    parser = TrlParser((ScriptArguments, SFTConfig))
    parser.set_defaults(**CPU_DEFAULTS, bf16=torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    script_args, training_args = parser.parse_args_and_config()
    data = build_rerank_datasets(
        id_scheme=script_args.id_scheme, max_train_queries=script_args.max_train_queries,
        max_eval_queries=script_args.max_eval_queries, seed=training_args.seed,
    )  # fmt: skip
    model, tokenizer = load_model_and_tokenizer(script_args, data)
    trainer = SFTTrainer(model, args=training_args, train_dataset=data.train, processing_class=tokenizer)
    trainer.train()
    trainer.save_model(training_args.output_dir)
    tokenizer.save_pretrained(training_args.output_dir)

    if trainer.accelerator.is_main_process:
        unwrapped = trainer.accelerator.unwrap_model(trainer.model).eval()
        scores = evaluate_reranker(
            ARSampler(unwrapped, tokenizer), data.validation, max_new_tokens=script_args.eval_max_new_tokens,
            batch_size=script_args.eval_batch_size,
        )  # fmt: skip
        flat = {k: v for k, v in scores.items() if isinstance(v, (int, float)) and v is not None}
        trainer.log_metrics("ar_eval", flat)
        trainer.save_metrics("ar_eval", flat)


if __name__ == "__main__":
    main()
