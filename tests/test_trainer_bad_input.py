"""The three trainers on bad input (issue 18): an attention backend that ignores the block mask, a tokenizer without
pad/eos, rollout settings out of range, datasets without `prompt` or with prompts the model cannot hold, rows
dropped by truncation, and resuming from a checkpoint a killed save left incomplete."""

import copy
import json
import logging
import os

import pytest
import torch
from datasets import Dataset
from peft import LoraConfig, get_peft_model

from dgr2_trl.modeling import convert_to_block_diffusion, tiny_causal_lm
from dgr2_trl.trainers import (
    DiffusionGRPOConfig,
    DiffusionGRPOTrainer,
    DiffusionSFTConfig,
    DiffusionSFTTrainer,
    OnPolicyDistillConfig,
    OnPolicyDistillTrainer,
)
from dgr2_trl.trainers.checkpoints import checkpoint_problem, last_complete_checkpoint

from .conftest import CORPUS, PROMPTS, make_converted


TRAINERS = ["sft", "grpo", "opd"]
LONG_PROMPT = " ".join(CORPUS[:6])  # about 60 tokens


def sft(model, tok, tmp_path, dataset=None, **overrides):
    values = dict(
        output_dir=str(tmp_path),
        report_to="none",
        use_cpu=True,
        bf16=False,
        disable_tqdm=True,
        activation_checkpointing=False,
        dataloader_num_workers=0,
        save_strategy="no",
        per_device_train_batch_size=4,
        block_size=4,
        max_steps=1,
        seed=0,
    )
    values.update(overrides)
    dataset = dataset if dataset is not None else Dataset.from_dict({"prompt": PROMPTS, "completion": PROMPTS[::-1]})
    return DiffusionSFTTrainer(model, args=DiffusionSFTConfig(**values), train_dataset=dataset, processing_class=tok)


def grpo(model, tok, tmp_path, dataset=None, eval_dataset=None, **overrides):
    values = dict(
        output_dir=str(tmp_path),
        report_to="none",
        use_cpu=True,
        bf16=False,
        disable_tqdm=True,
        save_strategy="no",
        per_device_train_batch_size=4,
        num_generations=4,
        max_completion_length=8,
        block_size=4,
        max_steps=1,
    )
    values.update(overrides)
    dataset = dataset if dataset is not None else Dataset.from_dict({"prompt": PROMPTS})
    return DiffusionGRPOTrainer(
        model,
        args=DiffusionGRPOConfig(**values),
        train_dataset=dataset,
        eval_dataset=eval_dataset,
        processing_class=tok,
    )


def opd(student, tok, tmp_path, dataset=None, eval_dataset=None, **overrides):
    values = dict(
        output_dir=str(tmp_path),
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
        save_strategy="no",
        per_device_train_batch_size=2,
        num_rollouts_per_prompt=2,
        max_completion_length=8,
        teacher_top_k=4,
        max_steps=1,
        gradient_checkpointing=False,
    )
    values.update(overrides)
    dataset = dataset if dataset is not None else Dataset.from_dict({"prompt": PROMPTS})
    # the teacher is the AR model with the student's vocabulary but its mask row
    teacher = tiny_causal_lm(student.get_input_embeddings().weight.shape[0] - 1, "qwen3", seed=3)
    return OnPolicyDistillTrainer(
        student,
        teacher,
        args=OnPolicyDistillConfig(**values),
        train_dataset=dataset,
        eval_dataset=eval_dataset,
        processing_class=tok,
    )


def build(name, tokenizer, tmp_path, **kwargs):
    """A trainer of each kind on an already converted model (the AR one for CFT would be converted anyway)."""
    model, tok = make_converted(tokenizer, dtype=torch.float32)
    return {"sft": sft, "grpo": grpo, "opd": opd}[name](model, tok, tmp_path, **kwargs)


# ------------------------------------------------------------------------------------------------ 4D mask support
@pytest.fixture(scope="module")
def causal_only_attention():
    """An attention function that drops the custom mask and attends causally, as FlashAttention-2 does."""
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    def causal_only(module, query, key, value, attention_mask, **kwargs):
        return sdpa_attention_forward(module, query, key, value, None, is_causal=True, **kwargs)

    AttentionInterface.register("causal_only_test", causal_only)
    return "causal_only_test"


