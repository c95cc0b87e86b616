"""On-policy distillation (OPD): the block-diffusion student decodes, the AR teacher scores its tokens.

A teacher is required: `--teacher_model_name_or_path PATH` (TRL's flag: a saved AR model, a `.gguf` file or
`smollm2`, scored in-process; e.g. the output of `examples/sft_ar.py`), or `--teacher_url http://127.0.0.1:8000` (a
vLLM server serving that AR model, see scripts/start_teacher_server.sh). Student: `--model_name_or_path` (a
converted model, e.g. the output of examples/cft.py; an AR model is converted with `--block_size`), else the
teacher converted with `--block_size`. `--dtype` and `--attn_implementation` apply to both (the teacher's
`--teacher_model_init_kwargs` override them). Data: `--dataset_name` (default: the bundled Amazon Beauty data).
Every `OnPolicyDistillConfig` and `ModelConfig` field can be set on the command line (or in a `--config` YAML
file); the defaults run on a CPU in a few minutes:

    python examples/sft_ar.py && accelerate launch examples/opd.py --teacher_model_name_or_path outputs/ar-teacher
    accelerate launch examples/opd.py --teacher_model_name_or_path outputs/ar-teacher --model_name_or_path outputs/cft
    scripts/start_teacher_server.sh outputs/ar-teacher 8000 &
    accelerate launch examples/opd.py --teacher_url http://127.0.0.1:8000 --model_name_or_path outputs/cft
    python examples/opd.py --teacher_model_name_or_path outputs/ar-teacher --model_name_or_path outputs/cft --use_peft

(`--teacher_model` is accepted as an older spelling of `--teacher_model_name_or_path`.) Logs `kl`, `valid_rate`,
`rollout/tokens_per_second`, `time/rollout_s`, `time/teacher_s`, `time/update_s`; saves model (or LoRA adapter) +
tokenizer to `output_dir`.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

from _common import RerankScriptArguments, device_defaults, load_pretrained, load_rerank_datasets, model_init_kwargs
from trl import ModelConfig, TrlParser, get_peft_config

from dgr2_trl.trainers import OnPolicyDistillConfig, OnPolicyDistillTrainer


@dataclass
class OPDScriptArguments(RerankScriptArguments):
    """The data arguments, plus an older spelling of the teacher flag."""

    teacher_model: str | None = field(
        default=None, metadata={"help": "Same as --teacher_model_name_or_path (the older spelling)."}
    )


CPU_DEFAULTS = dict(
    output_dir="outputs/opd", per_device_train_batch_size=1, num_rollouts_per_prompt=4, max_steps=10,
    learning_rate=1e-4, logging_steps=1, save_strategy="no", report_to="none",
    activation_checkpointing=False, max_completion_length=32, block_size=8, threshold=0.9, teacher_top_k=20, seed=0,
    max_train_queries=256, max_eval_queries=16,
)  # fmt: skip


def teacher_path(script_args: OPDScriptArguments, training_args: OnPolicyDistillConfig) -> str | None:
    """The teacher's path from TRL's `--teacher_model_name_or_path` or its older spelling `--teacher_model`."""
    path, alias = training_args.teacher_model_name_or_path, script_args.teacher_model
    if path is not None and alias is not None and path != alias:
        raise ValueError(f"--teacher_model {alias!r} and --teacher_model_name_or_path {path!r} disagree; pass one")
    return path or alias


def main(script_args: OPDScriptArguments, training_args: OnPolicyDistillConfig, model_args: ModelConfig):
    path = teacher_path(script_args, training_args)
    served = training_args.teacher_url is not None
    if path is None and not served:
        raise ValueError(
            "opd.py needs a teacher: --teacher_model_name_or_path PATH (a saved AR model, e.g. outputs/ar-teacher "
            "from examples/sft_ar.py) or --teacher_url URL (a vLLM server serving it, see "
            "scripts/start_teacher_server.sh)"
        )
    if path is None and not model_args.model_name_or_path:
        raise ValueError(
            "--teacher_url needs --model_name_or_path (the student) or --teacher_model_name_or_path (the served "
            "model's path, converted into the student)"
        )
    training_args.teacher_model_name_or_path = path
    data = load_rerank_datasets(script_args, seed=training_args.seed)

    teacher_kwargs = model_init_kwargs(model_args, training_args.teacher_model_init_kwargs)
    teacher = teacher_tokenizer = None
    if path is not None and not (served and model_args.model_name_or_path):
        teacher, teacher_tokenizer = load_pretrained(path, teacher_kwargs)
    if model_args.model_name_or_path:
        student, tokenizer = load_pretrained(
            model_args.model_name_or_path, model_init_kwargs(model_args, training_args.model_init_kwargs)
        )
    elif served:  # the teacher was loaded only to become the student
        student, tokenizer = teacher, teacher_tokenizer
    else:
        student, tokenizer = copy.deepcopy(teacher), copy.deepcopy(teacher_tokenizer)
    training_args.model_init_kwargs = None  # consumed: the trainer gets model objects
    # the trainer converts an AR student with `block_size` (and keeps a converted student's settings)

    columns = [c for c in ("prompt", "candidates") if c in data.train.column_names]
    trainer = OnPolicyDistillTrainer(
        student, None if served else teacher, args=training_args, train_dataset=data.train.select_columns(columns),
        processing_class=tokenizer, peft_config=get_peft_config(model_args),
    )  # fmt: skip
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.accelerator.print("Training completed.")
    trainer.save_model(training_args.output_dir)
    tokenizer.save_pretrained(training_args.output_dir)
    trainer.accelerator.print(f"Model saved to {training_args.output_dir}.")


def make_parser() -> TrlParser:
    parser = TrlParser((OPDScriptArguments, OnPolicyDistillConfig, ModelConfig))
    parser.set_defaults(**CPU_DEFAULTS, **device_defaults())
    return parser


if __name__ == "__main__":
    main(*make_parser().parse_args_and_config())
