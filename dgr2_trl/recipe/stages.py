"""The recipe's stages: AR teacher SFT -> naive conversion -> CFT -> OPD -> RL, each saved and evaluated.

Each stage writes `<output_dir>/<stage>/` (model + tokenizer + `metrics.json`); a stage whose `metrics.json`
exists is loaded instead of re-run, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import copy
import json
import logging
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import ModelConfig, SFTConfig, SFTTrainer, get_peft_config

from ..data import RANKING_ANSWER_PREFIX, align_answers_to_blocks, build_rerank_datasets, train_rerank_tokenizer
from ..evaluation import evaluate_prerank_floor, evaluate_reranker, write_jsonl
from ..modeling import convert_to_block_diffusion, tiny_causal_lm
from ..modeling.pretrained import load_causal_lm, load_tokenizer
from ..samplers import ARSampler, BlockDiffusionSampler, SpeculativeSampler, UniqueTokens
from ..teachers import teacher_completion_dataset
from .presets import RecipePreset


logger = logging.getLogger(__name__)
STAGES = ("ar", "naive", "cft", "opd", "rl")


def check_stage_order(output_dir: str | Path, stages) -> None:
    """Fail before any work if a requested stage would start without the stages it loads: every stage before it
    must be finished in `output_dir` (its `metrics.json`) or requested earlier in `stages`."""
    done = {s for s in STAGES if (Path(output_dir) / s / "metrics.json").exists()}
    for stage in stages:
        if stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r}; expected some of {STAGES}, in that order")
        missing = [s for s in STAGES[: STAGES.index(stage)] if s not in done]
        if missing:
            raise ValueError(
                f"stage {stage!r} needs the finished stage(s) {missing} in {output_dir} (no metrics.json there); "
                f"run them first, e.g. --stages {' '.join(missing + [stage])}"
            )
        done.add(stage)


def common_args(
    preset: RecipePreset, stage_dir: Path, steps: int, learning_rate: float, cpu_bf16: bool = False
) -> dict:
    """TRL arguments shared by the stages; `cpu_bf16` trains under bf16 autocast on a CPU as well."""
    on_gpu = torch.cuda.is_available()
    return dict(
        output_dir=str(stage_dir),
        max_steps=steps,
        learning_rate=learning_rate,
        per_device_train_batch_size=preset.batch_size,
        lr_scheduler_type="cosine",
        warmup_steps=min(20, steps // 10),
        logging_steps=max(1, min(10, steps // 10)),
        save_strategy="no",
        report_to="none",
        seed=preset.seed,
        bf16=(on_gpu and torch.cuda.is_bf16_supported()) or (not on_gpu and cpu_bf16),
        use_cpu=not on_gpu,
        gradient_checkpointing=False,
        dataloader_num_workers=0,
    )


def rollout_args(preset: RecipePreset) -> dict:
    """How OPD and RL rollouts decode (the trainers' shared sampler fields)."""
    return dict(
        threshold=preset.rollout_threshold,
        fallback=preset.rollout_fallback,
        max_completion_length=preset.max_new_tokens,
        max_steps_per_block=preset.rollout_max_steps_per_block,
    )


def lora_config(preset: RecipePreset, train_embeddings: bool = False):
    """The stages' LoRA adapter (all linear layers but the LM head, of the decoder layers in `preset.lora_layers`
    or all of them) through TRL's `get_peft_config`, or None without `use_peft`; `train_embeddings` also trains the
    input embeddings and the LM head in full (`modules_to_save`)."""
    config = get_peft_config(
        ModelConfig(
            use_peft=preset.use_peft,
            lora_r=preset.lora_r,
            lora_alpha=preset.lora_alpha,
            lora_dropout=0.0,
            lora_target_modules="all-linear",
            lora_modules_to_save=["embed_tokens", "lm_head"] if train_embeddings else None,
        )
    )
    if config is not None and preset.lora_layers is not None:
        # TRL's ModelConfig has no field for it; PEFT matches the index after `layers.` in the module name
        config.layers_to_transform = list(preset.lora_layers)
        config.layers_pattern = "layers"
    return config


def trained_model(trainer):
    """The trainer's model, unwrapped, with a LoRA adapter merged into its weights (a dense model to save)."""
    model = trainer.accelerator.unwrap_model(trainer.model)
    return model.merge_and_unload() if hasattr(model, "merge_and_unload") else model


def data_settings(preset: RecipePreset) -> dict:
    """The preset's arguments to `build_rerank_datasets` that shape the prompts and the training queries (the
    number of evaluation queries is left to the caller)."""
    return dict(
        data=preset.data_dir,
        id_scheme=preset.id_scheme,
        history_length=preset.history_length,
        max_title_words=preset.max_title_words,
        prompt_style=preset.prompt_style,
        trace_style=preset.trace_style,
        insert_target_fraction=preset.insert_target_fraction,
        target_order=preset.target_order,
        candidate_title_words=preset.candidate_title_words,
        promote_top=preset.promote_top,
        max_train_queries=preset.max_train_queries,
        seed=preset.seed,
    )


class Recipe:
    """Runs the stages of one preset into `output_dir`."""

    def __init__(self, preset: RecipePreset, output_dir: str | Path):
        self.preset = preset
        self.output_dir = Path(output_dir)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(preset.seed)
        start = time.perf_counter()
        self.data = build_rerank_datasets(**data_settings(preset), max_eval_queries=preset.max_eval_queries)
        self.test = self.data.test
        logger.info(
            "data built in %.1fs: %d train, %d test queries",
            time.perf_counter() - start,
            len(self.data.train),
            len(self.test),
        )
        self.tokenizer = self._tokenizer()
        self.timings: dict[str, float] = {}
        # where evaluation and the frontier decode; training goes where TRL's accelerator puts it (the same GPU)
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")

    # ------------------------------------------------------------------------------------------------ helpers
    def _tokenizer(self):
        path = self.output_dir / "tokenizer"
        if path.exists():
            return AutoTokenizer.from_pretrained(path)
        if self.preset.model_name_or_path is None:
            tokenizer = train_rerank_tokenizer(self.data, vocab_size=self.preset.tokenizer_vocab_size)
        else:
            tokenizer = load_tokenizer(self.preset.model_name_or_path, gguf_file=self.preset.gguf_file)
            if self.preset.add_data_tokens:
                tokenizer.add_tokens(self.data.special_tokens)
        tokenizer.padding_side = "left"
        tokenizer.save_pretrained(path)
        return tokenizer

    def _fresh_model(self):
        p = self.preset
        if p.model_name_or_path is None:
            return tiny_causal_lm(
                len(self.tokenizer) + 1,
                "qwen3",
                hidden_size=p.hidden_size,
                num_layers=p.num_layers,
                num_heads=p.num_heads,
                num_kv_heads=p.num_kv_heads,
                intermediate_size=4 * p.hidden_size,
                seed=p.seed,
                pad_token_id=self.tokenizer.pad_token_id,
                eos_token_id=self.tokenizer.eos_token_id,
            )
        model = load_causal_lm(p.model_name_or_path, gguf_file=p.gguf_file)
        model.resize_token_embeddings(len(self.tokenizer) + 1)
        return model

    def peft_config(self):
        """`lora_config` for a stage. A pretrained model's embeddings and LM head are trained in full as well when
        the recipe added tokens (`add_data_tokens`): the rows of those tokens (item and evidence tokens, the mask token) start random, and LoRA alone
        cannot train them. (PEFT's `trainable_token_indices`, which trains only those rows, breaks TRL 1.16's fused
        LM head in `SFTTrainer` on a model with tied embeddings: `'TrainableTokensWrapper' object has no attribute
        'bias'`.) The merged model comes out with untied embeddings."""
        pretrained = self.preset.model_name_or_path is not None
        return lora_config(self.preset, train_embeddings=pretrained and self.preset.add_data_tokens)

    def ranking_constraint(self, id_slots: bool = True) -> UniqueTokens:
        """Distinct candidate ids in the answer (`UniqueTokens.for_ranking`): every candidate id of the data, the
        answer's opening tokens (and with `id_slots` its separator and end token) read off a training completion."""
        ids = {
            c
            for split in (self.data.train, self.data.validation, self.test)
            for row in split["candidates"]
            for c in row
        }
        example = self.data.train[0]["completion"]
        example = example[-1]["content"] if isinstance(example, list) else example
        return UniqueTokens.for_ranking(self.tokenizer, sorted(ids), example, id_slots=id_slots)

    def stage_dir(self, stage: str) -> Path:
        return self.output_dir / stage

    def done(self, stage: str) -> bool:
        return (self.stage_dir(stage) / "metrics.json").exists()

    def load(self, stage: str, dtype: torch.dtype | None = None):
        """A stage's model on the evaluation device, in its saved dtype or `dtype`."""
        return AutoModelForCausalLM.from_pretrained(self.stage_dir(stage), dtype=dtype).to(self.device).eval()

    def save(self, stage: str, model, metrics: dict) -> dict:
        directory = self.stage_dir(stage)
        model.save_pretrained(directory)
        self.tokenizer.save_pretrained(directory)
        metrics = {**metrics, "train_seconds": self.timings.get(stage)}
        (directory / "metrics.json").write_text(json.dumps(metrics, indent=2))
        return metrics

    def evaluate(
        self,
        model,
        block: bool,
        threshold: float | None = None,
        batch_size: int | None = None,
        max_queries: int | None = None,
        fallback: str | None = None,
        split: str = "test",
        rows_stage: str | None = None,
        sampler=None,
        constraint: UniqueTokens | None = None,
        keep_rows: bool = False,
        rows_prefix: str = "",
    ) -> dict:
        """Decode `split`'s queries and score them; with `rows_stage`, each query's output goes to
        `<rows_stage>/<rows_prefix><split>_rows.jsonl` (user id, candidates, target, ranking used, valid, completion
        text), with `keep_rows` to the result's `rows`. A `sampler` given decodes instead of the one `model`/`block` name (e.g.
        a `SpeculativeSampler`); a `constraint` (`ranking_constraint()`) is passed to the sampler built here."""
        model = model.to(self.device).eval()
        if sampler is not None:
            pass
        elif block:
            sampler = BlockDiffusionSampler(
                model,
                self.tokenizer,
                threshold=threshold or self.preset.eval_threshold,
                fallback=fallback or self.preset.eval_fallback,
                constraint=constraint,
            )
        else:
            sampler = ARSampler(model, self.tokenizer, constraint=constraint)
        dataset = {"test": self.test, "validation": self.data.validation}[split]
        result = evaluate_reranker(
            sampler,
            dataset,
            max_new_tokens=self.preset.max_new_tokens,
            batch_size=batch_size or self.preset.eval_batch_size,
            max_queries=max_queries,
            return_rows=rows_stage is not None or keep_rows,
        )
        if rows_stage is not None:
            rows = result["rows"] if keep_rows else result.pop("rows")
            columns = dataset.select_columns(["user_id", "candidates", "target"])
            write_jsonl(
                self.stage_dir(rows_stage) / f"{rows_prefix}{split}_rows.jsonl",
                [
                    {
                        "user_id": c["user_id"],
                        "candidates": c["candidates"],
                        "target": c["target"],
                        "ranking": r["ranking"],
                        "valid": r["valid"],
                        "text": r["text"],
                    }
                    for c, r in zip(columns, rows)
                ],
            )
        return result

    def eval_constraint(self) -> UniqueTokens | None:
        """The constraint every evaluation decodes under (`preset.eval_constraint`), built once."""
        if not self.preset.eval_constraint:
            return None
        if getattr(self, "_eval_constraint", None) is None:
            self._eval_constraint = self.ranking_constraint()
        return self._eval_constraint

    def evaluate_stage(self, model, stage: str, block: bool, max_queries=None, split: str = "test") -> dict:
        """A stage's scores as the preset asks: at `eval_threshold`, under the ranking constraint with
        `eval_constraint` (rows in `<stage>/<split>_rows.jsonl`), and then free at `free_eval_threshold` as well
        (its scores under `"free"`, rows in `<stage>/free-<split>_rows.jsonl`)."""
        p = self.preset
        metrics = self.evaluate(
            model, block, max_queries=max_queries, split=split, rows_stage=stage, constraint=self.eval_constraint()
        )
        metrics["constrained"] = p.eval_constraint
        if p.eval_constraint and p.free_eval_threshold is not None:
            metrics["free"] = self.evaluate(
                model,
                block,
                threshold=p.free_eval_threshold,
                max_queries=max_queries,
                split=split,
                rows_stage=stage,
                rows_prefix="free-",
            )
            metrics["free"]["threshold"] = p.free_eval_threshold if block else None
        return metrics

    # ------------------------------------------------------------------------------------------------ stages
    def run_ar(self):
        p = self.preset
        model = self._fresh_model()
        options = common_args(p, self.stage_dir("ar"), p.ar_steps, p.ar_learning_rate, cpu_bf16=p.bf16_on_cpu)
        options["per_device_train_batch_size"] = p.ar_batch_size
        args = SFTConfig(**options, max_length=2048)
        trainer = SFTTrainer(
            model,
            args=args,
            train_dataset=self.data.train,
            processing_class=self.tokenizer,
            peft_config=self.peft_config(),
        )
        start = time.perf_counter()
        trainer.train()
        self.timings["ar"] = time.perf_counter() - start
        model = trained_model(trainer)
        metrics = self.evaluate_stage(model, "ar", block=False)
        if p.evaluate_validation:
            metrics["validation"] = self.evaluate_stage(model, "ar", block=False, split="validation")
        return self.save("ar", model, metrics)

    def run_naive(self):
        model, _ = convert_to_block_diffusion(
            self.load("ar"), copy.deepcopy(self.tokenizer), block_size=self.preset.block_size
        )
        self.timings["naive"] = 0.0
        return self.save(
            "naive",
            model,
            self.evaluate_stage(model, "naive", block=True, max_queries=self.preset.naive_eval_queries),
        )

    def run_cft(self):
        from ..trainers import DiffusionSFTConfig, DiffusionSFTTrainer

        p = self.preset
        args = DiffusionSFTConfig(
            **common_args(p, self.stage_dir("cft"), p.cft_steps, p.cft_learning_rate, cpu_bf16=p.bf16_on_cpu),
            block_size=p.block_size,
            max_length=2048,
            ar_loss_weight=p.cft_ar_loss_weight,
            answer_weight=p.cft_answer_weight,
            answer_prefix=RANKING_ANSWER_PREFIX,
            complementary_masking=p.cft_complementary_masking,
        )
        start = time.perf_counter()
        trainer = DiffusionSFTTrainer(
            self.load("naive"),
            args=args,
            train_dataset=self.cft_dataset(),
            processing_class=self.tokenizer,
            peft_config=self.peft_config(),
        )
        trainer.train()
        self.timings["cft"] = time.perf_counter() - start
        model = trained_model(trainer)
        return self.save(
            "cft", model, self.evaluate_stage(model, "cft", block=True, max_queries=p.diffusion_eval_queries)
        )

    def cft_dataset(self):
        """CFT's training rows: the data's completions, or the AR teacher's greedy answers (`cft_targets`); with
        `cft_align_answer`, each answer moved to the start of a block."""
        p = self.preset
        if p.cft_targets == "data":
            rows = self.data.train
        elif p.cft_targets == "teacher":
            rows = teacher_completion_dataset(
                ARSampler(self.load("ar"), self.tokenizer),
                self.data.train,
                max_new_tokens=p.max_new_tokens,
                batch_size=p.eval_batch_size,
                num_queries=p.cft_teacher_queries,
            )
        else:
            raise ValueError(f"cft_targets must be 'data' or 'teacher', got {p.cft_targets!r}")
        if p.cft_align_answer:
            rows = align_answers_to_blocks(rows, self.tokenizer, p.block_size, max_tokens=p.max_new_tokens)
        return rows

    def run_opd(self):
        from ..trainers.opd_config import OnPolicyDistillConfig
        from ..trainers.opd_trainer import OnPolicyDistillTrainer

        p = self.preset
        options = common_args(p, self.stage_dir("opd"), p.opd_steps, p.opd_learning_rate)
        options["per_device_train_batch_size"] = p.opd_prompts_per_step
        args = OnPolicyDistillConfig(
            **options,
            **rollout_args(p),
            num_rollouts_per_prompt=p.opd_rollouts_per_prompt,
            divergence=p.opd_divergence,
        )
        trainer = OnPolicyDistillTrainer(
            self.load("cft"),
            teacher_model=self.load("ar"),
            args=args,
            train_dataset=self.data.train,
            processing_class=self.tokenizer,
            peft_config=self.peft_config(),
        )
        start = time.perf_counter()
        trainer.train()
        self.timings["opd"] = time.perf_counter() - start
        model = trained_model(trainer)
        return self.save(
            "opd", model, self.evaluate_stage(model, "opd", block=True, max_queries=p.diffusion_eval_queries)
        )

    def run_rl(self):
        from ..trainers.diffusion_grpo_config import DiffusionGRPOConfig
        from ..trainers.diffusion_grpo_trainer import DiffusionGRPOTrainer

        p = self.preset
        options = common_args(p, self.stage_dir("rl"), p.rl_steps, p.rl_learning_rate)
        options["per_device_train_batch_size"] = p.rl_prompts_per_step * p.rl_num_generations
        args = DiffusionGRPOConfig(**options, **rollout_args(p), num_generations=p.rl_num_generations, temperature=1.0)
        # the rank-promotion reward is 0 for every answer when the true item is not among the candidates
        rows = self.data.train.filter(lambda row: row["target_in_candidates"])
        trainer = DiffusionGRPOTrainer(
            self.load("opd"),
            args=args,
            train_dataset=rows if len(rows) else self.data.train,
            processing_class=self.tokenizer,
            peft_config=self.peft_config(),
        )
        start = time.perf_counter()
        trainer.train()
        self.timings["rl"] = time.perf_counter() - start
        model = trained_model(trainer)
        return self.save(
            "rl", model, self.evaluate_stage(model, "rl", block=True, max_queries=p.diffusion_eval_queries)
        )

    def run_stage(self, stage: str) -> dict:
        if self.done(stage):
            logger.info("stage %s: already done, loading its metrics", stage)
            return json.loads((self.stage_dir(stage) / "metrics.json").read_text())
        logger.info("stage %s: running", stage)
        return getattr(self, f"run_{stage}")()

    def reevaluate(self, stage: str) -> dict:
        """Score a finished stage again with the preset's current evaluation settings (e.g. after a change to the
        ranking constraint), keeping its model and its training time; rewrites its `metrics.json` and rows."""
        if not self.done(stage):
            raise ValueError(f"stage {stage!r} is not finished in {self.output_dir}: nothing to re-evaluate")
        p, old = self.preset, json.loads((self.stage_dir(stage) / "metrics.json").read_text())
        model = self.load(stage)
        block = stage != "ar"
        limit = {"ar": None, "naive": p.naive_eval_queries}.get(stage, p.diffusion_eval_queries)
        metrics = self.evaluate_stage(model, stage, block=block, max_queries=limit)
        if stage == "ar" and p.evaluate_validation:
            metrics["validation"] = self.evaluate_stage(model, stage, block=False, split="validation")
        metrics = {**metrics, "train_seconds": old.get("train_seconds")}
        (self.stage_dir(stage) / "metrics.json").write_text(json.dumps(metrics, indent=2))
        return metrics

    def floor(self) -> dict:
        return evaluate_prerank_floor(self.test)

    def warm_up(self, ar_model, block_model) -> None:
        """Decode one query with each model, so no timed call pays for kernel selection, allocator or CUDA context."""
        self.evaluate(ar_model, block=False, batch_size=1, max_queries=1)
        self.evaluate(block_model, block=True, batch_size=1, max_queries=1)

    def frontier(self, stage: str = "rl") -> list[dict]:
        """Speed/quality frontier of the final model against AR decoding of the AR teacher (same size)."""
        path = self.output_dir / "frontier.json"
        if path.exists():
            return json.loads(path.read_text())
        p, rows = self.preset, []
        ar_model, final = self.load("ar"), self.load(stage)
        self.warm_up(ar_model, final)
        for batch_size in p.frontier_batch_sizes:
            limit = p.frontier_queries_batch1 if batch_size == 1 else p.frontier_max_queries
            ar = self.evaluate(ar_model, block=False, batch_size=batch_size, max_queries=limit)
            rows.append(_frontier_row("ar", None, batch_size, ar, ar))
            # free with each commit rule, then the block decoder as evaluated: under the ranking constraint,
            # against free AR (what a user of the AR re-ranker deploys)
            rules = [(fallback, None, fallback) for fallback in p.frontier_fallbacks]
            if p.eval_constraint:
                rules.append((p.eval_fallback, self.eval_constraint(), f"{p.eval_fallback}, distinct ids"))
            for fallback, constraint, label in rules:
                for threshold in p.frontier_thresholds:
                    scores = self.evaluate(
                        final,
                        block=True,
                        threshold=threshold,
                        batch_size=batch_size,
                        max_queries=limit,
                        fallback=fallback,
                        constraint=constraint,
                    )
                    rows.append(_frontier_row(stage, threshold, batch_size, scores, ar, label))
            if p.frontier_speculative:
                rows += self._speculative_rows(stage, ar_model, final, batch_size, limit, ar)
        path.write_text(json.dumps(rows, indent=2))
        return rows

    def _speculative_rows(self, stage, ar_model, final, batch_size, limit, ar) -> list[dict]:
        """The final model's own AR mode, then speculative decoding with the final model drafting and the AR
        teacher or that AR mode verifying: each writes exactly its verifier's output, faster."""
        p = self.preset
        own_ar = self.evaluate(final, block=False, batch_size=batch_size, max_queries=limit)
        rows = [_frontier_row(f"{stage} (AR mode)", None, batch_size, own_ar, ar, decoder="ar")]
        for name, verifier in (("teacher", ar_model), ("self", None)):
            sampler = SpeculativeSampler(
                final, self.tokenizer, verifier=verifier, threshold=p.speculative_threshold, fallback=p.eval_fallback
            )
            scores = self.evaluate(final, block=True, batch_size=batch_size, max_queries=limit, sampler=sampler)
            rows.append(
                _frontier_row(
                    f"speculative ({name})",
                    p.speculative_threshold,
                    batch_size,
                    scores,
                    ar,
                    p.eval_fallback,
                    decoder="speculative",
                )
            )
        return rows


def _frontier_row(
    model: str, threshold, batch_size: int, scores: dict, ar: dict, fallback: str | None = None, decoder=None
) -> dict:
    return {
        "model": model,
        "decoder": decoder or ("ar" if threshold is None else "block"),
        "threshold": threshold,
        "fallback": fallback,
        "batch_size": batch_size,
        "n": scores["n"],
        "tokens_per_second": scores["tokens_per_second"],
        "speedup_vs_ar": (scores["tokens_per_second"] / ar["tokens_per_second"]) if ar["tokens_per_second"] else None,
        "forward_passes_per_token": scores["forward_passes_per_token"],
        "recall@1": scores["recall@1"],
        "recall@3": scores["recall@3"],
        "ndcg@3": scores["ndcg@3"],
        "valid_rate": scores["valid_rate"],
    }
