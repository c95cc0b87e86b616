"""The AR teacher (TRL's plain SFTTrainer) and what CFT buys: the valid-permutation rate under block-diffusion
decoding, naive conversion against a short CFT of the same teacher (on a synthetic copy-the-candidates task)."""

import copy

import pytest
import torch
from trl import SFTConfig, SFTTrainer

from dgr2_trl import convert_to_block_diffusion
from dgr2_trl.rewards.parsing import parse_ranking
from dgr2_trl.samplers import ARSampler, BlockDiffusionSampler
from dgr2_trl.trainers import DiffusionSFTTrainer
from tests.test_trainer_sft import cpu_args, synthetic_rows, synthetic_tokenizer, tiny_model


EVAL = synthetic_rows(64, seed=1)
BLOCK = 4


def valid_rate(sampler, dataset=EVAL, **kwargs) -> float:
    texts = sampler.generate(list(dataset["prompt"]), max_new_tokens=48, **kwargs).texts
    return sum(parse_ranking(t, c).valid for t, c in zip(texts, dataset["candidates"])) / len(dataset)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """An AR re-ranker trained with TRL's own SFTTrainer (about 25 s on 2 idle cores), saved and reloaded so that no
    trainer patch stays on the model."""
    tok = synthetic_tokenizer()
    args = SFTConfig(
        output_dir=str(tmp_path_factory.mktemp("teacher")), report_to="none", use_cpu=True, bf16=False,
        activation_checkpointing=False, dataloader_num_workers=0, disable_tqdm=True, save_strategy="no",
        per_device_train_batch_size=32, max_steps=350, learning_rate=1e-2, lr_scheduler_type="constant",
        warmup_steps=0, logging_steps=50, seed=0,
    )  # fmt: skip
    trainer = SFTTrainer(
        tiny_model(tok, hidden_size=128), args=args, train_dataset=synthetic_rows(2048), processing_class=tok
    )
    trainer.train()
    trainer.save_model()
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(args.output_dir).eval(), tok


def test_ar_teacher_from_plain_sft_trainer_is_valid(teacher):
    model, tok = teacher
    assert valid_rate(ARSampler(model, tok)) >= 0.9


def test_cft_closes_the_validity_gap_of_naive_conversion(teacher, tmp_path):
    model, tok = teacher
    naive, naive_tok = convert_to_block_diffusion(copy.deepcopy(model), copy.deepcopy(tok), block_size=BLOCK)
    naive_rate = valid_rate(BlockDiffusionSampler(naive, naive_tok, threshold=0.9))

    student_tok = copy.deepcopy(tok)
    args = cpu_args(
        tmp_path, block_size=BLOCK, max_steps=100, learning_rate=1e-3, per_device_train_batch_size=32,
        valid_rate_num_prompts=16, valid_rate_max_new_tokens=48, valid_rate_threshold=0.9,
    )  # fmt: skip
    trainer = DiffusionSFTTrainer(
        copy.deepcopy(model),
        args=args,
        train_dataset=synthetic_rows(2048),
        eval_dataset=EVAL,
        processing_class=student_tok,
    )
    trainer.train()
    student = trainer.model.eval()
    cft_rate = valid_rate(BlockDiffusionSampler(student, student_tok, threshold=0.9))
    print(
        f"valid rate under block-diffusion decoding (block {BLOCK}, threshold 0.9): naive {naive_rate:.3f}, CFT {cft_rate:.3f}"
    )
    # 64 prompts: a 0.5 margin is far outside what sampling noise could produce
    assert cft_rate >= 0.8 and cft_rate >= naive_rate + 0.5, (naive_rate, cft_rate)

    # the evaluate hook logs the same measurement on the first 16 eval prompts
    metrics = trainer.evaluate()
    expected = valid_rate(BlockDiffusionSampler(student, student_tok, threshold=0.9), EVAL.select(range(16)))
    assert metrics["eval_valid_rate"] == pytest.approx(expected)
    assert torch.isfinite(torch.tensor(metrics["eval_loss"]))
