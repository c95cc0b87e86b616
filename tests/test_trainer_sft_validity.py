"""The AR teacher (TRL's plain SFTTrainer) and what CFT buys: the valid-permutation rate under block-diffusion
decoding, naive conversion against a short CFT of the same teacher (on a synthetic copy-the-candidates task); and
`ValidRateCallback`, which logs that rate at each evaluation."""

import copy
import dataclasses
import json
import logging

import pytest
import torch
from trl import SFTConfig, SFTTrainer

import dgr2_trl
from dgr2_trl import convert_to_block_diffusion
from dgr2_trl.rewards import ColumnValueError
from dgr2_trl.rewards.parsing import parse_ranking
from dgr2_trl.samplers import ARSampler, BlockDiffusionSampler
from dgr2_trl.trainers import DiffusionSFTTrainer, ValidRateCallback
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
    args = cpu_args(tmp_path, block_size=BLOCK, max_steps=100, learning_rate=1e-3, per_device_train_batch_size=32)
    trainer = DiffusionSFTTrainer(
        copy.deepcopy(model),
        args=args,
        train_dataset=synthetic_rows(2048),
        eval_dataset=EVAL,
        processing_class=student_tok,
    )
    probe = ValidRateCallback(trainer, num_prompts=16, max_new_tokens=48, threshold=0.9, batch_size=5)
    trainer.add_callback(probe)
    trainer.train()
    student = trainer.model.eval()
    cft_rate = valid_rate(BlockDiffusionSampler(student, student_tok, threshold=0.9))
    print(
        f"valid rate under block-diffusion decoding (block {BLOCK}, threshold 0.9): naive {naive_rate:.3f}, CFT {cft_rate:.3f}"
    )
    # 64 prompts: a 0.5 margin is far outside what sampling noise could produce
    assert cft_rate >= 0.8 and cft_rate >= naive_rate + 0.5, (naive_rate, cft_rate)

    # the callback logs the same measurement on the first 16 eval prompts
    metrics = trainer.evaluate()
    expected = valid_rate(BlockDiffusionSampler(student, student_tok, threshold=0.9), EVAL.select(range(16)))
    assert metrics["eval_valid_rate"] == pytest.approx(expected)
    assert trainer.state.log_history[-1]["eval_valid_rate"] == metrics["eval_valid_rate"]
    assert torch.isfinite(torch.tensor(metrics["eval_loss"]))

    # rows whose `candidates` are not the prompt's (the model copies the prompt's) are invalid: a rate below 1
    probe_rows = EVAL.select(range(12)).map(
        lambda row, i: {"candidates": row["candidates"][::-1][:-1] + ["x0"]} if i % 3 == 0 else {},
        with_indices=True,
    )
    trainer.remove_callback(probe)
    trainer.add_callback(ValidRateCallback(trainer, dataset=probe_rows, max_new_tokens=48, threshold=0.9))
    metrics = trainer.evaluate()
    expected = valid_rate(BlockDiffusionSampler(student, student_tok, threshold=0.9), probe_rows)
    assert metrics["eval_valid_rate"] == pytest.approx(expected) and expected <= 8 / 12


# ------------------------------------------------------------------------------------------------ the callback
@pytest.fixture
def untrained(tmp_path):
    """A tiny untrained CFT trainer (its decodings are never valid rankings) and its eval rows."""
    tok = synthetic_tokenizer()
    rows = synthetic_rows(10, seed=2)
    trainer = DiffusionSFTTrainer(
        tiny_model(tok), args=cpu_args(tmp_path, max_steps=1), train_dataset=synthetic_rows(8), eval_dataset=rows,
        processing_class=tok,
    )  # fmt: skip
    return trainer, rows


def content(prompt) -> str:
    return prompt[-1]["content"]


def answer_some_prompts(monkeypatch, answered):
    """The block sampler, with the decoded text of the prompts in `answered` replaced by their valid answer (the
    candidates in prompt order); records every batch of prompts decoded."""
    batches, generate = [], BlockDiffusionSampler.generate

    def patched(self, prompts, *args, **kwargs):
        out = generate(self, prompts, *args, **kwargs)
        batches.append([content(p) for p in prompts])
        texts = [
            json.dumps({"ranking": content(p).split("\n")[0].split()[1:]}) if content(p) in answered else text
            for p, text in zip(prompts, out.texts)
        ]
        return dataclasses.replace(out, texts=texts)

    monkeypatch.setattr(BlockDiffusionSampler, "generate", patched)
    return batches


