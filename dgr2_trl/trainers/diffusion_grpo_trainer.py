"""GRPO/DAPO for block-diffusion models, with trajectory-replay log-probs.

Built on TRL's own `GRPOTrainer` (tested with trl 1.16; supported range in pyproject), through its extension
seams only:

* rollouts: TRL's `rollout_func` hook, filled by `rollout()` (a `BlockDiffusionSampler` run that records each
  token's denoising step and commit-time log-prob); override `rollout` to change how completions are produced;
* log-probs of the current policy: `_get_per_token_logps_and_entropies`, answered by trajectory replay (each token
  scored in the masked state in which it was committed), used for the policy, old-policy and reference log-probs;
* the batch: `_generate_and_score_completions` is wrapped (never copied) to carry the replay data through TRL's
  shuffling and splitting, log the valid rate, and leave zero-advantage groups out of the loss;
* the loss: TRL's DAPO token-level loss with clipping, unchanged.
"""

from __future__ import annotations

import copy
import warnings

import torch
import torch.nn.functional as F
from accelerate.utils import is_peft_model
from trl import GRPOTrainer
from trl.models import prepare_deepspeed, prepare_fsdp
from trl.trainer.callbacks import SyncRefModelCallback
from trl.trainer.utils import disable_dropout_in_model, pad

from ..modeling import replay_logprobs
from ..rewards import default_rl_reward
from ..samplers import BlockDiffusionSampler
from ..samplers.common import encode_prompts
from .checkpoints import CompleteCheckpointMixin
from .checks import check_padding_tokens, check_prompt_column, check_prompt_lengths, named_datasets
from .diffusion_grpo_config import DiffusionGRPOConfig
from .distributed import generation_model, through_wrapper
from .metrics import count_valid, valid_rate_across_processes
from .model_card import BlockDiffusionModelCardMixin
from .model_prep import is_model_path, prepare_block_diffusion_model, trainer_model_init_kwargs


REPLAY_KEYS = ("commit_step", "trailing_ids", "trailing_commit_step")


def _pad_rows(rows: list[list[int]], width: int, value: int, device) -> torch.Tensor:
    """`rows`, cut to `width` tokens, right-padded with `value` (TRL's `pad`) into exactly `max(width, 1)` columns."""
    columns = max(width, 1)
    if not rows:
        return torch.full((0, columns), value, dtype=torch.long, device=device)
    padded = pad([torch.tensor(row[:width], dtype=torch.long, device=device) for row in rows], padding_value=value)
    # `pad` stops at the longest row; the replay tensors are indexed column for column with TRL's completion
    # tensors (`width` = their width), so the remainder is padded explicitly
    return F.pad(padded, (0, columns - padded.shape[1]), value=value)


