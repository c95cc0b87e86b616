"""OnPolicyDistillTrainer with an in-process teacher: exactness (self-distillation loss ~0), a perturbed student
learns, the student is read in its decoding states, a subclass replacing the rollout seam, configuration errors."""

import copy

import pytest
import torch
from datasets import Dataset
from peft import LoraConfig, get_peft_model

from dgr2_trl.modeling import convert_to_block_diffusion, get_block_diffusion_settings, replay_logprobs, tiny_causal_lm
from dgr2_trl.samplers import BlockDiffusionSampler
from dgr2_trl.teachers import replay_support_logprobs
from dgr2_trl.trainers.opd_config import OnPolicyDistillConfig
from dgr2_trl.trainers.opd_trainer import OnPolicyDistillTrainer

from .conftest import PROMPTS


def make_teacher(tokenizer, dtype=torch.float64, seed=3, initializer_range=0.5):
    # vocab = len(tokenizer): the student's mask token gets a new row the teacher never had.
    return tiny_causal_lm(len(tokenizer), "qwen3", dtype=dtype, seed=seed, initializer_range=initializer_range)


def make_trainer(
    tmp_path, teacher, tokenizer, block_size=1, perturb=0.0, trainer_class=OnPolicyDistillTrainer, **overrides
):
    student, student_tok = convert_to_block_diffusion(copy.deepcopy(teacher), copy.deepcopy(tokenizer), block_size)
    if perturb:
        with torch.no_grad():
            generator = torch.Generator().manual_seed(0)
            # Only the last layer's MLP is perturbed and trained: a perturbation a few steps can undo (the test
            # stays short) with the rest of the network, embeddings and head included, held at the teacher's values.
            student.requires_grad_(False)
            for p in student.model.layers[-1].mlp.parameters():
                p.add_(perturb * torch.randn(p.shape, generator=generator, dtype=p.dtype))
                p.requires_grad_(True)
    settings = dict(
        output_dir=str(tmp_path),
        per_device_train_batch_size=2,
        max_completion_length=12,
        num_rollouts_per_prompt=2,
        report_to=[],
        logging_steps=1,
        save_strategy="no",
        use_cpu=True,
        learning_rate=3e-3,
        temperature=1.0,
        teacher_top_k=8,
        max_steps=1,
        seed=0,
        gradient_checkpointing=False,
    )  # tiny models: recomputation only costs time
    settings.update(overrides)
    dataset = Dataset.from_dict({"prompt": PROMPTS})
    return trainer_class(
        student, teacher, args=OnPolicyDistillConfig(**settings), train_dataset=dataset, processing_class=student_tok
    )


def rollouts(trainer, prompts=PROMPTS[:2]):
    trainer.model.eval()  # eval-mode generation: no buffering, one batch
    return trainer._generate_and_score_completions([{"prompt": p} for p in prompts])


def loss_on(trainer, batch):
    with torch.no_grad():
        return trainer.compute_loss(trainer.model, batch).item()


@pytest.mark.parametrize("divergence", ["forward_kl", "reverse_kl", "jsd"])
def test_self_distillation_loss_is_zero(tmp_path, tokenizer, divergence):
    """A student that is the block-size-1 conversion of the teacher decodes exactly like it, so every divergence is
    0 up to the float32 rounding of the teacher's log-probs (float64 models; observed < 1e-7, tolerance 1e-6)."""
    trainer = make_trainer(tmp_path, make_teacher(tokenizer), tokenizer, divergence=divergence)
    batch = rollouts(trainer)
    assert batch["loss_mask"].sum() >= 8  # real completions were scored
    assert abs(loss_on(trainer, batch)) < 1e-6


def test_perturbed_student_loss_is_positive_and_falls(tmp_path, tokenizer):
    """A perturbed copy of the teacher has a clearly positive KL, which a few OPD steps reduce (measured on fixed
    rollouts, so the decrease is the model's, not the sample's)."""
    # Block size 1, so the unperturbed student is the teacher and the loss can fall towards 0 (at block size > 1
    # the converted teacher itself already has a positive KL: what OPD is for).
    teacher = make_teacher(tokenizer, dtype=torch.float32, initializer_range=0.2)
    trainer = make_trainer(
        tmp_path,
        teacher,
        tokenizer,
        block_size=1,
        perturb=0.3,
        max_steps=6,
        per_device_train_batch_size=4,
        learning_rate=3e-2,
    )
    fixed = rollouts(trainer, PROMPTS)
    before = loss_on(trainer, fixed)
    assert before > 0.3  # observed 0.83
    trainer.train()
    after = loss_on(trainer, fixed)
    assert after < 0.8 * before, (before, after)  # observed 0.67x
    logs = [h for h in trainer.state.log_history if "kl" in h]
    assert len(logs) == 6 and logs[-1]["kl"] < logs[0]["kl"]
    for key in ("time/rollout_s", "time/teacher_s", "time/update_s", "rollout/tokens_per_second"):
        assert all(h[key] > 0 for h in logs), key


