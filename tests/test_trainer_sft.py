"""DiffusionSFTTrainer: batching, noise, loss scaling, conversion, PEFT, checkpoints and configuration errors."""

import copy
import functools
import json
import random

import pytest
import torch
from datasets import Dataset
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from dgr2_trl import convert_to_block_diffusion, get_block_diffusion_settings, masked_diffusion_loss
from dgr2_trl.data import RANKING_ANSWER_PREFIX
from dgr2_trl.modeling import BlockNoise, tiny_causal_lm
from dgr2_trl.tokenization import train_chat_tokenizer
from dgr2_trl.trainers import DiffusionSFTCollator, DiffusionSFTConfig, DiffusionSFTTrainer, answer_start
from dgr2_trl.trainers.diffusion_sft_data import per_sample_noise


ITEM_IDS = [f"i{k}" for k in range(16)]


def synthetic_rows(n, seed=0, num_candidates=4, vary_length=False):
    """Ranking rows in the builder's column format. The target ranking is the candidates in prompt order (so a
    model must copy them: a valid permutation is not a constant string)."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        k = rng.randint(2, 6) if vary_length else num_candidates
        cands = rng.sample(ITEM_IDS, k)
        rows.append(
            {
                "prompt": [{"role": "user", "content": "Candidates: " + " ".join(cands) + "\nRank them."}],
                "completion": [
                    {"role": "assistant", "content": f"First is {cands[0]}.\n" + json.dumps({"ranking": cands})}
                ],
                "candidates": cands,
                "target": cands[0],
            }
        )
    return Dataset.from_list(rows)


@functools.lru_cache(maxsize=1)
def _base_tokenizer():
    texts = [
        m["content"] for r in synthetic_rows(256, seed=99, vary_length=True) for m in r["prompt"] + r["completion"]
    ]
    return train_chat_tokenizer(texts, vocab_size=400)


def synthetic_tokenizer():
    return copy.deepcopy(_base_tokenizer())


def tiny_model(tok, dtype=torch.float32, seed=0, **kwargs):
    # one spare row so conversion needs no resize
    kwargs = {"hidden_size": 64, "num_layers": 2, **kwargs}
    return tiny_causal_lm(len(tok) + 1, "qwen3", dtype=dtype, seed=seed, pad_token_id=tok.pad_token_id,
                          eos_token_id=tok.eos_token_id, **kwargs)  # fmt: skip


def cpu_args(tmp_path, **overrides):
    values = dict(
        output_dir=str(tmp_path), report_to="none", use_cpu=True, bf16=False, activation_checkpointing=False,
        dataloader_num_workers=0, disable_tqdm=True, save_strategy="no", per_device_train_batch_size=4,
        lr_scheduler_type="constant", warmup_steps=0, logging_steps=1, block_size=4, seed=0,
    )  # fmt: skip
    values.update(overrides)
    return DiffusionSFTConfig(**values)


# ------------------------------------------------------------------------------------------------ collator / noise
def test_collator_splits_pads_with_eos_to_the_block_and_weights_the_answer():
    tok = synthetic_tokenizer()
    row = synthetic_rows(1)[0]
    text = tok.apply_chat_template(row["prompt"] + row["completion"], tokenize=False)
    prompt_text = tok.apply_chat_template(row["prompt"], tokenize=False, add_generation_prompt=True)
    ids = tok(text, add_special_tokens=False)["input_ids"]
    n_prompt = len(tok(prompt_text, add_special_tokens=False)["input_ids"])
    labels = [-100] * n_prompt + ids[n_prompt:]
    collator = DiffusionSFTCollator(
        tok, block_size=8, answer_prefix=RANKING_ANSWER_PREFIX, answer_weight=3.0, reasoning_weight=0.5
    )
    short = {"input_ids": ids[: n_prompt + 3], "labels": labels[: n_prompt + 3], "dgr2_sample_index": 1}
    batch = collator([{"input_ids": ids, "labels": labels, "dgr2_sample_index": 0}, short])

    assert batch["prompt_ids"].shape[1] == n_prompt and batch["prompt_mask"].all()
    completion = batch["completion_ids"][0][batch["completion_mask"][0].bool()].tolist()
    assert len(completion) % 8 == 0
    eos = tok.eos_token_id
    first_eos = completion.index(eos)
    # ChatML's newline after <|im_end|> is replaced by EOS padding up to the block end
    assert set(completion[first_eos:]) == {eos} and len(completion) - first_eos > 1
    assert tok.decode(completion[:first_eos]) == row["completion"][0]["content"]
    weights = batch["token_weights"][0][: len(completion)].tolist()
    start = weights.index(3.0)
    assert set(weights[:start]) == {0.5} and set(weights[start:]) == {3.0}
    assert '{"ranking"' in tok.decode(completion[start:]) and "{" not in tok.decode(completion[:start])
    # a truncated completion (no EOS) is neither cut nor padded; right padding is masked out
    assert batch["completion_mask"][1].sum() == 3 and batch["sample_index"].tolist() == [0, 1]


def test_answer_start_survives_merges_across_the_prefix():
    tok = synthetic_tokenizer()
    text = 'So.\n{"ranking": ["i1", "i2"]}'
    ids = tok(text, add_special_tokens=False)["input_ids"]
    start = answer_start(tok, ids, '{"ranking"')
    assert "{" in tok.decode(ids[start : start + 1]) and "{" not in tok.decode(ids[:start])
    assert answer_start(tok, ids, "no such prefix") == len(ids)


def test_noise_of_a_sample_does_not_depend_on_its_batch():
    mask = torch.tensor([[1] * 9 + [0] * 3, [1] * 12, [1] * 5 + [0] * 7]).bool()
    args = dict(block_size=4, schedule="linear", min_t=0.1, max_t=1.0, antithetic=True, seed=3, epoch=0)
    together = per_sample_noise(mask, torch.tensor([7, 8, 9]), **args)
    alone = per_sample_noise(mask[2:, :5], torch.tensor([9]), **args)
    assert torch.equal(together.noisy_mask[2, :5], alone.noisy_mask[0]) and not together.noisy_mask[2, 5:].any()
    other_epoch = per_sample_noise(mask, torch.tensor([7, 8, 9]), **{**args, "epoch": 1})
    assert not torch.equal(together.noisy_mask, other_epoch.noisy_mask)


# ------------------------------------------------------------------------------------------------ loss
def test_trainer_loss_is_the_core_masked_diffusion_loss(tmp_path):
    tok = synthetic_tokenizer()
    args = cpu_args(tmp_path, answer_weight=2.0, answer_prefix=RANKING_ANSWER_PREFIX, complementary_masking=False)
    trainer = DiffusionSFTTrainer(
        tiny_model(tok, torch.float64), args=args, train_dataset=synthetic_rows(8), processing_class=tok
    )
    batch = next(iter(trainer.get_train_dataloader()))
    trainer._add_noise(batch, 0)
    loss = trainer.compute_loss(trainer.model, dict(batch))
    settings = trainer.block_settings
    expected = masked_diffusion_loss(
        trainer.model, batch["prompt_ids"], batch["prompt_mask"], batch["completion_ids"], batch["completion_mask"],
        BlockNoise(batch["noisy_mask"], batch["noise_t"]), settings.mask_token_id, settings.block_size,
        token_weights=batch["token_weights"],
    ).loss("completion")  # fmt: skip
    torch.testing.assert_close(loss, expected, rtol=1e-12, atol=0)
    assert 0 < batch["noisy_mask"].sum() < batch["completion_mask"].sum()


@pytest.mark.parametrize("complementary", [False, True])
def test_joint_ar_loss_is_added_on_the_same_batch(tmp_path, complementary):
    """With `ar_loss_weight` w the loss is diffusion + w x (HF's own causal-LM loss sum over the completion tokens,
    answer-weighted), over the same denominator."""
    tok = synthetic_tokenizer()
    model = tiny_model(tok, torch.float64)
    losses = {}
    for weight in (0.0, 0.5):
        args = cpu_args(tmp_path, ar_loss_weight=weight, complementary_masking=complementary)
        trainer = DiffusionSFTTrainer(model, args=args, train_dataset=synthetic_rows(8), processing_class=tok)
        batch = next(iter(trainer.get_train_dataloader()))
        trainer._add_noise(batch, 0)
        losses[weight] = trainer.compute_loss(trainer.model, dict(batch))
        denominator = trainer._denominator(batch)
    # the reference: HF's forward on prompt + completion, one row at a time (no padding), summed token losses
    model = trainer.model
    total = 0.0
    for row in range(batch["prompt_ids"].shape[0]):
        prompt = batch["prompt_ids"][row][batch["prompt_mask"][row].bool()]
        keep = batch["completion_mask"][row].bool()
        completion = batch["completion_ids"][row][keep]
        ids = torch.cat([prompt, completion])[None]
        logits = model(ids).logits[0, len(prompt) - 1 : -1].double()
        logits[:, trainer.block_settings.mask_token_id] = float("-inf")
        nll = torch.nn.functional.cross_entropy(logits, completion, reduction="none")
        total = total + (batch["token_weights"][row][keep].double() * nll).sum()
    copies = 2 if complementary else 1
    torch.testing.assert_close(losses[0.5] - losses[0.0], 0.5 * copies * total / denominator, rtol=1e-9, atol=0)


@pytest.mark.parametrize("normalization,complementary", [("auto", False), ("masked", True)])
def test_gradient_accumulation_equals_one_large_batch(tmp_path, normalization, complementary):
    tok = synthetic_tokenizer()
    data = synthetic_rows(
        8, seed=5, vary_length=True
    )  # unequal completion lengths: a per-micro-batch mean would differ
    start = tiny_model(tok, torch.float64, seed=1)
    deltas = []
    for bs, accumulation in ((2, 2), (4, 1)):
        args = cpu_args(
            tmp_path / f"bs{bs}", per_device_train_batch_size=bs, gradient_accumulation_steps=accumulation, max_steps=1,
            optim="sgd", learning_rate=1.0, weight_decay=0.0, max_grad_norm=0.0, answer_weight=2.0, answer_prefix=RANKING_ANSWER_PREFIX,
            loss_normalization=normalization, complementary_masking=complementary,
        )  # fmt: skip
        model = copy.deepcopy(start)
        trainer = DiffusionSFTTrainer(model, args=args, train_dataset=data, processing_class=synthetic_tokenizer())
        trainer.train()
        deltas.append({n: p.detach() - start.state_dict()[n] for n, p in model.named_parameters()})
    for name, delta in deltas[0].items():
        torch.testing.assert_close(delta, deltas[1][name], rtol=1e-9, atol=1e-12, msg=name)
    assert max(d.abs().max() for d in deltas[0].values()) > 1e-4


def test_loss_decreases_on_a_tiny_dataset(tmp_path):
    tok = synthetic_tokenizer()
    args = cpu_args(tmp_path, max_steps=40, learning_rate=3e-3, per_device_train_batch_size=16)
    trainer = DiffusionSFTTrainer(
        tiny_model(tok),
        args=args,
        train_dataset=synthetic_rows(256),
        eval_dataset=synthetic_rows(32, seed=1),
        processing_class=tok,
    )
    before = trainer.evaluate()["eval_loss"]
    assert trainer.evaluate()["eval_loss"] == before  # eval noise is fixed per sample
    trainer.train()
    after = trainer.evaluate()
    assert after["eval_loss"] < 0.6 * before, (before, after)
    logged = [entry for entry in trainer.state.log_history if "loss" in entry and "mask_ratio" in entry]
    assert logged and all(0.1 < e["mask_ratio"] < 0.9 for e in logged)


# ------------------------------------------------------------------------------------------------ models, PEFT, IO
def test_converts_an_ar_model_and_keeps_a_converted_ones_settings(tmp_path):
    tok = synthetic_tokenizer()
    trainer = DiffusionSFTTrainer(
        tiny_model(tok), args=cpu_args(tmp_path, block_size=8), train_dataset=synthetic_rows(4), processing_class=tok
    )
    assert get_block_diffusion_settings(trainer.model).block_size == 8 and tok.mask_token == "<|mask|>"

    model, converted_tok = convert_to_block_diffusion(
        tiny_model(synthetic_tokenizer()), synthetic_tokenizer(), block_size=2, mask_token="<|m|>"
    )
    args = cpu_args(tmp_path, block_size=None)
    trainer = DiffusionSFTTrainer(model, args=args, train_dataset=synthetic_rows(4), processing_class=converted_tok)
    assert trainer.block_settings.block_size == 2 and trainer.block_settings.mask_token == "<|m|>"
    assert args.block_size == 2 and args.mask_token == "<|m|>"
    with pytest.raises(ValueError, match="mask_token"):
        DiffusionSFTTrainer(
            model,
            args=cpu_args(tmp_path, mask_token="<|other|>"),
            train_dataset=synthetic_rows(4),
            processing_class=converted_tok,
        )


def test_lora_trains_the_adapter_and_freezes_the_base(tmp_path):
    from peft import LoraConfig

    tok = synthetic_tokenizer()
    model = tiny_model(tok)
    base = {n: p.detach().clone() for n, p in model.named_parameters()}
    peft_config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0)
    args = cpu_args(tmp_path, max_steps=3, learning_rate=1e-2)
    trainer = DiffusionSFTTrainer(
        model, args=args, train_dataset=synthetic_rows(16), processing_class=tok, peft_config=peft_config
    )
    trainer.train()
    lora_b = [p for n, p in trainer.model.named_parameters() if "lora_B" in n]
    assert lora_b and all(p.abs().max() > 0 for p in lora_b)  # lora_B starts at zero
    for name, param in trainer.model.get_base_model().named_parameters():
        if "lora_" not in name:
            assert not param.requires_grad
            torch.testing.assert_close(param, base[name.replace(".base_layer", "")], rtol=0, atol=0)
    assert get_block_diffusion_settings(trainer.model).block_size == 4


def test_checkpoint_keeps_block_settings_and_resume_continues_the_run(tmp_path):
    tok = synthetic_tokenizer()
    start = tiny_model(tok, torch.float64, seed=2)
    data = synthetic_rows(32, seed=3)
    common = dict(max_steps=4, save_strategy="steps", save_steps=2, learning_rate=1e-2, per_device_train_batch_size=4)
    full = DiffusionSFTTrainer(
        copy.deepcopy(start), args=cpu_args(tmp_path / "full", **common), train_dataset=data, processing_class=tok
    )
    full.train()
    checkpoint = tmp_path / "full" / "checkpoint-2"
    assert AutoConfig.from_pretrained(checkpoint).block_diffusion == {
        "block_size": 4,
        "mask_token": "<|mask|>",
        "mask_token_id": len(_base_tokenizer()),
    }
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "full" / "checkpoint-4", dtype=torch.float64)
    assert get_block_diffusion_settings(loaded) == full.block_settings
    assert AutoTokenizer.from_pretrained(checkpoint).mask_token == "<|mask|>"
    for name, param in loaded.named_parameters():
        torch.testing.assert_close(param, full.model.state_dict()[name], rtol=0, atol=0)

    resumed = DiffusionSFTTrainer(
        copy.deepcopy(start),
        args=cpu_args(tmp_path / "resumed", **common),
        train_dataset=data,
        processing_class=synthetic_tokenizer(),
    )
    resumed.train(resume_from_checkpoint=str(checkpoint))
    assert resumed.state.global_step == 4
    for name, param in resumed.model.named_parameters():  # same data order and same per-sample noise
        torch.testing.assert_close(param, full.model.state_dict()[name], rtol=1e-9, atol=1e-12)

    # a converted checkpoint path is accepted as the model, with its own settings
    again = DiffusionSFTTrainer(
        str(checkpoint), args=cpu_args(tmp_path / "again", block_size=None), train_dataset=data
    )
    assert again.block_settings == full.block_settings


# ------------------------------------------------------------------------------------------------ errors
@pytest.mark.parametrize(
    "overrides,match",
    [({"block_size": 0}, "block_size"), ({"packing": True}, "packing"), ({"min_mask_ratio": 0.0}, "min_mask_ratio"),
     ({"noise_schedule": "cubic"}, "noise_schedule"), ({"completion_only_loss": False}, "completion"),
     ({"answer_weight": 0.0, "reasoning_weight": 0.0}, "weight"), ({"answer_weight": 2.0}, "answer_prefix")],
)  # fmt: skip
def test_bad_configuration_is_refused(tmp_path, overrides, match):
    with pytest.raises(ValueError, match=match):
        cpu_args(tmp_path, **overrides)


def test_bad_model_or_data_is_refused(tmp_path):
    tok = synthetic_tokenizer()
    short = tiny_model(tok, max_position_embeddings=16)
    with pytest.raises(ValueError, match="max_position_embeddings"):
        DiffusionSFTTrainer(
            short, args=cpu_args(tmp_path, block_size=32), train_dataset=synthetic_rows(4), processing_class=tok
        )
    no_completion = Dataset.from_list([{"prompt": "a", "answer": "b"}])
    with pytest.raises(ValueError, match="prompt-completion"):
        DiffusionSFTTrainer(
            tiny_model(tok), args=cpu_args(tmp_path), train_dataset=no_completion, processing_class=tok
        )
    rows = synthetic_rows(3).to_list()
    rows[1]["completion"] = [{"role": "assistant", "content": "  "}]
    with pytest.raises(ValueError, match=r"empty completions at rows \[1\]"):
        DiffusionSFTTrainer(
            tiny_model(tok), args=cpu_args(tmp_path), train_dataset=Dataset.from_list(rows), processing_class=tok
        )
