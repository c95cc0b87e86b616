"""Train the AR re-ranker (the teacher of the later stages) with TRL's plain `SFTTrainer`.

Data: `--dataset_name` (a two-file folder, a saved dataset or local data files; default: the bundled Amazon Beauty
re-ranking data, prompt / completion = reasoning trace + JSON ranking). Model: `--model_name_or_path` (a local
folder, a `.gguf` file or `smollm2`) or, by default, a small Qwen3 built from a config with an offline tokenizer. The
defaults run on a CPU in a few minutes; every `SFTConfig` and `ModelConfig` field can be set on the command line (or
in a `--config` YAML file):

    python examples/sft_ar.py
    accelerate launch examples/sft_ar.py --max_steps 2000 --hidden_size 256 --output_dir outputs/ar-teacher
    python examples/sft_ar.py --model_name_or_path PATH --use_peft --lora_r 16 --output_dir outputs/ar-lora
    python examples/sft_ar.py --save_strategy steps --save_steps 50      # checkpoints every 50 steps, then:
    python examples/sft_ar.py --resume_from_checkpoint outputs/ar-teacher/checkpoint-50

Saves model (or LoRA adapter) + tokenizer to `output_dir`, then logs the validation metrics of greedy AR decoding
(`valid_rate`, R@1, R@3, NDCG@3/5; invalid answers fall back to the pre-ranker order) and saves them to
`ar_eval_results.json`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from _common import RerankScriptArguments, device_defaults, load_model_and_tokenizer, load_rerank_datasets
from trl import ModelConfig, SFTConfig, SFTTrainer, TrlParser, get_peft_config

from dgr2_trl.evaluation import evaluate_reranker
from dgr2_trl.samplers import ARSampler


@dataclass
class SFTScriptArguments(RerankScriptArguments):
    """The data and small-model arguments, plus the greedy AR evaluation run after training."""

    eval_max_new_tokens: int = field(default=256, metadata={"help": "Decoding budget of the final evaluation."})
    eval_batch_size: int = field(default=16, metadata={"help": "Prompts decoded together in the final evaluation."})


CPU_DEFAULTS = dict(
    output_dir="outputs/ar-teacher", per_device_train_batch_size=8, max_steps=150, learning_rate=3e-3,
    lr_scheduler_type="cosine", warmup_steps=20, logging_steps=10, save_strategy="no", report_to="none",
    activation_checkpointing=False, max_length=1024, seed=0, max_train_queries=2000,
)  # fmt: skip


def main(script_args: SFTScriptArguments, training_args: SFTConfig, model_args: ModelConfig):
    data = load_rerank_datasets(script_args, seed=training_args.seed)
    model, tokenizer = load_model_and_tokenizer(model_args, training_args, data, script_args)
    trainer = SFTTrainer(
        model, args=training_args, train_dataset=data.train, processing_class=tokenizer,
        peft_config=get_peft_config(model_args),
    )  # fmt: skip
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.accelerator.print("Training completed.")
    trainer.save_model(training_args.output_dir)
    tokenizer.save_pretrained(training_args.output_dir)
    trainer.accelerator.print(f"Model saved to {training_args.output_dir}.")

    if trainer.accelerator.is_main_process and data.eval is not None:
        unwrapped = trainer.accelerator.unwrap_model(trainer.model).eval()
        scores = evaluate_reranker(
            ARSampler(unwrapped, tokenizer), data.eval, max_new_tokens=script_args.eval_max_new_tokens,
            batch_size=script_args.eval_batch_size,
        )  # fmt: skip
        flat = {k: v for k, v in scores.items() if isinstance(v, (int, float)) and v is not None}
        trainer.log_metrics("ar_eval", flat)
        trainer.save_metrics("ar_eval", flat)


def make_parser() -> TrlParser:
    parser = TrlParser((SFTScriptArguments, SFTConfig, ModelConfig))
    parser.set_defaults(**CPU_DEFAULTS, **device_defaults())
    return parser


if __name__ == "__main__":
    main(*make_parser().parse_args_and_config())
