"""LoRA (PEFT) with the trainers: `peft_config=LoraConfig(...)` trains the adapter only, the adapter saves and reloads
onto the converted base with `PeftModel.from_pretrained`, decodes the same tokens after the reload, and the
block-diffusion settings stay on the model.

OPD and GRPO are covered in full here; DiffusionSFTTrainer's adapter training is tested in test_trainer_sft.py, so it
is only run here for the save/reload part.
"""

import pytest
import torch
from datasets import Dataset
from peft import LoraConfig, PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from dgr2_trl.modeling import convert_to_block_diffusion, tiny_causal_lm
from dgr2_trl.samplers import BlockDiffusionSampler
from dgr2_trl.tokenization import train_chat_tokenizer
from dgr2_trl.trainers import (
    DiffusionGRPOConfig,
    DiffusionGRPOTrainer,
    DiffusionSFTConfig,
    DiffusionSFTTrainer,
    OnPolicyDistillConfig,
    OnPolicyDistillTrainer,
)
from tests.ranking_rows import ITEMS, ranking_rows


BLOCK = {"block_size": 4, "mask_token": "<|mask|>"}


def rows(n: int = 4) -> Dataset:
    return ranking_rows(n)


def length_reward(prompts, completions, **kwargs):
    """Varies within a group, so the GRPO advantages (and gradients) are not zero."""
    return [float(len(c if isinstance(c, str) else c[-1]["content"]) % 5) for c in completions]


@pytest.fixture(scope="module")
def converted_base(tmp_path_factory):
    """A converted block-diffusion base saved as a user would keep it (the output of CFT), with its tokenizer."""
    tok = train_chat_tokenizer(
        ["query rank these items into a ranking json list"] * 10, vocab_size=300, extra_special_tokens=ITEMS
    )
    ar = tiny_causal_lm(
        len(tok) + 1,
        "qwen3",
        hidden_size=32,
        num_layers=1,
        num_heads=2,
        num_kv_heads=1,
        intermediate_size=64,
        seed=0,
        initializer_range=0.5,
    )
    model, tok = convert_to_block_diffusion(ar, tok, block_size=BLOCK["block_size"])
    path = tmp_path_factory.mktemp("base")
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def build(name, base_path, out):
    model = AutoModelForCausalLM.from_pretrained(base_path)
    tok = AutoTokenizer.from_pretrained(base_path)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0)
    common = dict(
        output_dir=str(out),
        max_steps=1,
        report_to="none",
        save_strategy="no",
        use_cpu=True,
        bf16=False,
        learning_rate=3e-2,
        seed=0,
        disable_tqdm=True,
    )
    if name == "sft":
        args = DiffusionSFTConfig(**common, per_device_train_batch_size=4, activation_checkpointing=False)
        return DiffusionSFTTrainer(model, args=args, train_dataset=rows(), processing_class=tok, peft_config=lora)
    if name == "opd":
        teacher = tiny_causal_lm(
            len(tok),
            "qwen3",
            hidden_size=32,
            num_layers=1,
            num_heads=2,
            num_kv_heads=1,
            intermediate_size=64,
            seed=1,
            initializer_range=0.5,
        )
        args = OnPolicyDistillConfig(
            **common,
            per_device_train_batch_size=2,
            max_completion_length=8,
            num_rollouts_per_prompt=2,
            teacher_top_k=4,
            temperature=1.0,
            gradient_checkpointing=False,
        )
        return OnPolicyDistillTrainer(
            model, teacher, args=args, train_dataset=rows(), processing_class=tok, peft_config=lora
        )
    args = DiffusionGRPOConfig(
        **common,
        per_device_train_batch_size=8,
        num_generations=4,
        max_completion_length=8,
        threshold=0.5,
        temperature=1.0,
    )
    return DiffusionGRPOTrainer(
        model, reward_funcs=[length_reward], args=args, train_dataset=rows(), processing_class=tok, peft_config=lora
    )


def decode(model, tok):
    sampler = BlockDiffusionSampler(model.eval(), tok, threshold=0.5)
    with torch.no_grad():
        return sampler.generate(list(rows()["prompt"]), max_new_tokens=12).completion_ids


@pytest.mark.parametrize("name", ["opd", "grpo", "sft"])
def test_lora_step_trains_the_adapter_only_and_reloads(converted_base, tmp_path, name):
    trainer = build(name, converted_base, tmp_path / "run")
    assert isinstance(trainer.model, PeftModel)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()

    trained = dict(trainer.model.named_parameters())
    changed = {n for n, p in trained.items() if not torch.equal(p, before[n])}
    assert changed and all("lora_" in n for n in changed), sorted(changed)
    assert any("lora_B" in n for n in changed)  # lora_B starts at zero: the adapter now does something
    assert all(not p.requires_grad for n, p in trained.items() if "lora_" not in n)
    assert trainer.model.config.block_diffusion == {**BLOCK, "mask_token_id": trainer.model.config.vocab_size - 1}

    adapter = tmp_path / "adapter"
    trainer.save_model(str(adapter))
    tok = AutoTokenizer.from_pretrained(converted_base)
    expected = decode(trainer.model, tok)
    reloaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(converted_base), adapter)
    assert reloaded.config.block_diffusion == trainer.model.config.block_diffusion
    for n, p in reloaded.named_parameters():
        torch.testing.assert_close(p, trained[n], rtol=0, atol=0)
    assert decode(reloaded, tok) == expected
