"""On-policy distillation (OPD) of a block-diffusion student from an AR teacher, on TRL's DistillationTrainer.

Written against TRL 1.16.0. Of `trl.DistillationTrainer` it keeps the whole training loop (generation-batch
dataloader with `RepeatSampler`, `_prepare_inputs` buffering one generation per gradient-accumulation window,
metric averaging in `log`, checkpointing) and fills the base's generation seam, `_generate_and_score_completions`,
with two public seams of its own, the ones a subclass overrides:

- `rollout(prompts) -> dict`: the student's completions, decoded by `BlockDiffusionSampler` (its own decoding,
  `num_rollouts_per_prompt` per prompt), with each token's denoising step for the replay; override it to change how
  completions are produced (as `DiffusionGRPOTrainer.rollout`);
- `score_with_teacher(prompt_ids, completion_ids, width) -> dict`: the teacher's top-k log-probs of those tokens,
  computed once per trajectory without grad (in-process HF model or vLLM server, see `dgr2_trl.teachers`).

`_generate_and_score_completions` only composes them: it pads the rollout into the batch tensors, times both steps
and logs the generation metrics. The loss is a further override of the base:

- `compute_loss`: per-token divergence between the teacher's top-k + tail bucket and the student's distribution on
  the same buckets, read in the state in which the student committed each token (trajectory replay), averaged over
  the completion tokens of the whole generation batch (like the base, so gradient accumulation = one large batch).

`training_step` is wrapped only to time the update apart from the rollout and teacher time.
"""

from __future__ import annotations

import time
from math import inf

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel
from trl import DistillationTrainer
from trl.trainer.utils import pad

from ..modeling.conversion import get_block_diffusion_settings
from ..modeling.pretrained import load_causal_lm, load_tokenizer
from ..samplers.block_diffusion import BlockDiffusionSampler
from ..samplers.common import encode_prompts
from ..teachers import InProcessTeacher, Teacher, VLLMServerTeacher
from ..teachers.distill_loss import bucket_divergence, replay_support_logprobs, student_buckets, teacher_buckets
from .checkpoints import CompleteCheckpointMixin
from .checks import check_padding_tokens, check_prompt_column, check_prompt_lengths, named_datasets
from .distributed import generation_model
from .metrics import count_valid
from .model_card import BlockDiffusionModelCardMixin
from .model_prep import is_model_path, prepare_block_diffusion_model, trainer_model_init_kwargs
from .opd_config import OnPolicyDistillConfig


