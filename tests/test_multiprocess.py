"""The three trainers under `accelerate launch` with 2 CPU processes (gloo): one optimizer step each.

One launch runs all three (tests/multiprocess_worker.py, ~15 s on 2 cores); each rank writes what it saw. Checked:
* after the step both ranks hold identical weights, which differ from the start (the ranks trained on different rows,
  so identical weights mean the gradients were all-reduced: a forward outside the DDP wrapper would skip that);
* rollouts are split, not duplicated: each rank decoded its own prompts and together they cover the batch;
* metrics are gathered: the logged reward is the mean over both ranks' completions, and a validity instrumented to
  be 1 on rank 0 and 0 on rank 1 is logged as 0.5 on both ranks.
"""

import json
import os
import socket
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest


WORKER = Path(__file__).with_name("multiprocess_worker.py")
TRAINERS = ("sft", "opd", "grpo")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    """{trainer: [rank 0 record, rank 1 record]}"""
    out = tmp_path_factory.mktemp("multiprocess")
    # `--cpu` would start a single process (accelerate's simple launcher); `--multi_gpu` starts torchrun, and
    # without a GPU accelerate picks the MULTI_CPU type with the gloo backend.
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(free_port()),
        str(WORKER),
        str(out),
        *TRAINERS,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return {name: [json.loads((out / f"{name}_rank{r}.json").read_text()) for r in (0, 1)] for name in TRAINERS}


def logged(record: dict, key: str) -> float:
    values = [entry[key] for entry in record["log_history"] if key in entry]
    assert len(values) == 1, (key, record["log_history"])
    return values[0]


@pytest.mark.parametrize("name", TRAINERS)
def test_ranks_hold_identical_updated_weights(ranks, name):
    first, second = ranks[name]
    assert first["world_size"] == second["world_size"] == 2
    assert first["hash_before"] == second["hash_before"]
    assert first["hash_after"] == second["hash_after"]
    assert first["hash_after"] != first["hash_before"]  # the step did train


def test_sft_rows_and_valid_rate_probe_are_split(ranks):
    first, second = ranks["sft"]
    # training rows: per_device_train_batch_size=2 on each rank, 4 distinct rows in all
    assert len(first["sample_index"]) == len(second["sample_index"]) == 2
    assert len(set(first["sample_index"]) | set(second["sample_index"])) == 4
    # the ValidRateCallback over the first 4 eval prompts: each rank decodes 2, and together all 4
    assert len(first["decoded"]) == len(second["decoded"]) == 2
    assert sorted(p.split(":")[0] for p in first["decoded"] + second["decoded"]) == [f"query {k}" for k in range(4)]
    assert logged(first, "eval_valid_rate") == logged(second, "eval_valid_rate") == 0.5


def test_opd_rollouts_are_split_and_metrics_gathered(ranks):
    first, second = ranks["opd"]
    # 2 prompts per rank x num_rollouts_per_prompt=2: each rank decodes its own prompts
    for record in (first, second):
        assert sorted(Counter(record["decoded"]).values()) == [2, 2]
    assert not set(first["decoded"]) & set(second["decoded"])
    lengths = first["completion_lengths"] + second["completion_lengths"]
    for record in (first, second):
        assert logged(record, "completions/mean_length") == pytest.approx(sum(lengths) / len(lengths))
        assert logged(record, "valid_rate") == 0.5
    assert logged(first, "kl") == logged(second, "kl")


def test_grpo_rollouts_are_split_and_rewards_gathered(ranks):
    first, second = ranks["grpo"]
    # per_device_train_batch_size=4, num_generations=4: each rank decodes one group of 4 for its own prompt
    assert len(set(first["decoded"])) == len(set(second["decoded"])) == 1
    assert len(first["decoded"]) == len(second["decoded"]) == 4
    assert first["decoded"][0] != second["decoded"][0]
    rewards = first["rewards"] + second["rewards"]
    assert len(rewards) == 8 and max(first["rewards"]) < min(second["rewards"])  # rank 1's rewards are offset
    for record in (first, second):
        assert logged(record, "reward") == pytest.approx(sum(rewards) / len(rewards))
        assert logged(record, "valid_rate") == 0.5