def test_callback_logs_the_fraction_of_valid_decodings(untrained, monkeypatch):
    trainer, rows = untrained
    prompts, candidates = rows["prompt"], rows["candidates"]
    # 3 of the first 7 prompts answered validly, and the 8th (beyond num_prompts)
    batches = answer_some_prompts(monkeypatch, {content(prompts[k]) for k in (0, 4, 6, 7)})
    trainer.add_callback(ValidRateCallback(trainer, num_prompts=7, max_new_tokens=8, batch_size=3))
    metrics = trainer.evaluate()
    # the first 7 prompts, decoded in batches of 3, 3, 1
    assert [len(b) for b in batches] == [3, 3, 1]
    assert sum(batches, []) == [content(p) for p in prompts[:7]]
    # independently: the same sampler on the same prompts, scored with parse_ranking
    model = trainer.accelerator.unwrap_model(trainer.model)
    texts = BlockDiffusionSampler(model, trainer.processing_class).generate(prompts[:7], max_new_tokens=8).texts
    expected = sum(parse_ranking(t, c).valid for t, c in zip(texts, candidates[:7])) / 7
    assert expected == pytest.approx(3 / 7)
    assert metrics["eval_valid_rate"] == pytest.approx(expected)
    entries = [e for e in trainer.state.log_history if "eval_valid_rate" in e]
    assert len(entries) == 1 and entries[0]["eval_valid_rate"] == metrics["eval_valid_rate"]
    assert entries[0]["step"] == next(e for e in trainer.state.log_history if "eval_loss" in e)["step"]


def test_callback_skips_a_dataset_without_candidates_with_a_warning(untrained, caplog):
    trainer, rows = untrained
    with caplog.at_level(logging.WARNING, logger="dgr2_trl.trainers.callbacks"):
        trainer.add_callback(ValidRateCallback(trainer, dataset=rows.remove_columns("candidates"), max_new_tokens=4))
    assert "needs the columns 'prompt' and 'candidates'" in caplog.text and "'target'" in caplog.text
    metrics = trainer.evaluate()
    assert "eval_loss" in metrics and "eval_valid_rate" not in metrics
    assert not any("eval_valid_rate" in entry for entry in trainer.state.log_history)


def test_callback_with_several_eval_datasets_logs_one_rate_each(tmp_path, monkeypatch):
    tok = synthetic_tokenizer()
    named = {"a": synthetic_rows(4, seed=3), "b": synthetic_rows(5, seed=4)}
    trainer = DiffusionSFTTrainer(
        tiny_model(tok), args=cpu_args(tmp_path, max_steps=1), train_dataset=synthetic_rows(8), eval_dataset=named,
        processing_class=tok,
    )  # fmt: skip
    batches = answer_some_prompts(monkeypatch, {content(named["a"]["prompt"][1]), content(named["b"]["prompt"][3])})
    trainer.add_callback(ValidRateCallback(trainer, num_prompts=16, max_new_tokens=4))
    metrics = trainer.evaluate()
    assert batches == [[content(p) for p in named[k]["prompt"]] for k in ("a", "b")]  # each its own rows, once
    assert (metrics["eval_a_valid_rate"], metrics["eval_b_valid_rate"]) == (1 / 4, 1 / 5)
    metrics = trainer.evaluate(metric_key_prefix="test_split")  # the dataset is found by its name at the end
    assert (metrics["test_split_a_valid_rate"], metrics["test_split_b_valid_rate"]) == (1 / 4, 1 / 5)
    assert "eval_valid_rate" not in metrics


def test_callback_arguments_are_checked(untrained):
    trainer, rows = untrained
    assert dgr2_trl.ValidRateCallback is ValidRateCallback
    for kwargs, match in [({"threshold": 1.5}, "threshold"), ({"num_prompts": 0}, "num_prompts"),
                          ({"batch_size": 0}, "batch_size"), ({"max_new_tokens": 0}, "max_new_tokens")]:  # fmt: skip
        with pytest.raises(ValueError, match=f"ValidRateCallback: {match}"):
            ValidRateCallback(trainer, **kwargs)
    # a malformed candidates column fails when the callback is built, not at the first evaluation
    stringified = rows.map(lambda row: {"candidates": json.dumps(row["candidates"])})
    with pytest.raises(ColumnValueError, match="ValidRateCallback.*candidates"):
        ValidRateCallback(trainer, dataset=stringified)
    trainer.eval_dataset = None
    with pytest.raises(ValueError, match="give the trainer an eval_dataset, or pass dataset="):
        ValidRateCallback(trainer)