@pytest.mark.parametrize("name", ["sft", "sft_peft", "grpo", "opd"])
def test_a_converted_model_on_a_backend_that_ignores_4d_masks_is_refused(
    tokenizer, tmp_path, name, causal_only_attention
):
    model, tok = make_converted(tokenizer, dtype=torch.float32)
    model.set_attn_implementation(causal_only_attention)
    if name == "sft_peft":  # a converted model wrapped by the user: CFT does not convert (nor probe) it again
        model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    build_trainer = {"sft": sft, "sft_peft": sft, "grpo": grpo, "opd": opd}[name]
    with pytest.raises(ValueError, match="ignores a custom 4D attention mask"):
        build_trainer(model, tok, tmp_path)


# ------------------------------------------------------------------------------------------------ tokenizer
def without(tokenizer, *roles):
    tokenizer = copy.deepcopy(tokenizer)
    for role in roles:
        setattr(tokenizer, role, None)
    return tokenizer


@pytest.mark.parametrize("name", TRAINERS)
def test_a_tokenizer_without_pad_and_eos_is_refused_at_construction(tokenizer, tmp_path, name):
    model, tok = make_converted(tokenizer, dtype=torch.float32)
    build_trainer = {"sft": sft, "grpo": grpo, "opd": opd}[name]
    with pytest.raises(ValueError, match="neither a pad token nor an eos token"):
        build_trainer(model, without(tok, "pad_token", "eos_token"), tmp_path)


@pytest.mark.parametrize("name", ["grpo", "opd"])
def test_a_tokenizer_without_eos_leaves_no_none_among_the_eos_ids(tokenizer, tmp_path, name):
    """TRL lists the missing eos id as None, which the sampler turned into a TypeError at the first rollout."""
    model, tok = make_converted(tokenizer, dtype=torch.float32)
    trainer = {"grpo": grpo, "opd": opd}[name](model, without(tok, "eos_token"), tmp_path)
    assert None not in trainer.eos_token_ids


def test_cft_of_text_completions_needs_an_eos_token(tokenizer, tmp_path):
    model, tok = make_converted(tokenizer, dtype=torch.float32)
    with pytest.raises(ValueError, match="has no eos token"):
        sft(model, without(tok, "eos_token"), tmp_path)


# ------------------------------------------------------------------------------------------------ configuration
@pytest.mark.parametrize("config", [DiffusionGRPOConfig, OnPolicyDistillConfig])
@pytest.mark.parametrize(
    "overrides,match",
    [({"max_steps_per_block": -1}, "max_steps_per_block"), ({"max_steps_per_block": 0}, "max_steps_per_block"),
     ({"max_steps_per_block": 2.5}, "max_steps_per_block"), ({"threshold": 1.5}, "threshold"),
     ({"threshold": -0.1}, "threshold"), ({"threshold": float("nan")}, "threshold"), ({"block_size": 0}, "block_size"),
     ({"max_completion_length": 0}, "max_completion_length"),
     ({"max_completion_length": None}, "max_completion_length"), ({"fallback": "random"}, "fallback")],
)  # fmt: skip
def test_rollout_settings_out_of_range_are_refused(tmp_path, config, overrides, match):
    with pytest.raises(ValueError, match=match):
        config(output_dir=str(tmp_path), use_cpu=True, report_to="none", **overrides)


def test_rollout_settings_in_range_are_kept(tmp_path):
    for config in (DiffusionGRPOConfig, OnPolicyDistillConfig):
        args = config(output_dir=str(tmp_path), use_cpu=True, report_to="none", max_steps_per_block=1, threshold=1.0)
        assert (args.max_steps_per_block, args.threshold) == (1, 1.0)


