"""`prepare_block_diffusion_model`, the one model preparation of the three trainers: an AR model (object or saved
path) is converted, a converted one reconciled with the asked settings (kept, block size re-stored with a warning,
another mask token refused), an AR PEFT model refused; and the three trainers make the same model of the same AR
model."""

import copy
import logging

import pytest
import torch
from datasets import Dataset
from peft import LoraConfig, get_peft_model

from dgr2_trl.modeling import convert_to_block_diffusion, get_block_diffusion_settings, tiny_causal_lm
from dgr2_trl.modeling.conversion import DEFAULT_BLOCK_SIZE, DEFAULT_MASK_TOKEN
from dgr2_trl.trainers import (
    DiffusionSFTConfig,
    OnPolicyDistillConfig,
    OnPolicyDistillTrainer,
    prepare_block_diffusion_model,
)
from dgr2_trl.trainers.model_prep import trainer_model_init_kwargs

from .conftest import PROMPTS, make_converted, make_model
from .test_trainer_bad_input import grpo, opd, sft


IDS = torch.tensor([[3, 17, 42, 5, 99, 7]])


def logits(model, ids=IDS):
    with torch.no_grad():
        return model.eval()(ids).logits


def test_an_ar_model_is_converted_as_convert_to_block_diffusion_does(tokenizer):
    model, tok = make_model(tokenizer), copy.deepcopy(tokenizer)
    reference, reference_tok = convert_to_block_diffusion(copy.deepcopy(model), copy.deepcopy(tokenizer), 4)
    prepared, prepared_tok, settings = prepare_block_diffusion_model(model, tok, block_size=4)
    assert prepared is model and prepared_tok is tok  # the objects given, converted in place
    assert settings == get_block_diffusion_settings(prepared) == get_block_diffusion_settings(reference)
    assert (settings.block_size, settings.mask_token, settings.mask_token_id) == (4, "<|mask|>", len(tokenizer))
    assert tok.mask_token == "<|mask|>" and len(tok) == len(reference_tok)
    torch.testing.assert_close(logits(prepared), logits(reference), rtol=0, atol=0)


def test_the_defaults_convert_with_the_default_block_size_and_mask_token(tokenizer):
    _, tok, settings = prepare_block_diffusion_model(make_model(tokenizer), copy.deepcopy(tokenizer))
    assert (settings.block_size, settings.mask_token) == (DEFAULT_BLOCK_SIZE, DEFAULT_MASK_TOKEN)
    _, tok, settings = prepare_block_diffusion_model(
        make_model(tokenizer), copy.deepcopy(tokenizer), block_size=2, mask_token="<|m|>"
    )
    assert (settings.block_size, settings.mask_token, tok.mask_token) == (2, "<|m|>", "<|m|>")
    for model in (make_model(tokenizer), make_converted(tokenizer)[0]):
        with pytest.raises(ValueError, match="block_size must be an integer >= 1"):
            prepare_block_diffusion_model(model, copy.deepcopy(tokenizer), block_size=0)


def test_an_ar_model_path_is_loaded_dense_with_its_tokenizer_and_converted(tokenizer, tmp_path):
    model = make_model(tokenizer, dtype=torch.float32)
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    reference, _ = convert_to_block_diffusion(copy.deepcopy(model), copy.deepcopy(tokenizer), 4)
    loaded, tok, settings = prepare_block_diffusion_model(
        str(tmp_path), block_size=4, model_init_kwargs={"dtype": torch.float64}
    )
    assert {p.dtype for p in loaded.parameters()} == {torch.float64}  # model_init_kwargs reached the loader
    assert loaded.config._attn_implementation == "sdpa"
    assert tok.mask_token == "<|mask|>" and tok.convert_tokens_to_ids("<|mask|>") == settings.mask_token_id
    assert settings == get_block_diffusion_settings(reference)
    reference = reference.double()
    for name, param in reference.state_dict().items():  # the saved weights (and the mask row conversion adds)
        torch.testing.assert_close(loaded.state_dict()[name], param, rtol=0, atol=0)
    torch.testing.assert_close(logits(loaded), logits(reference), rtol=0, atol=0)
    # a pathlib path, with its own tokenizer given: that one is used
    given = copy.deepcopy(tokenizer)
    _, tok, _ = prepare_block_diffusion_model(tmp_path, given, block_size=4)
    assert tok is given and given.mask_token == "<|mask|>"


