"""On-policy distillation (OPD): the block-diffusion student decodes, the AR teacher scores its tokens.

Teacher: `--teacher_model PATH` (a saved AR model, scored in-process), or `--teacher_url http://127.0.0.1:8000`
(a vLLM server serving that AR model, see scripts/start_teacher_server.sh), or, when neither is given, a fresh
small Qwen3 built from a config (only useful to try the pipeline). Student: `--model_name_or_path` (a converted
model, e.g. the output of examples/cft.py), else the teacher converted with `--block_size`. Every
`OnPolicyDistillConfig` field can be overridden on the command line; the defaults run on a CPU in a few minutes:

    accelerate launch examples/opd.py
    accelerate launch examples/opd.py --teacher_model outputs/ar-teacher --model_name_or_path outputs/cft
    scripts/start_teacher_server.sh outputs/ar-teacher 8000 &
    accelerate launch examples/opd.py --teacher_url http://127.0.0.1:8000 --model_name_or_path outputs/cft

Logs `kl`, `valid_rate`, `rollout/tokens_per_second`, `time/rollout_s`, `time/teacher_s`, `time/update_s`; saves
model + tokenizer to `output_dir`.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import TrlParser

from dgr2_trl.data import build_rerank_datasets, train_rerank_tokenizer
from dgr2_trl.modeling import convert_to_block_diffusion, get_block_diffusion_settings, tiny_causal_lm
from dgr2_trl.trainers.opd_config import OnPolicyDistillConfig
from dgr2_trl.trainers.opd_trainer import OnPolicyDistillTrainer


@dataclass
class ScriptArguments:
    model_name_or_path: str | None = field(default=None, metadata={"help": "Converted student; None: the teacher converted."})
    teacher_model: str | None = field(default=None, metadata={"help": "Saved AR teacher; None: a fresh small model."})
    id_scheme: str = field(default="single", metadata={"help": "Item ids: semantic, single or plain (match the teacher's)."})
    max_train_queries: int | None = field(default=256, metadata={"help": "Training queries (None: all)."})
    hidden_size: int = field(default=64, metadata={"help": "Hidden size of a fresh teacher."})
    num_layers: int = field(default=2, metadata={"help": "Layers of a fresh teacher."})
    vocab_size: int = field(default=2000, metadata={"help": "BPE vocabulary of a fresh offline tokenizer."})


CPU_DEFAULTS = dict(
    output_dir="outputs/opd", per_device_train_batch_size=1, num_rollouts_per_prompt=4, max_steps=10,
    learning_rate=1e-4, logging_steps=1, save_strategy="no", report_to="none", bf16=False,
    gradient_checkpointing=False, max_completion_length=32, block_size=8, threshold=0.9, teacher_top_k=20, seed=0,
)  # fmt: skip


def load_teacher(args: ScriptArguments, data):
    if args.teacher_model:
        return AutoModelForCausalLM.from_pretrained(args.teacher_model), AutoTokenizer.from_pretrained(args.teacher_model)
    tokenizer = train_rerank_tokenizer(data, vocab_size=args.vocab_size)
    # head_dim 32 (hidden / 2 heads): a size vLLM's CPU attention supports, should this teacher be served
    model = tiny_causal_lm(
        len(tokenizer), hidden_size=args.hidden_size, num_layers=args.num_layers, num_heads=2, num_kv_heads=1,
        intermediate_size=4 * args.hidden_size, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
    )  # fmt: skip
    return model, tokenizer


def main():
    parser = TrlParser((ScriptArguments, OnPolicyDistillConfig))
    parser.set_defaults(**CPU_DEFAULTS)
    script_args, training_args = parser.parse_args_and_config()
    data = build_rerank_datasets(
        id_scheme=script_args.id_scheme, max_train_queries=script_args.max_train_queries, max_eval_queries=16,
        seed=training_args.seed,
    )  # fmt: skip
    served = training_args.teacher_url is not None
    if script_args.model_name_or_path:
        student = AutoModelForCausalLM.from_pretrained(script_args.model_name_or_path)
        tokenizer = AutoTokenizer.from_pretrained(script_args.model_name_or_path)
        if get_block_diffusion_settings(student) is None:
            student, tokenizer = convert_to_block_diffusion(student, tokenizer, training_args.block_size or 32)
        teacher = None if served else load_teacher(script_args, data)[0]
    else:
        if served and not script_args.teacher_model:
            raise SystemExit("--teacher_url needs --model_name_or_path or --teacher_model (the served model's path) "
                             "to build the student from")
        teacher, teacher_tokenizer = load_teacher(script_args, data)
        student, tokenizer = convert_to_block_diffusion(
            copy.deepcopy(teacher), copy.deepcopy(teacher_tokenizer), training_args.block_size or 32
        )
        teacher = None if served else teacher
    trainer = OnPolicyDistillTrainer(
        student, teacher, args=training_args, train_dataset=data.train.select_columns(["prompt", "candidates"]),
        processing_class=tokenizer,
    )
    trainer.train()
    trainer.save_model(training_args.output_dir)
    tokenizer.save_pretrained(training_args.output_dir)


if __name__ == "__main__":
    main()