@pytest.mark.parametrize(
    "field", ["valid_rate_num_prompts", "valid_rate_max_new_tokens", "valid_rate_threshold", "valid_rate_batch_size"]
)
def test_cft_validity_probe_fields_are_refused_naming_the_callback(tmp_path, field):
    """The probe moved to `ValidRateCallback`: its former config fields fail, saying where it went, whatever value
    (also the former "off" value 0)."""
    with pytest.raises(TypeError, match=rf"no longer has {field}: .*ValidRateCallback\(trainer, num_prompts="):
        DiffusionSFTConfig(output_dir=str(tmp_path), use_cpu=True, report_to="none", **{field: 0})
    assert not hasattr(DiffusionSFTConfig(output_dir=str(tmp_path), use_cpu=True, report_to="none"), field)


# ------------------------------------------------------------------------------------------------ datasets
@pytest.mark.parametrize("name", ["grpo", "opd"])
def test_a_dataset_without_prompt_is_refused_at_construction(tokenizer, tmp_path, name):
    questions = Dataset.from_dict({"question": PROMPTS, "candidates": [["a"]] * len(PROMPTS)})
    with pytest.raises(ValueError, match=r"train dataset needs a 'prompt' column.*\['question', 'candidates'\]"):
        build(name, tokenizer, tmp_path, dataset=questions)
    with pytest.raises(ValueError, match=r"eval\['dev'\] dataset needs a 'prompt' column.*\['question'"):
        build(name, tokenizer, tmp_path, eval_dataset={"dev": questions})


def short_model(tokenizer, max_position_embeddings=32):
    model = tiny_causal_lm(len(tokenizer) + 1, "qwen3", max_position_embeddings=max_position_embeddings)
    return convert_to_block_diffusion(model, copy.deepcopy(tokenizer), block_size=4)


@pytest.mark.parametrize("name", ["grpo", "opd"])
def test_prompts_the_model_cannot_hold_are_refused_at_construction(tokenizer, tmp_path, name):
    """Prompt + the rollout's whole blocks beyond max_position_embeddings: refused naming the dataset row (the
    sampler would only refuse it at the first step that draws it, by its place in the batch)."""
    build_trainer = {"grpo": grpo, "opd": opd}[name]
    assert len(tokenizer(LONG_PROMPT, add_special_tokens=False)["input_ids"]) > 32
    prompts = Dataset.from_dict({"prompt": [PROMPTS[0], PROMPTS[1], LONG_PROMPT, PROMPTS[2]]})
    with pytest.raises(
        ValueError,
        match=r"row 2 of the train dataset has a prompt of \d+ tokens.*"
        r"max_completion_length=8 .*max_position_embeddings=32",
    ):
        build_trainer(*short_model(tokenizer), tmp_path, dataset=prompts)
    chat = Dataset.from_dict({"prompt": [[{"role": "user", "content": p}] for p in (PROMPTS[0], LONG_PROMPT)]})
    with pytest.raises(ValueError, match=r"row 1 of the eval dataset"):
        build_trainer(*short_model(tokenizer), tmp_path, eval_dataset=chat)
    with pytest.raises(ValueError, match="leaves no room for a prompt"):
        build_trainer(*short_model(tokenizer), tmp_path, max_completion_length=30)  # 8 blocks of 4 = 32 positions
    with pytest.raises(ValueError, match=r"row 1 of the train dataset: its prompt cannot be encoded"):
        build_trainer(*short_model(tokenizer), tmp_path, dataset=Dataset.from_dict({"prompt": ["ok", ""]}))


def test_rows_dropped_by_truncation_are_reported(tokenizer, tmp_path, caplog):
    """SFTTrainer drops the rows whose prompt fills `max_length` on its own, without a word: CFT reports them."""
    model, tok = make_converted(tokenizer, dtype=torch.float32)
    long_tokens = len(tokenizer(LONG_PROMPT, add_special_tokens=False)["input_ids"])
    rows = Dataset.from_dict(
        {
            "prompt": ["rank", LONG_PROMPT, "json list", LONG_PROMPT, "the lazy dog"],
            "completion": ["ids", "of ids", "the fox", "dog", "cream"],
        }
    )
    with caplog.at_level(logging.WARNING, logger="dgr2_trl"):
        trainer = sft(model, tok, tmp_path, dataset=rows, max_length=long_tokens - 2)
    assert len(trainer.train_dataset) == 3
    assert "2 of 5 rows of the train dataset were dropped" in caplog.text
    only_long = Dataset.from_dict({"prompt": [LONG_PROMPT] * 2, "completion": ["ids", "dog"]})
    with pytest.raises(ValueError, match="leaves no completion token in any of the 2 rows of the train dataset"):
        sft(model, tok, tmp_path, dataset=only_long, max_length=long_tokens - 2)


