"""The import-time check of the private TRL / transformers symbols the trainers rely on (`dgr2_trl.compat`)."""

import copy
import importlib
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
import transformers
import trl
import trl.trainer.utils
from datasets import Dataset

from dgr2_trl.compat import TESTED_VERSIONS, IncompatibleTRLError, check_private_symbols
from dgr2_trl.trainers.diffusion_grpo_trainer import DiffusionGRPOTrainer

from .conftest import PROMPTS
from .test_trainer_grpo import make_trainer


def test_installed_versions_pass():
    check_private_symbols()


def test_pyproject_pins_the_tested_minor_series():
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]
    for package, tested in TESTED_VERSIONS.items():
        major, minor = tested.split(".")
        assert f"{package}>={tested},<{major}.{int(minor) + 1}" in project["dependencies"]
        installed = (trl if package == "trl" else transformers).__version__
        assert installed.startswith(f"{tested}."), f"{package} {installed} is not the tested {tested}.x"


def test_a_missing_method_is_named_with_the_tested_version(monkeypatch):
    monkeypatch.delattr(trl.GRPOTrainer, "_generate_and_score_completions")
    with pytest.raises(ImportError) as error:
        check_private_symbols()
    message = str(error.value)
    assert isinstance(error.value, IncompatibleTRLError)
    assert "trl.GRPOTrainer._generate_and_score_completions(self, inputs)" in message
    assert f"trl {trl.__version__} does not have" in message
    assert "tested with trl 1.16.x" in message and "trl==1.16.*" in message
    assert len(message.splitlines()) == 1  # DistillationTrainer's own method of that name is still there


def test_changed_parameter_names_are_caught(monkeypatch):
    def renamed(self, dataset, tokenizer, args, packing, formatting_func, dataset_name):
        return dataset

    monkeypatch.setattr(trl.SFTTrainer, "_prepare_dataset", renamed)
    with pytest.raises(IncompatibleTRLError) as error:
        check_private_symbols()
    message = str(error.value)
    assert "trl.SFTTrainer._prepare_dataset(self, dataset, processing_class, args, packing, " in message
    assert "has as renamed(self, dataset, tokenizer, args, packing, formatting_func, dataset_name)" in message
    assert "tested with trl 1.16.x" in message


def test_a_changed_return_arity_is_caught(monkeypatch):
    def two_outputs(self, model, input_ids, attention_mask, logits_to_keep, batch_size=None, compute_entropy=False):
        raise NotImplementedError

    two_outputs.__annotations__["return"] = tuple[torch.Tensor, torch.Tensor]
    monkeypatch.setattr(trl.GRPOTrainer, "_get_per_token_logps_and_entropies", two_outputs)
    with pytest.raises(IncompatibleTRLError, match="_get_per_token_logps_and_entropies.*not a 3-tuple"):
        check_private_symbols()


def test_every_problem_is_listed_and_transformers_gets_its_own_version(monkeypatch):
    def forward(self, input_ids=None, attention_mask=None, position_ids=None, kv_cache=None, **kwargs):
        raise NotImplementedError

    def add_fused_lm_head(model):  # the same helper without the `_fused_forward` we recognise
        return model

    monkeypatch.setattr(transformers.Qwen3Model, "forward", forward)
    monkeypatch.setattr(trl.trainer.utils, "add_fused_lm_head", add_fused_lm_head)
    with pytest.raises(IncompatibleTRLError) as error:
        check_private_symbols()
    first, second = str(error.value).splitlines()
    assert "trl.trainer.utils.add_fused_lm_head (its _fused_forward)" in first and "tested with trl 1.16.x" in first
    assert "transformers.Qwen3Model.forward(..., cache or past_key_values=...)" in second
    assert f"transformers {transformers.__version__} has as forward(" in second
    assert "tested with transformers 5.24.x" in second and "transformers==5.24.*" in second


def test_importing_the_trainers_runs_the_check(monkeypatch):
    monkeypatch.delattr(trl.DistillationTrainer, "_generate_and_score_completions")
    for name in [name for name in sys.modules if name.startswith("dgr2_trl.trainers")]:
        monkeypatch.delitem(sys.modules, name)
    with pytest.raises(IncompatibleTRLError, match=r"trl\.DistillationTrainer\._generate_and_score_completions"):
        importlib.import_module("dgr2_trl.trainers")


def test_conversion_and_samplers_import_without_the_trainers():
    code = "import sys, dgr2_trl; assert not {'dgr2_trl.trainers', 'dgr2_trl.compat'} & set(sys.modules)"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[1], env=env)
    import dgr2_trl

    assert dgr2_trl.DiffusionGRPOTrainer is DiffusionGRPOTrainer  # the trainer names still resolve, on first use


def test_only_our_own_rollout_hook_silences_trls_experimental_warning(tokenizer, tmp_path, monkeypatch):
    # a copy: the trainer registers its mask token with the tokenizer, which the other test files share
    setup = (
        copy.deepcopy(tokenizer),
        Dataset.from_list([{"prompt": [{"role": "user", "content": p}]} for p in PROMPTS]),
    )
    monkeypatch.delenv("TRL_EXPERIMENTAL_SILENCE", raising=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        make_trainer(setup, tmp_path)
    assert not [w for w in caught if "rollout_func" in str(w.message)]
    assert "TRL_EXPERIMENTAL_SILENCE" not in os.environ  # no process-wide switch left behind

    class WithOwnRollout(DiffusionGRPOTrainer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, rollout_func=lambda prompts, trainer: trainer.rollout(prompts), **kwargs)

    with pytest.warns(UserWarning, match="You are using 'rollout_func'"):
        make_trainer(setup, tmp_path, trainer_class=WithOwnRollout)