def test_student_is_read_in_its_decoding_state(tmp_path, tokenizer):
    """With the actual token as the support, the replayed student log-probs equal the sampler's commit-time ones
    (temperature 1, block size 4, parallel commits): the KL compares the distribution the student decoded from."""
    trainer = make_trainer(
        tmp_path, make_teacher(tokenizer), tokenizer, block_size=4, threshold=0.3, max_completion_length=16
    )
    batch = rollouts(trainer)
    assert (batch["commit_step"] > 0).any()  # several denoising steps were used
    student = trainer.model
    support, tail = replay_support_logprobs(
        student,
        batch["prompt_ids"],
        batch["prompt_mask"],
        batch["completion_ids"],
        batch["completion_mask"],
        batch["commit_step"],
        batch["loss_mask"],
        batch["completion_ids"][..., None],
        torch.ones_like(batch["completion_ids"][..., None], dtype=torch.bool),
        trainer.mask_token_id,
        4,
    )
    reference = replay_logprobs(
        student,
        batch["prompt_ids"],
        batch["prompt_mask"],
        batch["completion_ids"],
        batch["completion_mask"],
        batch["commit_step"],
        trainer.mask_token_id,
        4,
    )
    mask = batch["loss_mask"].bool()
    torch.testing.assert_close(support[..., 0][mask], reference[mask].to(support.dtype), rtol=0, atol=1e-9)
    # support + tail is a whole distribution
    total = torch.logaddexp(support[..., 0], tail)[mask]
    torch.testing.assert_close(total, torch.zeros_like(total), rtol=0, atol=1e-9)


def test_valid_rate_logged_from_candidates(tmp_path, tokenizer):
    """With a `candidates` column the rollouts' valid rate is logged; a random model never writes a ranking: 0."""
    trainer = make_trainer(tmp_path, make_teacher(tokenizer), tokenizer)
    trainer.model.eval()
    trainer._generate_and_score_completions([{"prompt": p, "candidates": ["a", "b"]} for p in PROMPTS[:2]])
    assert trainer._metrics["eval"]["valid_rate"] == [0.0]
    assert trainer._metrics["eval"]["time/teacher_s"][0] > 0


def test_configuration_errors(tmp_path, tokenizer):
    with pytest.raises(ValueError, match="divergence must be one of"):
        OnPolicyDistillConfig(output_dir=str(tmp_path), divergence="kl", use_cpu=True)
    with pytest.raises(ValueError, match="cannot run a block-diffusion model"):
        OnPolicyDistillConfig(output_dir=str(tmp_path), use_vllm=True, use_cpu=True)
    teacher = make_teacher(tokenizer)
    ar_peft = get_peft_model(copy.deepcopy(teacher), LoraConfig(r=2, target_modules=["q_proj"]))
    with pytest.raises(ValueError, match="the PEFT model is not a block-diffusion model: convert the base model"):
        OnPolicyDistillTrainer(  # a plain AR student is converted; an AR one wrapped by PEFT cannot be
            ar_peft,
            teacher,
            train_dataset=Dataset.from_dict({"prompt": PROMPTS}),
            args=OnPolicyDistillConfig(output_dir=str(tmp_path), use_cpu=True, report_to=[]),
            processing_class=copy.deepcopy(tokenizer),
        )
    with pytest.raises(ValueError, match="no teacher"):
        make_trainer(tmp_path, teacher, tokenizer).__class__(
            convert_to_block_diffusion(copy.deepcopy(teacher), copy.deepcopy(tokenizer), 1)[0],
            args=OnPolicyDistillConfig(output_dir=str(tmp_path), use_cpu=True, report_to=[]),
            train_dataset=Dataset.from_dict({"prompt": PROMPTS}),
            processing_class=copy.deepcopy(tokenizer),
        )


RANKING = '{"ranking": ["a", "b"]}'


class FixedRollout(OnPolicyDistillTrainer):
    """A user's subclass overriding only the rollout seam: fixed completions of two lengths (ragged rows), the even
    ones a valid ranking, without commit steps, trailing tokens or texts (the trainer's defaults fill them in)."""

    calls = 0  # rollout() calls of this trainer

    def completions(self, count):
        eos = self._tokenizer.eos_token_id
        ranking = self._tokenizer(RANKING, add_special_tokens=False)["input_ids"] + [eos]
        other = self._tokenizer("the lazy dog", add_special_tokens=False)["input_ids"] + [eos]
        return [ranking if i % 2 == 0 else other for i in range(count)]

    def rollout(self, prompts):
        self.calls += 1
        return {"completion_ids": self.completions(len(prompts))}