def test_a_converted_model_keeps_its_settings(tokenizer, caplog):
    model, tok = make_converted(tokenizer, block_size=2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    stored = get_block_diffusion_settings(model)
    with caplog.at_level(logging.WARNING, logger="dgr2_trl.trainers.model_prep"):
        prepared, prepared_tok, settings = prepare_block_diffusion_model(model, tok)
        prepare_block_diffusion_model(model, tok, block_size=2, mask_token=stored.mask_token)  # the same, named
    assert not caplog.records
    assert prepared is model and prepared_tok is tok and settings == stored
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_a_converted_model_given_another_block_size_warns_and_stores_it(tokenizer, caplog):
    model, tok = make_converted(tokenizer, block_size=2)
    with caplog.at_level(logging.WARNING, logger="dgr2_trl.trainers.model_prep"):
        _, _, settings = prepare_block_diffusion_model(model, tok, block_size=8)
    assert "converted with block_size=2; training (and storing) block_size=8" in caplog.text
    assert settings.block_size == 8 and get_block_diffusion_settings(model).block_size == 8
    assert model.config.block_diffusion["block_size"] == 8  # saved with the model


def test_a_converted_model_refuses_another_mask_token_and_a_mismatched_tokenizer(tokenizer):
    model, tok = make_converted(tokenizer)
    with pytest.raises(ValueError, match=r"converted with mask_token '<\|mask\|>' but the config asks for '<\|m\|>'"):
        prepare_block_diffusion_model(model, tok, mask_token="<|m|>")
    shifted = copy.deepcopy(tokenizer)
    shifted.add_tokens(["an-extra-token"])  # the mask token would get the next id, not the model's
    rows = model.get_input_embeddings().weight.shape[0]
    with pytest.raises(ValueError, match="pass the tokenizer saved with the converted model"):
        prepare_block_diffusion_model(model, shifted, block_size=8)
    assert model.get_input_embeddings().weight.shape[0] == rows  # refused before the model is touched
    assert get_block_diffusion_settings(model).block_size == 4
    # a tokenizer without the mask token gets it, at the model's id
    plain = copy.deepcopy(tokenizer)
    _, _, settings = prepare_block_diffusion_model(model, plain)
    assert plain.mask_token == "<|mask|>" and plain.convert_tokens_to_ids("<|mask|>") == settings.mask_token_id


def test_an_ar_peft_model_is_refused_and_a_converted_one_accepted(tokenizer, caplog):
    lora = LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"])
    ar = get_peft_model(make_model(tokenizer), copy.deepcopy(lora))
    with pytest.raises(ValueError, match="the PEFT model is not a block-diffusion model: convert the base model"):
        prepare_block_diffusion_model(ar, copy.deepcopy(tokenizer))
    model, tok = make_converted(tokenizer, block_size=2)
    wrapped = get_peft_model(model, copy.deepcopy(lora))
    prepared, _, settings = prepare_block_diffusion_model(wrapped, tok)
    assert prepared is wrapped and settings.block_size == 2
    with caplog.at_level(logging.WARNING, logger="dgr2_trl.trainers.model_prep"):
        _, _, settings = prepare_block_diffusion_model(wrapped, tok, block_size=4)
    # the block size the warning announces is the one stored (and trained)
    assert "training (and storing) block_size=4" in caplog.text and settings.block_size == 4
    assert get_block_diffusion_settings(wrapped.get_base_model()).block_size == 4


def test_a_path_is_loaded_with_the_trainer_defaults_of_trl(tmp_path):
    args = DiffusionSFTConfig(output_dir=str(tmp_path), use_cpu=True, report_to="none")
    assert trainer_model_init_kwargs(args) == {"trust_remote_code": False}
    args = OnPolicyDistillConfig(
        output_dir=str(tmp_path), use_cpu=True, report_to=[], model_init_kwargs={"dtype": "bfloat16"}
    )
    kwargs = trainer_model_init_kwargs(args)
    assert kwargs == {"dtype": "bfloat16", "trust_remote_code": False}
    assert args.model_init_kwargs == {"dtype": "bfloat16"}  # a copy: the config is left as it was


@pytest.mark.parametrize("block_size", [4, None])
def test_the_three_trainers_make_the_same_model_of_the_same_ar_model(tokenizer, tmp_path, block_size):
    ar = make_model(tokenizer, dtype=torch.float32)
    reference, _ = convert_to_block_diffusion(
        copy.deepcopy(ar), copy.deepcopy(tokenizer), block_size or DEFAULT_BLOCK_SIZE
    )
    trainers = {
        name: build(copy.deepcopy(ar), copy.deepcopy(tokenizer), tmp_path / name, block_size=block_size)
        for name, build in (("sft", sft), ("grpo", grpo), ("opd", opd))
    }
    expected = get_block_diffusion_settings(reference)
    for name, trainer in trainers.items():
        model = trainer.accelerator.unwrap_model(trainer.model)
        assert get_block_diffusion_settings(model) == expected, name
        tok = getattr(trainer.processing_class, "tokenizer", trainer.processing_class)
        assert tok.convert_tokens_to_ids(expected.mask_token) == expected.mask_token_id, name
        torch.testing.assert_close(logits(model), logits(reference), rtol=0, atol=0)
    assert trainers["sft"].block_settings == expected
    assert trainers["grpo"].block_size == trainers["opd"].rollout_block_size == expected.block_size
    assert trainers["grpo"].mask_token_id == trainers["opd"].mask_token_id == expected.mask_token_id


def test_opd_takes_an_ar_student_path(tokenizer, tmp_path):
    """The base used to load a path itself (and refuse the AR student): the path is loaded and converted first, and
    the tokenizer saved beside it, with the mask token added, is the trainer's."""
    ar = make_model(tokenizer, dtype=torch.float32)
    ar.save_pretrained(tmp_path / "ar")
    tokenizer.save_pretrained(tmp_path / "ar")
    reference, _ = convert_to_block_diffusion(copy.deepcopy(ar), copy.deepcopy(tokenizer), 4)
    trainer = OnPolicyDistillTrainer(
        tmp_path / "ar",  # a pathlib path, as a string is
        tiny_causal_lm(len(tokenizer), "qwen3", seed=3),
        args=OnPolicyDistillConfig(
            output_dir=str(tmp_path / "opd"),
            use_cpu=True,
            report_to=[],
            max_completion_length=8,
            block_size=4,
            model_init_kwargs={"dtype": "float32"},
        ),
        train_dataset=Dataset.from_dict({"prompt": PROMPTS}),
    )
    assert get_block_diffusion_settings(trainer.model) == get_block_diffusion_settings(reference)
    assert trainer.processing_class.mask_token == "<|mask|>" and trainer.processing_class.padding_side == "left"
    assert trainer.args.model_init_kwargs is None  # consumed by the trainer
    torch.testing.assert_close(logits(trainer.model), logits(reference), rtol=0, atol=1e-6)
