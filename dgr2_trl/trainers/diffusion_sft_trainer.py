"""`DiffusionSFTTrainer`: conversion fine-tuning (CFT) of an AR causal LM into a block-diffusion LM, on top of
`trl.SFTTrainer`.

SFTTrainer still does the dataset preparation (chat template, tokenisation, truncation), PEFT, checkpointing and
logging. This subclass only swaps the collator (prompt/completion split, EOS padding to the block size, answer
weights), draws the noise per sample, and replaces `compute_loss` with the masked-diffusion loss of
`dgr2_trl.modeling`. The loss is normalised over the whole accumulated batch (`get_batch_samples`), so gradient
accumulation gives the gradient of one large batch.
"""

from __future__ import annotations

import logging
import math
import os

import torch
from datasets import Dataset, IterableDataset
from transformers.modeling_outputs import CausalLMOutput
from trl import SFTConfig, SFTTrainer
from trl.data_utils import is_conversational

from ..modeling.loss import causal_lm_loss_sum, masked_diffusion_loss
from ..modeling.noise import BlockNoise
from .checkpoints import CompleteCheckpointMixin
from .checks import check_padding_tokens
from .diffusion_sft_config import DiffusionSFTConfig
from .diffusion_sft_data import SAMPLE_INDEX, DiffusionSFTCollator, complementary_time, per_sample_noise
from .distributed import through_wrapper
from .model_card import BlockDiffusionModelCardMixin
from .model_prep import is_model_path, prepare_block_diffusion_model, trainer_model_init_kwargs


logger = logging.getLogger(__name__)


def _check_dataset(dataset, name: str) -> None:
    """Clear errors for datasets the diffusion loss cannot use."""
    if dataset is None:
        return
    sample = next(iter(dataset))
    columns = list(sample.keys())
    tokenised = "input_ids" in sample and ("labels" in sample or "completion_mask" in sample)
    if not tokenised and ("prompt" not in sample or "completion" not in sample):
        raise ValueError(
            f"the {name} dataset must be prompt-completion (columns 'prompt' and 'completion'), because the diffusion "
            f"loss is defined on the completion; it has columns {columns}"
        )
    if isinstance(dataset, Dataset) and "completion" in columns:
        empty = [i for i, c in enumerate(dataset["completion"]) if _is_empty(c)]
        if empty:
            raise ValueError(f"the {name} dataset has empty completions at rows {empty[:10]} (of {len(empty)})")


def _check_tokenizer(tokenizer, args: DiffusionSFTConfig, dataset) -> None:
    """The collator pads with the pad token (EOS without one); text completions end with EOS (SFTTrainer appends
    it, and would fail on a tokenizer without one with a TypeError inside `datasets.map`)."""
    check_padding_tokens(tokenizer, eos_token=args.eos_token)
    text_tokenizer = getattr(tokenizer, "tokenizer", tokenizer)
    sample = next(iter(dataset))
    text_completions = isinstance(sample.get("completion"), str) and not is_conversational(sample)
    if args.eos_token is None and text_tokenizer.eos_token is None and text_completions:
        raise ValueError(
            f"the tokenizer ({type(text_tokenizer).__name__}) has no eos token, which SFTTrainer appends to every "
            "text completion (and the sampler stops at); set tokenizer.eos_token or args.eos_token, or use "
            "conversational data"
        )


def _is_empty(completion) -> bool:
    if isinstance(completion, str):
        return not completion.strip()
    if isinstance(completion, (list, tuple)):
        return all(not str(m.get("content") or "").strip() for m in completion if isinstance(m, dict))
    return completion is None


def _drop_trl_fused_forward(model) -> None:
    """Remove a fused LM head that an earlier `SFTTrainer` patched onto this model instance.

    TRL binds `model.forward` to a closure over the forward it replaced. On a `copy.deepcopy` of such a model (e.g.
    a CFT student copied from a teacher trained in the same process) that closure still runs the *original* model,
    so the copy would train another model's weights. `SFTTrainer.__init__` re-adds the head on the right model.
    """
    for module in (model, getattr(model, "get_base_model", lambda: None)()):
        func = getattr(getattr(module, "__dict__", {}).get("forward"), "__func__", None)
        if func is not None and func.__name__ == "_fused_forward" and func.__module__.startswith("trl."):
            del module.__dict__["forward"]


