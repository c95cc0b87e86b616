"""The reward functions run unchanged inside a plain trl.GRPOTrainer (tiny Qwen3, 2 steps, CPU)."""

import copy
import math

import pytest
import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, Qwen3Config

from dgr2_trl.data import build_prompt
from dgr2_trl.rewards import default_rl_reward, make_ndcg_reward, validity_reward
from dgr2_trl.tokenization import train_chat_tokenizer


trl = pytest.importorskip("trl")

CANDS = ["11", "12", "13", "14"]
TITLES = {
    "11": "rose lip gloss",
    "12": "argan shampoo",
    "13": "nail polish red",
    "14": "face cream",
    "10": "nail file",
}


def tiny_setup():
    rows = []
    for k in range(4):
        cands = CANDS[k:] + CANDS[:k]
        rows.append(
            {
                "prompt": build_prompt(["10"], cands, TITLES),
                "candidates": cands,
                "target": "13",
                "pre_rank": cands.index("13"),
            }
        )
    texts = [m["content"] for r in rows for m in r["prompt"]] + ['{"ranking": ["11", "12", "13", "14"]}'] * 5
    tokenizer = train_chat_tokenizer(texts, vocab_size=300)
    config = Qwen3Config(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, head_dim=16, max_position_embeddings=1024, tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
    )  # fmt: skip
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(copy.deepcopy(config))  # from_config mutates the config it gets
    return Dataset.from_list(rows), tokenizer, model


def test_grpo_logs_our_rewards(tmp_path):
    dataset, tokenizer, model = tiny_setup()
    ndcg3 = make_ndcg_reward(3)
    args = trl.GRPOConfig(
        output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=4, num_generations=2,
        max_completion_length=8, logging_steps=1, report_to="none", use_vllm=False, save_strategy="no",
        learning_rate=1e-4, use_cpu=True, bf16=False, seed=0, dataloader_num_workers=0,
    )  # fmt: skip
    trainer = trl.GRPOTrainer(
        model=model, reward_funcs=[default_rl_reward, validity_reward, ndcg3], args=args,
        train_dataset=dataset, processing_class=tokenizer,
    )  # fmt: skip
    trainer.train()
    logs = [h for h in trainer.state.log_history if "rewards/default_rl_reward/mean" in h]
    assert len(logs) == 2
    for h in logs:
        # 8 random tokens cannot form a valid 4-id ranking, so the penalties are what we see
        assert h["rewards/default_rl_reward/mean"] == pytest.approx(-1.0)
        assert h["rewards/validity_reward/mean"] == pytest.approx(0.0)
        assert h["rewards/ndcg_at_3_reward/mean"] == pytest.approx(-1.0)
        assert all(isinstance(h[k], float) and math.isfinite(h[k]) for k in h if k.startswith("rewards/"))