class OnPolicyDistillTrainer(CompleteCheckpointMixin, BlockDiffusionModelCardMixin, DistillationTrainer):
    """OPD for block-diffusion students (Diffusion-GR2 stage 3).

    Args:
        model: the student: a block-diffusion model, a plain AR causal LM, or a local path to either, prepared by
            `prepare_block_diffusion_model` as in the other trainers (before the base applies `peft_config`): an
            AR model is converted with `args.block_size` (`DEFAULT_BLOCK_SIZE` when None) and the default mask
            token; a converted one keeps its settings, or stores `args.block_size` instead of its own (with a
            warning).
        teacher_model: the AR teacher: a `PreTrainedModel`, a path, or a ready `dgr2_trl.teachers.Teacher`. May be
            omitted when `args.teacher_url` (vLLM server) or `args.teacher_model_name_or_path` is set.
        args: `OnPolicyDistillConfig`.
        train_dataset / eval_dataset: need a `prompt` column (text or chat messages); an optional `candidates`
            column enables the logged valid rate of the rollouts (`dgr2_trl.rewards.parse_ranking`). Checked at
            construction: the column, and (map-style datasets) that every prompt plus the rollout's whole blocks
            fits the student's `max_position_embeddings`.
        processing_class: the student's tokenizer (the mask token is added to it when an AR student is converted;
            loaded from the student's path or name when None); it needs a pad or an eos token.

    A subclass overrides `rollout` (how completions are produced) or `score_with_teacher` (how they are scored);
    `_generate_and_score_completions` composes the two. The student's attention is probed once at construction: a
    backend that ignores the block mask is refused.
    `train(resume_from_checkpoint=True)` skips checkpoints a killed save left incomplete.
    """

    _tag_names = ["trl", "dgr2-trl", "on-policy-distillation", "block-diffusion"]
    _name = "OnPolicyDistill"

    def __init__(
        self,
        model,
        teacher_model: str | PreTrainedModel | Teacher | None = None,
        args: OnPolicyDistillConfig | None = None,
        train_dataset=None,
        eval_dataset=None,
        processing_class=None,
        callbacks=None,
        optimizers=(None, None),
        peft_config=None,
    ):
        if args is None:
            args = OnPolicyDistillConfig(output_dir="opd-output")
        if not isinstance(args, OnPolicyDistillConfig):
            raise TypeError(f"args must be an OnPolicyDistillConfig, got {type(args).__name__}")
        datasets = {**named_datasets(train_dataset, "train"), **named_datasets(eval_dataset, "eval")}
        check_prompt_column(datasets)
        tokenizer_given = processing_class is not None
        if tokenizer_given:  # before conversion adds the mask token to it; a loaded one below
            check_padding_tokens(processing_class)
        # Prepared here, not by the base: the base then wraps (PEFT) and trains the converted student, and uses the
        # tokenizer that holds its mask token.
        init_kwargs = None
        if is_model_path(model):
            init_kwargs = trainer_model_init_kwargs(args)
            args.model_init_kwargs = None  # consumed here (the base would warn that it ignores them)
        model, processing_class, settings = prepare_block_diffusion_model(
            model, processing_class, block_size=args.block_size, model_init_kwargs=init_kwargs
        )
        if not tokenizer_given:  # the sides the base gives the tokenizer it loads itself
            text_tokenizer = getattr(processing_class, "tokenizer", processing_class)
            text_tokenizer.padding_side = text_tokenizer.truncation_side = "left"
        # The base would build a dense in-process teacher and its chunked JSD; ours goes through a Teacher instead.
        super().__init__(
            model=model,
            teacher_model=None,
            args=args,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            callbacks=callbacks,
            optimizers=optimizers,
            peft_config=peft_config,
        )
        student = self.accelerator.unwrap_model(self.model)
        check_padding_tokens(self._tokenizer)
        # TRL lists the tokenizer's eos id even when there is none; the sampler wants real ids (it warns without any)
        self.eos_token_ids = [token for token in self.eos_token_ids if token is not None]
        self.mask_token_id = settings.mask_token_id
        self.rollout_block_size = settings.block_size
        check_prompt_lengths(student, self._tokenizer, datasets, args.max_completion_length, self.rollout_block_size)
        self.teacher = self._build_teacher(teacher_model, args)
        self.teacher.check_tokenizer(self._tokenizer)
        self._generation_seconds = 0.0  # rollout + teacher time spent inside the current training_step

    # ---- setup ------------------------------------------------------------------------------------------------
    def _build_teacher(self, teacher_model, args: OnPolicyDistillConfig) -> Teacher:
        if isinstance(teacher_model, Teacher):
            return teacher_model
        if teacher_model is None and args.teacher_url:
            return VLLMServerTeacher(
                args.teacher_url,
                timeout=args.teacher_timeout,
                max_retries=args.teacher_max_retries,
                backoff_s=args.teacher_backoff_s,
                batch_size=args.teacher_batch_size,
            )
        if teacher_model is None:
            teacher_model = args.teacher_model_name_or_path
        if teacher_model is None:
            raise ValueError(
                "no teacher: pass teacher_model (an AR model, a path or a dgr2_trl.teachers.Teacher), or set "
                "args.teacher_url (vLLM server) or args.teacher_model_name_or_path"
            )
        teacher_tokenizer = None
        if isinstance(teacher_model, str):
            kwargs = dict(args.teacher_model_init_kwargs or {})
            path = teacher_model
            teacher_model = load_causal_lm(path, **kwargs)
            try:
                teacher_tokenizer = load_tokenizer(path, gguf_file=kwargs.get("gguf_file"))
            except (OSError, ValueError):
                teacher_tokenizer = None  # a model saved without its tokenizer: only the vocabulary size is checked
        if get_block_diffusion_settings(teacher_model) is not None:
            raise ValueError("the teacher must be the AR model, not a block-diffusion conversion")
        teacher_model.to(self.accelerator.device).eval()
        teacher_model.requires_grad_(False)
        return InProcessTeacher(teacher_model, teacher_tokenizer, batch_size=args.teacher_batch_size)

    # ---- the seams a subclass overrides: rollouts, teacher scores ----------------------------------------------
    def rollout(self, prompts: list) -> dict:
        """Decode one completion per prompt with the student's `BlockDiffusionSampler`; override to change how
        completions are produced (the teacher then scores, and the loss trains on, whatever this returns).

        Returns a dict of per-prompt lists, in the order of `prompts` (the trainer encodes the prompts itself):

        - `completion_ids` (required): each completion's tokens, up to and including its EOS: what the teacher scores
          and the loss covers;
        - `commit_step`: each of those tokens' denoising step (trajectory replay reads the student in the state the
          token was committed in); without it every token is replayed in its fully masked block state;
        - `trailing_ids`, `trailing_commit_step`: the tokens the sampler committed after the EOS in the last block,
          and their steps (replayed as context, outside the loss); none without them;
        - `texts`: the decoded completions (for the logged valid rate); without them, `completion_ids` decoded.
        """
        start = time.perf_counter()
        # the unwrapped student (full parameters under ZeRO-3/FSDP), no grad: rollouts are never differentiated
        with generation_model(self) as student:
            sampler = BlockDiffusionSampler(
                student,
                self._tokenizer,
                block_size=self.rollout_block_size,
                threshold=self.args.threshold,
                max_steps_per_block=self.args.max_steps_per_block,
                eos_token_id=self.eos_token_ids,
                fallback=self.args.fallback,
            )
            out = sampler.generate(
                prompts, max_new_tokens=self.args.max_completion_length, temperature=self.args.temperature
            )
        seconds = time.perf_counter() - start
        metrics = self._metrics["train" if self.model.training else "eval"]
        metrics["rollout/tokens_per_second"].append(out.num_generated_tokens / max(seconds, 1e-9))
        metrics["rollout/forward_passes_per_token"].append(out.forward_passes_per_token)
        return {
            "completion_ids": out.completion_ids,
            "commit_step": out.commit_step,
            "trailing_ids": out.trailing_ids,
            "trailing_commit_step": out.trailing_commit_step,
            "texts": out.texts,
        }

    def score_with_teacher(self, prompt_ids: list[list[int]], completion_ids: list[list[int]], width: int) -> dict:
        """The teacher's `args.teacher_top_k` log-probs (and ids) of each completion token and its log-prob of the
        token itself, without grad, right-padded to `width` columns: `teacher_topk_logprobs` `(B, width, k)` (padded
        with -inf), `teacher_topk_ids` `(B, width, k)` (0), `teacher_token_logprobs` `(B, width)` (0)."""
        scores = self.teacher.score(prompt_ids, completion_ids, top_k=self.args.teacher_top_k)
        # The teacher pads to the longest completion it scored; the batch is `width` columns wide (the completion
        # tensors', trailing tokens included), so the remaining columns are padded explicitly.
        extra = width - scores.token_logprobs.shape[1]
        return {
            "teacher_topk_logprobs": F.pad(
                scores.topk_logprobs.to("cpu", torch.float32), (0, 0, 0, extra), value=-inf
            ),
            "teacher_topk_ids": F.pad(scores.topk_ids.to("cpu", torch.long), (0, 0, 0, extra), value=0),
            "teacher_token_logprobs": F.pad(scores.token_logprobs.to("cpu", torch.float32), (0, extra), value=0.0),
        }

    # ---- the base's generation seam, composed of the two above ------------------------------------------------
    def _generate_and_score_completions(self, inputs):
        mode = "train" if self.model.training else "eval"
        device = self.accelerator.device
        examples = [example for example in inputs for _ in range(self.args.num_rollouts_per_prompt)]
        prompts = [example["prompt"] for example in examples]

        start = time.perf_counter()
        rollout = self.rollout(prompts)
        rollout_s = time.perf_counter() - start
        prompt_ids, prompt_mask = encode_prompts(self._tokenizer, prompts, device)
        completions = self._completion_tensors(rollout, len(prompts))

        start = time.perf_counter()
        prompt_lists = [ids[mask.bool()].tolist() for ids, mask in zip(prompt_ids.cpu(), prompt_mask.cpu())]
        width = completions["completion_ids"].shape[1]
        teacher = self.score_with_teacher(prompt_lists, rollout["completion_ids"], width)
        teacher_s = time.perf_counter() - start

        num_items = self._log_generation(
            mode, examples, rollout, prompt_mask, completions, teacher, rollout_s, teacher_s
        )
        # The base splits this dict along dim 0 into gradient-accumulation chunks, sized by the first tensor.
        batch = {"prompt_ids": prompt_ids, "prompt_mask": prompt_mask}
        batch.update({key: value.to(device) for key, value in {**completions, **teacher}.items()})
        batch["num_items_in_batch"] = num_items
        return batch

    def _completion_tensors(self, rollout: dict, num_rows: int) -> dict:
        """A rollout's completions, each followed by its trailing tokens, as right-padded `(B, R)` tensors (on CPU):
        `completion_ids`, `completion_mask` (real tokens, trailing ones included), `loss_mask` (the completion
        tokens) and `commit_step` (-1 on padding)."""
        kept = rollout["completion_ids"]
        if len(kept) != num_rows:
            raise ValueError(f"rollout() returned {len(kept)} completions for {num_rows} prompts")
        steps = rollout.get("commit_step") or [[0] * len(row) for row in kept]
        trailing = rollout.get("trailing_ids") or [[] for _ in kept]
        trailing_steps = rollout.get("trailing_commit_step") or [[] for _ in kept]
        for name, values, reference in (
            ("commit_step", steps, kept),
            ("trailing_commit_step", trailing_steps, trailing),
        ):
            lengths = [len(v) for v in values]
            if lengths != [len(r) for r in reference]:
                raise ValueError(f"rollout()['{name}'] has rows of lengths {lengths}, not those of its token rows")
        rows = [torch.tensor(c + t, dtype=torch.long) for c, t in zip(kept, trailing)]
        row_steps = [torch.tensor(s + t, dtype=torch.long) for s, t in zip(steps, trailing_steps)]
        completion_ids = pad(rows, padding_value=self._tokenizer.pad_token_id)
        commit_step = pad(row_steps, padding_value=-1)
        # `pad` stops at the longest row: an all-empty batch still gets one (padding) column, as the replay expects
        extra = max(1, completion_ids.shape[1]) - completion_ids.shape[1]
        completion_ids = F.pad(completion_ids, (0, extra), value=self._tokenizer.pad_token_id)
        commit_step = F.pad(commit_step, (0, extra), value=-1)
        columns = torch.arange(completion_ids.shape[1])
        return {
            "completion_ids": completion_ids,
            "completion_mask": (columns < torch.tensor([len(r) for r in rows])[:, None]).long(),
            "loss_mask": (columns < torch.tensor([len(c) for c in kept])[:, None]).long(),
            "commit_step": commit_step,
        }

    def _log_generation(self, mode, examples, rollout, prompt_mask, completions, teacher, rollout_s, teacher_s):
        """Log the generation batch's metrics, summed over all processes in one collective (so they describe the
        whole generation batch); returns the batch's completion-token count over all processes (the loss
        denominator)."""
        device = self.accelerator.device
        loss_mask = completions["loss_mask"].bool()
        num_tokens = int(loss_mask.sum())
        has_candidates = bool(examples) and "candidates" in examples[0]
        num_valid = 0.0
        if has_candidates:
            texts = rollout.get("texts")
            if texts is None:
                texts = self._tokenizer.batch_decode(rollout["completion_ids"], skip_special_tokens=True)
            num_valid = count_valid([ex["prompt"] for ex in examples], texts, [ex["candidates"] for ex in examples])
        local = [
            num_tokens,
            len(loss_mask),
            float(teacher["teacher_token_logprobs"][loss_mask].sum()),
            num_valid,
            int(prompt_mask.sum()),
        ]
        totals = self.accelerator.gather(torch.tensor([local], dtype=torch.float64, device=device)).sum(0).tolist()
        metrics = self._metrics[mode]
        metrics["time/rollout_s"].append(rollout_s)
        metrics["time/teacher_s"].append(teacher_s)
        metrics["teacher/tokens_per_second"].append(num_tokens / max(teacher_s, 1e-9))
        metrics["completions/mean_length"].append(totals[0] / max(totals[1], 1))
        metrics["teacher/token_logprob"].append(totals[2] / totals[0] if totals[0] else 0.0)
        if has_candidates:
            metrics["valid_rate"].append(totals[3] / max(totals[1], 1))
        if mode == "train":
            self.state.num_input_tokens_seen += int(totals[4] + totals[0])
            self._generation_seconds += rollout_s + teacher_s
        return torch.tensor(totals[0], dtype=torch.float32, device=device)

    # ---- loss ---------------------------------------------------------------------------------------------------
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        mode = "train" if self.model.training else "eval"
        loss_mask = inputs["loss_mask"].bool()
        if self.model.training and inputs.get("num_items_in_batch") is not None:
            # Tokens of the whole generation batch (all processes, all accumulation steps): the per-step losses then
            # add up to one token mean; divided by the process count because DDP averages gradients.
            denominator = inputs["num_items_in_batch"].clamp(min=1.0) / self.accelerator.num_processes
        else:
            denominator = loss_mask.sum().clamp(min=1)
        unwrapped = self.accelerator.unwrap_model(model)
        # Through the DDP/FSDP wrapper, as the base does, since replay calls the decoder directly.
        per_token, forward_kl = self._forward_redirection(model, unwrapped, self._divergences, unwrapped, inputs)
        # where, not a product: positions without a loss must not leak a NaN/inf into the sum or its gradient.
        per_token = torch.where(loss_mask, per_token, 0.0)
        loss = per_token.sum() / denominator
        # token means over all processes (gathered here, outside the wrapper's forward, as the base does)
        sums = torch.stack(
            [
                torch.where(loss_mask, forward_kl, 0.0).sum(),
                per_token.detach().sum(),
                loss_mask.sum().to(per_token.dtype),
            ]
        )
        kl_sum, divergence_sum, tokens = self.accelerator.gather(sums[None].double()).sum(0).tolist()
        metrics = self._metrics[mode]
        metrics["kl"].append(kl_sum / max(tokens, 1.0))
        metrics["divergence"].append(divergence_sum / max(tokens, 1.0))
        loss = loss.to(torch.float32)
        return (loss, None) if return_outputs else loss

    def _divergences(self, student, inputs):
        """Per-token loss divergence `(B, R)` and, detached, the forward KL (logged as `kl` whatever the loss)."""
        teacher_valid = torch.isfinite(inputs["teacher_topk_logprobs"])
        # The student never produces its mask token; a teacher that has such a row keeps its mass in the tail.
        teacher_valid &= inputs["teacher_topk_ids"] != self.mask_token_id
        support, tail = replay_support_logprobs(
            student,
            inputs["prompt_ids"],
            inputs["prompt_mask"],
            inputs["completion_ids"],
            inputs["completion_mask"],
            inputs["commit_step"],
            inputs["loss_mask"],
            inputs["teacher_topk_ids"],
            teacher_valid,
            self.mask_token_id,
            self.rollout_block_size,
        )
        teacher = teacher_buckets(inputs["teacher_topk_logprobs"], teacher_valid)
        student_dist = student_buckets(support, tail, teacher_valid)
        per_token = bucket_divergence(teacher, student_dist, self.args.divergence, self.args.jsd_beta)
        with torch.no_grad():
            forward_kl = (
                per_token
                if self.args.divergence == "forward_kl"
                else bucket_divergence(teacher, student_dist, "forward_kl")
            )
        return per_token, forward_kl.detach()

    def training_step(self, model, inputs, num_items_in_batch=None):
        self._generation_seconds = 0.0
        start = time.perf_counter()
        loss = super().training_step(model, inputs, num_items_in_batch)
        self._metrics["train"]["time/update_s"].append(time.perf_counter() - start - self._generation_seconds)
        return loss