def test_subclass_overriding_only_rollout_trains_on_its_completions(tmp_path, tokenizer):
    trainer = make_trainer(
        tmp_path, make_teacher(tokenizer, dtype=torch.float32), tokenizer, perturb=0.3, trainer_class=FixedRollout
    )
    scored = []
    score = trainer.teacher.score
    trainer.teacher.score = lambda prompts, completions, top_k: (
        scored.append(completions) or score(prompts, completions, top_k)
    )
    expected = trainer.completions(4)  # 2 prompts x 2 rollouts
    before = {k: v.clone() for k, v in trainer.model.named_parameters() if v.requires_grad}

    trainer.train()
    assert trainer.calls == 1 and scored == [expected]  # the teacher scored exactly those completions
    assert any(not torch.equal(before[k], v) for k, v in trainer.model.named_parameters() if v.requires_grad)
    logs = trainer.state.log_history[0]
    assert logs["completions/mean_length"] == pytest.approx(sum(map(len, expected)) / 4)
    assert logs["kl"] > 0 and logs["time/teacher_s"] > 0
    assert "rollout/tokens_per_second" not in logs  # logged by the default rollout only

    trainer.model.eval()
    batch = trainer._generate_and_score_completions([{"prompt": p, "candidates": ["a", "b"]} for p in PROMPTS[:2]])
    width = max(map(len, expected))
    assert batch["completion_ids"].shape == (4, width)
    for row, ids in enumerate(expected):
        assert batch["completion_ids"][row, : len(ids)].tolist() == ids
        assert batch["loss_mask"][row].tolist() == [1] * len(ids) + [0] * (width - len(ids))
        assert (batch["commit_step"][row, : len(ids)] == 0).all() and (
            batch["commit_step"][row, len(ids) :] == -1
        ).all()
        assert torch.isfinite(batch["teacher_token_logprobs"][row, : len(ids)]).all()
        assert (batch["teacher_topk_logprobs"][row, len(ids) :] == float("-inf")).all()
    # the valid rate is read from the completions decoded by the trainer (the rollout returned no texts)
    assert trainer._metrics["eval"]["valid_rate"] == [0.5]


class WrongCount(OnPolicyDistillTrainer):
    def rollout(self, prompts):
        return {"completion_ids": [[1, 2]] * (len(prompts) + 1)}


class WrongSteps(OnPolicyDistillTrainer):
    def rollout(self, prompts):
        return {"completion_ids": [[1, 2]] * len(prompts), "commit_step": [[0]] * len(prompts)}


@pytest.mark.parametrize(
    "trainer_class,match", [(WrongCount, "returned 5 completions for 4 prompts"), (WrongSteps, "'commit_step'")]
)
def test_rollout_override_with_inconsistent_output_is_refused(tmp_path, tokenizer, trainer_class, match):
    trainer = make_trainer(tmp_path, make_teacher(tokenizer), tokenizer, trainer_class=trainer_class)
    with pytest.raises(ValueError, match=match):
        rollouts(trainer)


def test_an_ar_student_is_converted_and_trains_on_block_diffusion_rollouts(tmp_path, tokenizer):
    """A plain AR student (here: the teacher's own weights) is converted by the trainer, before the base sees it, to
    the model `convert_to_block_diffusion` makes of the same weights; its rollouts are that model's block decoding."""
    teacher = make_teacher(tokenizer)
    reference, reference_tok = convert_to_block_diffusion(copy.deepcopy(teacher), copy.deepcopy(tokenizer), 4)
    student_tok = copy.deepcopy(tokenizer)
    args = OnPolicyDistillConfig(
        output_dir=str(tmp_path),
        per_device_train_batch_size=2,
        num_rollouts_per_prompt=2,
        max_completion_length=16,
        block_size=4,
        threshold=0.3,
        temperature=0.0,  # greedy rollouts, to compare with the reference's decoding
        teacher_top_k=8,
        max_steps=1,
        learning_rate=3e-3,
        report_to=[],
        logging_steps=1,
        save_strategy="no",
        use_cpu=True,
        gradient_checkpointing=False,
    )
    trainer = OnPolicyDistillTrainer(
        copy.deepcopy(teacher),
        teacher,
        args=args,
        train_dataset=Dataset.from_dict({"prompt": PROMPTS}),
        processing_class=student_tok,
    )
    settings = get_block_diffusion_settings(trainer.model)
    assert settings == get_block_diffusion_settings(reference) and settings.block_size == 4
    assert trainer.rollout_block_size == 4 and trainer.mask_token_id == settings.mask_token_id
    assert trainer.processing_class is student_tok and student_tok.mask_token == "<|mask|>"
    ids = torch.tensor([[3, 17, settings.mask_token_id, 42, 5]])
    with torch.no_grad():  # same weights (the new mask row included) and forward as the reference conversion
        torch.testing.assert_close(trainer.model(ids).logits, reference.eval()(ids).logits, rtol=0, atol=0)

    trainer.model.eval()
    rollout = trainer.rollout(PROMPTS[:2])
    expected = BlockDiffusionSampler(
        reference, reference_tok, block_size=4, threshold=0.3, eos_token_id=trainer.eos_token_ids
    ).generate(PROMPTS[:2], max_new_tokens=16, temperature=0.0)
    assert rollout["completion_ids"] == expected.completion_ids
    assert rollout["commit_step"] == expected.commit_step
    assert any(step > 0 for row in rollout["commit_step"] for step in row)  # parallel steps within a block

    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.train()
    assert any(not torch.equal(before[k], v) for k, v in trainer.model.state_dict().items())
    assert "loss" in trainer.state.log_history[0]
    assert get_block_diffusion_settings(trainer.model) == settings
