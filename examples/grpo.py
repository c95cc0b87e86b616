"""RL stage: GRPO/DAPO on a block-diffusion re-ranker with trajectory-replay log-probs.

Out of the box (CPU, a few minutes): bundled Amazon Beauty re-ranking prompts, a small model built from a config
(converted to block diffusion), the default reward (rank promotion + 0.2 x conditional format, -1 if invalid).
Start from a CFT or OPD checkpoint with `--model_name_or_path PATH` (a folder with model + tokenizer).

    accelerate launch examples/grpo.py --max_steps 20 --output_dir outputs/grpo
    python examples/grpo.py --model_name_or_path outputs/opd --threshold 0.9 --num_generations 8
"""

from __future__ import annotations

from dataclasses import dataclass, field

from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import TrlParser

from dgr2_trl.data import build_rerank_datasets, train_rerank_tokenizer
from dgr2_trl.modeling import tiny_causal_lm
from dgr2_trl.trainers.diffusion_grpo_config import DiffusionGRPOConfig
from dgr2_trl.trainers.diffusion_grpo_trainer import DiffusionGRPOTrainer


@dataclass
class ScriptArguments:
    model_name_or_path: str | None = field(
        default=None, metadata={"help": "A saved CFT/OPD (or AR) model with its tokenizer. None: a small model."}
    )
    id_scheme: str = field(default="single", metadata={"help": "Item ids: semantic, single or plain."})
    max_train_queries: int = field(default=256, metadata={"help": "Training queries (prompts) to use."})
    max_eval_queries: int = field(default=64, metadata={"help": "Validation queries to evaluate on."})


def main():
    parser = TrlParser((ScriptArguments, DiffusionGRPOConfig))
    script, args = parser.parse_args_and_config()
    data = build_rerank_datasets(id_scheme=script.id_scheme, max_train_queries=script.max_train_queries,
                                 max_eval_queries=script.max_eval_queries, seed=args.seed)
    if script.model_name_or_path:
        tokenizer = AutoTokenizer.from_pretrained(script.model_name_or_path)
        model = AutoModelForCausalLM.from_pretrained(script.model_name_or_path)
    else:
        tokenizer = train_rerank_tokenizer(data)
        model = tiny_causal_lm(len(tokenizer) + 1, "qwen3", hidden_size=128, num_layers=4, seed=args.seed)
    trainer = DiffusionGRPOTrainer(model, args=args, train_dataset=data.train, processing_class=tokenizer)
    trainer.train()
    trainer.save_model(args.output_dir)
    tokenizer.save_pretrained(args.output_dir)


if __name__ == "__main__":
    main()
