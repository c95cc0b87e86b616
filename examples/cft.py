"""Conversion fine-tuning (CFT): turn the AR re-ranker into a block-diffusion re-ranker with `DiffusionSFTTrainer`.

Starts from `--model_name_or_path` (a saved AR teacher, e.g. the output of `examples/sft_ar.py`, an already converted
model, a `.gguf` file or `smollm2`) or, when none is given, from a fresh small Qwen3 built from a config. Data:
`--dataset_name` (a two-file folder, a saved dataset or local data files; default: the bundled Amazon Beauty data).
The defaults run on a CPU in a few minutes; every `DiffusionSFTConfig` and `ModelConfig` field can be set on the
command line (or in a `--config` YAML file):

    python examples/sft_ar.py && python examples/cft.py --model_name_or_path outputs/ar-teacher
    accelerate launch examples/cft.py --model_name_or_path outputs/ar-teacher --block_size 8 --complementary_masking
    python examples/cft.py --model_name_or_path outputs/ar-teacher --use_peft --lora_r 16 --output_dir outputs/cft-lora
    python examples/cft.py --save_strategy steps --save_steps 50         # checkpoints every 50 steps, then:
    python examples/cft.py --resume_from_checkpoint outputs/cft/checkpoint-50

Logs the loss, `mask_ratio`, the evaluation (`eval_loss`, and `eval_valid_rate` from a `ValidRateCallback` on the
first `--valid_rate_num_prompts` eval prompts, 0 to skip it; printed and saved to `eval_results.json`) and the block-diffusion validation metrics (`valid_rate`, R@1, ...) of the naive conversion
(before training, `naive_conversion_results.json`) and of the fine-tuned model (`cft_results.json`); saves model (or
LoRA adapter) + tokenizer, with the block settings in `config.json`, to `output_dir`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from _common import RerankScriptArguments, device_defaults, load_model_and_tokenizer, load_rerank_datasets
from trl import ModelConfig, TrlParser, get_peft_config

from dgr2_trl.data import RANKING_ANSWER_PREFIX
from dgr2_trl.evaluation import evaluate_reranker
from dgr2_trl.samplers import BlockDiffusionSampler
from dgr2_trl.trainers import DiffusionSFTConfig, DiffusionSFTTrainer, ValidRateCallback


@dataclass
class CFTScriptArguments(RerankScriptArguments):
    """The data and small-model arguments, the block-diffusion evaluation run before and after training, and the
    valid-rate probe of every evaluation (`ValidRateCallback`)."""

    threshold: float = field(default=0.9, metadata={"help": "Confidence threshold of the block sampler (evaluation)."})
    eval_max_new_tokens: int = field(default=256, metadata={"help": "Decoding budget of the evaluation."})
    eval_batch_size: int = field(default=16, metadata={"help": "Prompts decoded together in the evaluation."})
    skip_naive_eval: bool = field(default=False, metadata={"help": "Do not evaluate the naive conversion first."})
    valid_rate_num_prompts: int = field(
        default=16, metadata={"help": "Eval prompts decoded at each evaluation to log eval_valid_rate (0: no probe)."}
    )
    valid_rate_max_new_tokens: int = field(default=256, metadata={"help": "Decoding budget of the valid-rate probe."})
    valid_rate_threshold: float = field(default=0.9, metadata={"help": "Sampler threshold of the valid-rate probe."})
    valid_rate_batch_size: int = field(default=16, metadata={"help": "Prompts decoded together by the probe."})


CPU_DEFAULTS = dict(
    output_dir="outputs/cft", per_device_train_batch_size=8, max_steps=150, learning_rate=1e-3,
    lr_scheduler_type="cosine", warmup_steps=20, logging_steps=10, save_strategy="no", report_to="none",
    activation_checkpointing=False, max_length=1024, seed=0, block_size=16, max_train_queries=2000,
    # the ranking task's answer (from '{"ranking"' on) weighs twice the reasoning, as in the paper and the recipe
    answer_prefix=RANKING_ANSWER_PREFIX, answer_weight=2.0,
)  # fmt: skip


def block_metrics(trainer, script_args: CFTScriptArguments, dataset) -> dict:
    model = trainer.accelerator.unwrap_model(trainer.model).eval()
    sampler = BlockDiffusionSampler(model, trainer.processing_class, threshold=script_args.threshold)
    scores = evaluate_reranker(
        sampler, dataset, max_new_tokens=script_args.eval_max_new_tokens, batch_size=script_args.eval_batch_size
    )
    return {k: v for k, v in scores.items() if isinstance(v, (int, float)) and v is not None}


def main(script_args: CFTScriptArguments, training_args: DiffusionSFTConfig, model_args: ModelConfig):
    data = load_rerank_datasets(script_args, seed=training_args.seed)
    model, tokenizer = load_model_and_tokenizer(model_args, training_args, data, script_args)
    # the trainer converts an AR model with `block_size` (and keeps a converted model's settings)
    trainer = DiffusionSFTTrainer(
        model, args=training_args, train_dataset=data.train, eval_dataset=data.eval, processing_class=tokenizer,
        peft_config=get_peft_config(model_args),
    )  # fmt: skip
    if data.eval is not None and script_args.valid_rate_num_prompts > 0:
        trainer.add_callback(
            ValidRateCallback(
                trainer,
                num_prompts=script_args.valid_rate_num_prompts,
                max_new_tokens=script_args.valid_rate_max_new_tokens,
                threshold=script_args.valid_rate_threshold,
                batch_size=script_args.valid_rate_batch_size,
            )
        )
    main_process = trainer.accelerator.is_main_process
    if main_process and data.eval is not None and not script_args.skip_naive_eval:
        naive = block_metrics(trainer, script_args, data.eval)
        trainer.log_metrics("naive_conversion", naive)
        trainer.save_metrics("naive_conversion", naive)

    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.accelerator.print("Training completed.")

    if data.eval is not None:
        metrics = trainer.evaluate()  # eval_loss, and eval_valid_rate from the callback
        trainer.log_metrics("eval", metrics)
        trainer.save_metrics("eval", metrics)
    trainer.save_model(training_args.output_dir)
    tokenizer.save_pretrained(training_args.output_dir)
    trainer.accelerator.print(f"Model saved to {training_args.output_dir}.")
    if main_process and data.eval is not None:
        cft = block_metrics(trainer, script_args, data.eval)
        trainer.log_metrics("cft", cft)
        trainer.save_metrics("cft", cft)


def make_parser() -> TrlParser:
    parser = TrlParser((CFTScriptArguments, DiffusionSFTConfig, ModelConfig))
    parser.set_defaults(**CPU_DEFAULTS, **device_defaults())
    return parser


if __name__ == "__main__":
    main(*make_parser().parse_args_and_config())