# ------------------------------------------------------------------------------------------------ checkpoints
def test_resume_skips_a_checkpoint_a_killed_save_left_incomplete(tokenizer, tmp_path, caplog):
    model, tok = make_converted(tokenizer, dtype=torch.float32)
    common = dict(max_steps=3, save_strategy="steps", save_steps=1, learning_rate=1e-2)
    sft(copy.deepcopy(model), copy.deepcopy(tok), tmp_path, **common).train()
    assert os.path.isfile(tmp_path / "checkpoint-3" / "trainer_state.json")
    os.remove(tmp_path / "checkpoint-3" / "trainer_state.json")  # killed before the save's last write
    (tmp_path / "checkpoint-2" / "trainer_state.json").write_text('{"global_step": 2, "log_hi')  # cut short
    resumed = sft(copy.deepcopy(model), copy.deepcopy(tok), tmp_path, **common)
    loaded, load = [], resumed._load_from_checkpoint
    resumed._load_from_checkpoint = lambda path, *args: loaded.append(os.path.basename(path)) or load(path, *args)
    with caplog.at_level(logging.WARNING, logger="dgr2_trl"):
        resumed.train(resume_from_checkpoint=True)
    assert "checkpoint-3: it has no trainer_state.json" in caplog.text
    assert "checkpoint-2: its trainer_state.json is not readable JSON" in caplog.text
    assert loaded == ["checkpoint-1"] and resumed.state.global_step == 3


def test_checkpoint_completeness(tmp_path):
    complete = tmp_path / "checkpoint-4"
    complete.mkdir()
    (complete / "model.safetensors").write_bytes(b"")
    (complete / "trainer_state.json").write_text(json.dumps({"global_step": 4}))
    assert checkpoint_problem(str(complete)) is None
    no_weights = tmp_path / "checkpoint-6"
    no_weights.mkdir()
    (no_weights / "trainer_state.json").write_text(json.dumps({"global_step": 6}))
    assert "holds no model weights" in checkpoint_problem(str(no_weights))
    adapter = tmp_path / "checkpoint-5"
    (adapter / "default").mkdir(parents=True)
    (adapter / "default" / "adapter_model.safetensors").write_bytes(b"")
    (adapter / "trainer_state.json").write_text(json.dumps({"global_step": 5}))
    assert checkpoint_problem(str(adapter)) is None
    assert last_complete_checkpoint(str(tmp_path)) == str(adapter)
    (adapter / "trainer_state.json").unlink()
    (complete / "trainer_state.json").unlink()
    with pytest.raises(ValueError, match=r"every checkpoint there is incomplete: \['checkpoint-4', 'checkpoint-5', "):
        last_complete_checkpoint(str(tmp_path))
    with pytest.raises(ValueError, match="No valid checkpoint found"):
        last_complete_checkpoint(str(tmp_path / "missing"))


@pytest.mark.parametrize("name", TRAINERS)
def test_resuming_from_an_incomplete_checkpoint_path_is_refused(tokenizer, tmp_path, name):
    partial = tmp_path / "run" / "checkpoint-3"
    partial.mkdir(parents=True)
    (partial / "model.safetensors").write_bytes(b"")  # the save was killed after the weights
    trainer = build(name, tokenizer, tmp_path / "run")
    with pytest.raises(ValueError, match=r"cannot resume from .*checkpoint-3: it has no trainer_state.json"):
        trainer.train(resume_from_checkpoint=str(partial))
    with pytest.raises(ValueError, match=r"No valid checkpoint found .*every checkpoint there is incomplete"):
        trainer.train(resume_from_checkpoint=True)