def _with_sample_index(dataset):
    """Add a column holding each row's index: the key of its per-sample noise."""
    if dataset is None or isinstance(dataset, str):
        return dataset
    if isinstance(dataset, dict):
        return {key: _with_sample_index(value) for key, value in dataset.items()}
    if SAMPLE_INDEX in (dataset.column_names or []):
        return dataset
    return dataset.map(lambda _, index: {SAMPLE_INDEX: index}, with_indices=True)


class DiffusionSFTTrainer(CompleteCheckpointMixin, BlockDiffusionModelCardMixin, SFTTrainer):
    """Fine-tune a causal LM with the block-diffusion masked-diffusion loss on prompt-completion data.

    `model` may be a plain AR model (converted here with `args.block_size` / `args.mask_token`), an already
    converted one, or a path to either, prepared by `prepare_block_diffusion_model` as in the other trainers (the
    resolved block size and mask token are written back into `args`). `peft_config` trains a LoRA adapter as in
    `SFTTrainer`; convert the model before wrapping it with PEFT yourself (its attention is probed: a backend that
    ignores the block mask is refused).
    Logs `loss` and `mask_ratio` (fraction of completion tokens masked); `trainer.add_callback(ValidRateCallback(
    trainer))` adds `eval_valid_rate` (valid rankings under block-diffusion decoding) at each evaluation. Rows that
    SFTTrainer's truncation to `max_length` drops are reported, and `train(resume_from_checkpoint=True)` skips
    checkpoints a killed save left incomplete.
    """

    _tag_names = ["trl", "sft", "block-diffusion", "dgr2"]
    _name = "DiffusionSFT"

    def __init__(
        self,
        model,
        args: DiffusionSFTConfig | None = None,
        data_collator=None,
        train_dataset: Dataset | IterableDataset | None = None,
        eval_dataset=None,
        processing_class=None,
        peft_config=None,
        **kwargs,
    ):
        args = self._coerce_args(args, model)
        if train_dataset is None:
            raise ValueError("`train_dataset` is required")
        _check_dataset(train_dataset, "train")
        for name, dataset in (eval_dataset if isinstance(eval_dataset, dict) else {"eval": eval_dataset}).items():
            _check_dataset(dataset, name)
        init_kwargs = None
        if is_model_path(model):
            init_kwargs = trainer_model_init_kwargs(args)
            args.model_init_kwargs = None  # consumed here (SFTTrainer would warn about it)
        model, processing_class, settings = prepare_block_diffusion_model(
            model,
            processing_class,
            block_size=args.block_size,
            mask_token=args.mask_token,
            model_init_kwargs=init_kwargs,
        )
        args.block_size, args.mask_token = settings.block_size, settings.mask_token
        _check_tokenizer(processing_class, args, train_dataset)
        _drop_trl_fused_forward(model)
        self.block_settings = settings
        max_positions = getattr(model.config.get_text_config(), "max_position_embeddings", None)
        if max_positions is not None and settings.block_size > max_positions:
            raise ValueError(
                f"block_size={settings.block_size} does not fit the model's max_position_embeddings={max_positions}"
            )
        if data_collator is None:
            data_collator = DiffusionSFTCollator(
                tokenizer=getattr(processing_class, "tokenizer", processing_class),
                block_size=settings.block_size,
                answer_prefix=args.answer_prefix,
                answer_weight=args.answer_weight,
                reasoning_weight=args.reasoning_weight,
                pad_completion_to_block=args.pad_completion_to_block,
                max_positions=max_positions,
            )
        super().__init__(
            model,
            args=args,
            data_collator=data_collator,
            train_dataset=_with_sample_index(train_dataset),
            eval_dataset=_with_sample_index(eval_dataset),
            processing_class=processing_class,
            peft_config=peft_config,
            **kwargs,
        )
        # compute_loss divides by the weight total of the whole accumulated batch, so Trainer must not divide again
        self.loss_is_scaled_for_ga = True

    # ----------------------------------------------------------------------------------------------- set-up
    @staticmethod
    def _coerce_args(args, model) -> DiffusionSFTConfig:
        if args is None:
            name = os.fspath(model) if is_model_path(model) else getattr(model.config, "_name_or_path", "") or "model"
            return DiffusionSFTConfig(output_dir=f"{str(name).rstrip('/').split('/')[-1]}-CFT")
        if isinstance(args, DiffusionSFTConfig):
            return args
        if isinstance(args, SFTConfig) or hasattr(args, "to_dict"):
            values = args.to_dict()
            values["hub_token"] = getattr(args, "hub_token", None)
            return DiffusionSFTConfig(**values)
        raise TypeError(f"args must be a DiffusionSFTConfig, got {type(args).__name__}")

    def _prepare_dataset(self, dataset, processing_class, args, packing, formatting_func, dataset_name):
        """SFTTrainer's preparation, which drops the rows truncation to `max_length` leaves without a completion
        token (a prompt that fills `max_length` on its own) silently: report how many, and refuse a dataset with
        none left."""
        before = len(dataset) if isinstance(dataset, Dataset) else None
        dataset = super()._prepare_dataset(dataset, processing_class, args, packing, formatting_func, dataset_name)
        dropped = before - len(dataset) if before is not None and isinstance(dataset, Dataset) else 0
        if dropped and dropped == before:
            raise ValueError(
                f"truncation to max_length={args.max_length} leaves no completion token in any of the {before} rows "
                f"of the {dataset_name} dataset (the prompts fill max_length on their own); raise max_length"
            )
        if dropped:
            logger.warning(
                "%d of %d rows of the %s dataset were dropped: truncated to max_length=%s they keep no completion "
                "token (the prompt fills max_length on its own); raise max_length to train on them",
                dropped,
                before,
                dataset_name,
                args.max_length,
            )
        return dataset

    def _set_signature_columns_if_needed(self):
        super()._set_signature_columns_if_needed()
        if SAMPLE_INDEX not in self._signature_columns:  # keep the noise key through `remove_unused_columns`
            self._signature_columns = [*self._signature_columns, SAMPLE_INDEX]

    # ----------------------------------------------------------------------------------------------- noise and rows
    def _add_noise(self, batch: dict, epoch) -> None:
        noise = per_sample_noise(
            batch["completion_mask"],
            batch["sample_index"],
            self.block_settings.block_size,
            self.args.noise_schedule,
            self.args.min_mask_ratio,
            self.args.max_mask_ratio,
            self.args.antithetic_noise,
            self.args.seed,
            epoch,
        )
        batch["noisy_mask"], batch["noise_t"] = noise.noisy_mask, noise.t

    def _rows(self, batch: dict) -> dict:
        """The rows that go through the model: the batch, plus its inverse-mask copy with complementary masking."""
        rows = {
            k: batch[k] for k in ("prompt_ids", "prompt_mask", "completion_ids", "completion_mask", "token_weights")
        }
        rows["noisy_mask"], rows["noise_t"] = batch["noisy_mask"].bool(), batch["noise_t"]
        if self.args.complementary_masking:
            inverse = ~rows["noisy_mask"] & rows["completion_mask"].bool()
            inverse_t = complementary_time(
                rows["noise_t"], self.args.noise_schedule, self.args.min_mask_ratio, self.args.max_mask_ratio
            )
            rows = {k: torch.cat([v, v]) for k, v in rows.items()}
            half = inverse.shape[0]
            rows["noisy_mask"][half:], rows["noise_t"][half:] = inverse, inverse_t
        return rows

    def _normalization(self) -> str:
        if self.args.loss_normalization != "auto":
            return self.args.loss_normalization
        return "completion" if self.args.time_weighting else "masked"

    def _denominator(self, batch: dict) -> torch.Tensor:
        """Sum of the token weights the loss is averaged over (all completion tokens, or the masked ones)."""
        rows = self._rows(batch)
        weights = rows["token_weights"].double() * rows["completion_mask"].double()
        if self._normalization() == "masked":
            weights = weights * rows["noisy_mask"].double()
        return weights.sum()

    def _epoch(self) -> int:
        return int(math.floor(self.state.epoch or 0))

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        """Fetch the micro-batches of one optimizer step, draw their noise, and return the loss denominator of the
        whole accumulated batch (summed over processes when `average_tokens_across_devices`)."""
        batch_samples, _ = super().get_batch_samples(epoch_iterator, num_batches, device)
        total = torch.zeros((), dtype=torch.float64, device=device)
        for batch in batch_samples:
            self._add_noise(batch, self._epoch())
            total = total + self._denominator(batch).to(device)
        if self.args.average_tokens_across_devices and self.args.world_size > 1:
            total = self.accelerator.gather(total).sum()
        return batch_samples, total

    # ----------------------------------------------------------------------------------------------- loss
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        mode = "train" if model.training else "eval"
        if "noisy_mask" not in inputs:  # evaluation (or a caller outside the training loop): fixed eval noise
            self._add_noise(inputs, "eval" if mode == "eval" else self._epoch())
        rows = self._rows(inputs)
        # The core calls the decoder and the LM head directly, so it runs inside the DDP/FSDP/DeepSpeed wrapper's
        # forward; that bypasses accelerate's autocast patch of `model.forward`, hence the explicit autocast.
        with self.accelerator.autocast():
            output = through_wrapper(self, model, self._diffusion_loss, rows)
        denominator = self._denominator(inputs) if num_items_in_batch is None else num_items_in_batch
        denominator = torch.as_tensor(denominator, device=output.loss_sum.device, dtype=output.loss_sum.dtype)
        loss = output.loss_sum / denominator.clamp(min=1e-8)
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            # the denominator counts every process's tokens and DDP averages the gradients over processes
            loss = loss * self.accelerator.num_processes
        self._log_batch_metrics(inputs, mode)
        if return_outputs:
            return loss, CausalLMOutput(loss=loss.detach(), logits=None)
        return loss

    def _diffusion_loss(self, model, rows: dict):
        output = self._masked_diffusion_loss(model, rows)
        if self.args.ar_loss_weight > 0:
            # the denominator counts complementary copies too; their AR loss is the original rows' again
            copies = 2 if self.args.complementary_masking else 1
            n = rows["prompt_ids"].shape[0] // copies
            ar_sum = causal_lm_loss_sum(
                model,
                rows["prompt_ids"][:n],
                rows["prompt_mask"][:n],
                rows["completion_ids"][:n],
                rows["completion_mask"][:n],
                self.block_settings.mask_token_id,
                rows["token_weights"][:n],
            )
            output.loss_sum = output.loss_sum + self.args.ar_loss_weight * copies * ar_sum
        return output

    def _masked_diffusion_loss(self, model, rows: dict):
        return masked_diffusion_loss(
            model,
            rows["prompt_ids"],
            rows["prompt_mask"],
            rows["completion_ids"],
            rows["completion_mask"],
            BlockNoise(rows["noisy_mask"], rows["noise_t"]),
            self.block_settings.mask_token_id,
            self.block_settings.block_size,
            schedule=self.args.noise_schedule,
            time_weighting=self.args.time_weighting,
            token_weights=rows["token_weights"],
        )

    def _log_batch_metrics(self, inputs: dict, mode: str) -> None:
        completion = inputs["completion_mask"].bool()
        masked = (inputs["noisy_mask"].bool() & completion).sum()
        counts = self.accelerator.gather_for_metrics(torch.stack([masked, completion.sum()]).reshape(1, 2)).sum(0)
        self._metrics[mode]["mask_ratio"].append((counts[0] / counts[1].clamp(min=1)).item())
        if mode == "train":
            tokens = inputs["prompt_mask"].sum() + inputs["completion_mask"].sum()
            self._total_train_tokens += self.accelerator.gather_for_metrics(tokens.reshape(1)).sum().item()
        self._metrics[mode]["num_tokens"] = [self._total_train_tokens]

    # ----------------------------------------------------------------------------------------------- evaluation
    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval"):
        """SFTTrainer's evaluation: the diffusion loss with fixed per-sample noise (a dataset passed here gets the
        row index its noise is keyed by). For `eval_valid_rate`, add a `ValidRateCallback`."""
        return super().evaluate(
            eval_dataset=_with_sample_index(eval_dataset), ignore_keys=ignore_keys, metric_key_prefix=metric_key_prefix
        )