class DiffusionGRPOTrainer(CompleteCheckpointMixin, BlockDiffusionModelCardMixin, GRPOTrainer):
    """`trl.GRPOTrainer` for block-diffusion students.

    Args:
        model: a converted block-diffusion model, a plain AR causal LM, or a local path to either, prepared by
            `prepare_block_diffusion_model` as in the other trainers: an AR model is converted with `args.block_size`
            and `args.mask_token` (`DEFAULT_BLOCK_SIZE` / `DEFAULT_MASK_TOKEN` when None); a converted one keeps its
            settings, or stores `args.block_size` instead of its own (with a warning).
        reward_funcs: TRL reward functions (weights via `args.reward_weights`). Default: `default_rl_reward`
            (rank promotion + 0.2 x conditional format, -1 for an invalid ranking).
        rollout_func: optional replacement of the block-diffusion rollout (TRL's signature). Without commit steps
            in its output, every token is replayed in its fully masked block state (a one-step estimate).

    Checked at construction: the tokenizer has a pad or an eos token, the model's attention honours the block mask,
    the datasets have a `prompt` column and (map-style ones) every prompt plus the rollout's whole blocks fits the
    model's `max_position_embeddings`. `train(resume_from_checkpoint=True)` skips checkpoints a killed save left
    incomplete.
    """

    _tag_names = ["trl", "grpo", "dgr2-trl", "block-diffusion"]

    def __init__(
        self,
        model,
        reward_funcs=None,
        args: DiffusionGRPOConfig | None = None,
        train_dataset=None,
        eval_dataset=None,
        processing_class=None,
        rollout_func=None,
        **kwargs,
    ):
        args = args or DiffusionGRPOConfig(output_dir="dgr2-grpo")
        if not isinstance(args, DiffusionGRPOConfig):
            raise TypeError(f"args must be a DiffusionGRPOConfig, got {type(args).__name__}")
        if processing_class is None and not is_model_path(model):
            raise ValueError("processing_class (the tokenizer) is required when model is not a path")
        tokenizer_given = processing_class is not None
        if tokenizer_given:  # before conversion adds the mask token to it; a loaded one once loaded
            check_padding_tokens(processing_class)
        datasets = {**named_datasets(train_dataset, "train"), **named_datasets(eval_dataset, "eval")}
        check_prompt_column(datasets)
        model, processing_class, settings = prepare_block_diffusion_model(
            model,
            processing_class,
            block_size=args.block_size,
            mask_token=args.mask_token,
            model_init_kwargs=trainer_model_init_kwargs(args) if is_model_path(model) else None,
        )
        if not tokenizer_given:
            check_padding_tokens(processing_class)
        self.block_size = settings.block_size
        check_prompt_lengths(model, processing_class, datasets, args.max_completion_length, self.block_size)
        self.mask_token_id = settings.mask_token_id
        self._pending_replay = None  # rollout-order replay data, while TRL scores the batch
        self._active_replay = None  # replay data of the batch whose loss is being computed
        self._custom_rollout = rollout_func
        # TRL builds the KL reference by loading `config._name_or_path` again: nothing for a model object, and for
        # a path the unconverted AR checkpoint. The reference must be this converted model, so it is copied here
        # and TRL is shown beta = 0 while it builds the rest (with PEFT, TRL's disabled adapter is the reference).
        own_reference = args.beta != 0.0 and kwargs.get("peft_config") is None and not is_peft_model(model)
        reference = copy.deepcopy(model) if own_reference else None
        beta, sync_ref_model = args.beta, args.sync_ref_model
        if own_reference:
            args.beta, args.sync_ref_model = 0.0, False
        try:
            self._init_grpo(
                model, reward_funcs, args, train_dataset, eval_dataset, processing_class, rollout_func, kwargs
            )
        finally:
            args.beta, args.sync_ref_model = beta, sync_ref_model
        if own_reference:
            self.beta = beta
            self.ref_model = self._prepare_reference_model(reference)
            if sync_ref_model:
                self.add_callback(SyncRefModelCallback(ref_model=self.ref_model, accelerator=self.accelerator))
        # TRL lists the tokenizer's eos id even when there is none; the sampler wants real ids (it warns without any)
        self.eos_token_ids = [token for token in self.eos_token_ids if token is not None]

    def _init_grpo(
        self, model, reward_funcs, args, train_dataset, eval_dataset, processing_class, rollout_func, kwargs
    ):
        with warnings.catch_warnings():
            if rollout_func is None:  # our own use of the experimental hook is not the user's experiment
                warnings.filterwarnings("ignore", message=r"You are using 'rollout_func'", category=UserWarning)
            super().__init__(
                model=model,
                reward_funcs=reward_funcs if reward_funcs is not None else [default_rl_reward],
                args=args,
                train_dataset=train_dataset,
                eval_dataset=eval_dataset,
                processing_class=processing_class,
                rollout_func=self._rollout_hook,
                **kwargs,
            )

    def _prepare_reference_model(self, reference):
        """The frozen KL reference: the converted model before training, placed like TRL places its own."""
        if self.args.disable_dropout:
            disable_dropout_in_model(reference)
        reference.eval().requires_grad_(False)
        if self.is_deepspeed_enabled:
            return prepare_deepspeed(reference, self.accelerator)
        if self.is_fsdp_enabled:
            return prepare_fsdp(reference, self.accelerator)
        return self.accelerator.prepare_model(reference, evaluation_mode=True)

    # ----------------------------------------------------------------------------------------------- rollouts
    def rollout(self, prompts: list) -> dict:
        """Decode one completion per prompt with the block sampler.

        Returns TRL's rollout dict (`prompt_ids`, `completion_ids`, `logprobs`) plus the replay data
        (`commit_step`, `trailing_ids`, `trailing_commit_step`) and `texts`.
        """
        # the unwrapped model (full parameters under ZeRO-3/FSDP), no grad: rollouts are never differentiated
        with generation_model(self) as model:
            sampler = BlockDiffusionSampler(
                model,
                self.processing_class,
                block_size=self.block_size,
                threshold=self.args.threshold,
                max_steps_per_block=self.args.max_steps_per_block,
                eos_token_id=self.eos_token_ids,
                fallback=self.args.fallback,
            )
            seed = self.args.rollout_seed if self.args.rollout_seed is not None else self.args.seed
            generator = torch.Generator(device=self.accelerator.device)
            generator.manual_seed(seed + 1_000_003 * self.state.global_step + 7919 * self.accelerator.process_index)
            # same precision as the replay, so the policy ratio starts at 1 (exactly so in fp32)
            with self.accelerator.autocast():
                out = sampler.generate(
                    prompts,
                    max_new_tokens=self.args.max_completion_length,
                    temperature=self.args.temperature,
                    generator=generator,
                )
        prompt_ids, prompt_mask = encode_prompts(self.processing_class, prompts)
        rows = [ids[mask.bool()].tolist() for ids, mask in zip(prompt_ids, prompt_mask)]
        seconds = max(out.elapsed_s, 1e-9)
        mode = "train" if self.model.training else "eval"
        self._metrics[mode]["rollout/tokens_per_second"].append(out.num_generated_tokens / seconds)
        self._metrics[mode]["rollout/forward_passes_per_token"].append(out.forward_passes_per_token)
        return {
            "prompt_ids": rows,
            "completion_ids": out.completion_ids,
            "logprobs": out.logprobs,
            "commit_step": out.commit_step,
            "trailing_ids": out.trailing_ids,
            "trailing_commit_step": out.trailing_commit_step,
            "texts": out.texts,
        }

    def _rollout_hook(self, prompts, trainer):
        output = self._custom_rollout(prompts, trainer) if self._custom_rollout else self.rollout(prompts)
        n = len(output["completion_ids"])
        self._pending_replay = {
            "commit_step": output.pop("commit_step", [[0] * len(c) for c in output["completion_ids"]]),
            "trailing_ids": output.pop("trailing_ids", [[] for _ in range(n)]),
            "trailing_commit_step": output.pop("trailing_commit_step", [[] for _ in range(n)]),
            "texts": output.pop("texts", None),
        }
        if output.get("logprobs") is None:
            output["logprobs"] = None
        return output

    def _replay_tensors(self, replay: dict, width: int, device) -> dict:
        tail = max([len(t) for t in replay["trailing_ids"]] + [1])
        pad_id = self.processing_class.pad_token_id
        return {
            "commit_step": _pad_rows(replay["commit_step"], width, -1, device),
            "trailing_ids": _pad_rows(replay["trailing_ids"], tail, pad_id, device),
            "trailing_commit_step": _pad_rows(replay["trailing_commit_step"], tail, -1, device),
        }

    # ------------------------------------------------------------------------------------------------ batches
    def _generate_and_score_completions(self, inputs):
        output = super()._generate_and_score_completions(inputs)
        replay, self._pending_replay = self._pending_replay, None
        device = output["completion_ids"].device
        output.update(self._replay_tensors(replay, output["completion_ids"].shape[1], device))
        mode = "train" if self.model.training else "eval"
        if replay["texts"] is not None and inputs and "candidates" in inputs[0]:
            valid = count_valid(
                [x["prompt"] for x in inputs], replay["texts"], [[str(c) for c in x["candidates"]] for x in inputs]
            )
            rate = valid_rate_across_processes(self.accelerator, valid, len(inputs))
            self._metrics[mode]["valid_rate"].append(rate)
        if self.args.drop_zero_advantage_groups:
            advantages = output["advantages"]
            keep = (advantages != 0).reshape(advantages.shape[0], -1).any(-1).long()
            loss_mask = output["completion_mask"] * output.get("tool_mask", 1) * keep[:, None]
            output["tool_mask"] = output.get("tool_mask", torch.ones_like(loss_mask)) * keep[:, None]
            total = self.accelerator.gather(loss_mask.sum()).sum()
            output["num_items_in_batch"] = total.clamp(min=1)  # an all-dropped batch gives a zero loss, not NaN
            self._metrics[mode]["dropped_fraction"].append(1.0 - keep.float().mean().item())
        return output

    def _compute_loss(self, model, inputs):
        self._active_replay = {key: inputs[key] for key in REPLAY_KEYS}
        try:
            return super()._compute_loss(model, inputs)
        finally:
            self._active_replay = None

    # ------------------------------------------------------------------------------------------------ log-probs
    def _get_per_token_logps_and_entropies(
        self,
        model,
        input_ids,
        attention_mask,
        logits_to_keep,
        batch_size=None,
        compute_entropy=False,
        compute_aux_loss=False,
        **unused,
    ):
        """Trajectory replay: per-token log-probs (and entropies) of the completion, each in its commit state."""
        if self._active_replay is not None:
            replay = self._active_replay
        else:  # called by TRL while scoring a fresh batch (old / reference log-probs), in rollout order
            replay = self._replay_tensors(self._pending_replay, logits_to_keep, input_ids.device)
        # Replay calls the decoder and the LM head directly, so it runs inside the DDP/FSDP/DeepSpeed wrapper's
        # forward: DDP then all-reduces the gradients, FSDP/ZeRO-3 materialise the parameters.
        return through_wrapper(
            self,
            model,
            self._replay,
            input_ids,
            attention_mask,
            logits_to_keep,
            replay,
            batch_size or input_ids.shape[0],
            compute_entropy,
        )

    def _replay(self, model, input_ids, attention_mask, logits_to_keep, replay, batch_size, compute_entropy):
        all_logps, all_entropies = [], []
        for start in range(0, input_ids.shape[0], batch_size):
            rows = slice(start, start + batch_size)
            prompt_ids, prompt_mask = input_ids[rows, :-logits_to_keep], attention_mask[rows, :-logits_to_keep]
            completion_ids, completion_mask = input_ids[rows, -logits_to_keep:], attention_mask[rows, -logits_to_keep:]
            ids, mask, steps = self._with_trailing(
                completion_ids,
                completion_mask,
                replay["commit_step"][rows, :logits_to_keep],
                replay["trailing_ids"][rows],
                replay["trailing_commit_step"][rows],
            )
            with self.accelerator.autocast():
                logps, entropies = replay_logprobs(
                    model,
                    prompt_ids,
                    prompt_mask,
                    ids,
                    mask,
                    steps,
                    self.mask_token_id,
                    self.block_size,
                    temperature=self.temperature,
                    merge_steps=self.args.replay_merge_steps,
                    return_entropy=True,
                )
            all_logps.append(logps[:, :logits_to_keep].float())
            all_entropies.append(entropies[:, :logits_to_keep].float())
        entropies = torch.cat(all_entropies) if compute_entropy else None
        return torch.cat(all_logps), entropies, None

    @staticmethod
    def _with_trailing(completion_ids, completion_mask, commit_step, trailing_ids, trailing_step):
        """Append each row's trailing block tail right after its completion, so replay sees the sampler's states."""
        lengths = completion_mask.sum(-1)
        trailing_valid = trailing_step >= 0
        width = completion_ids.shape[1] + trailing_ids.shape[1]
        ids = torch.zeros(completion_ids.shape[0], width, dtype=completion_ids.dtype, device=completion_ids.device)
        mask = torch.zeros_like(ids)
        steps = torch.full_like(ids, -1)
        ids[:, : completion_ids.shape[1]] = completion_ids
        mask[:, : completion_ids.shape[1]] = completion_mask
        steps[:, : completion_ids.shape[1]] = torch.where(completion_mask.bool(), commit_step.clamp(min=0), -1)
        columns = lengths[:, None] + torch.arange(trailing_ids.shape[1], device=ids.device)
        rows = torch.arange(ids.shape[0], device=ids.device)[:, None].expand_as(columns)
        ids[rows[trailing_valid], columns[trailing_valid]] = trailing_ids[trailing_valid]
        mask[rows[trailing_valid], columns[trailing_valid]] = 1
        steps[rows[trailing_valid], columns[trailing_valid]] = trailing_step[trailing_valid]
        return ids, mask, steps
