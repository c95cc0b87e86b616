"""The training examples as TRL scripts: `--help`, the CPU defaults, the data argument, and per example a 2-step run
with LoRA (`--use_peft`), `--dtype` and `--attn_implementation`, then a resume from the step-1 checkpoint that runs
only step 2. Tiny sizes throughout: a model of hidden size 32 x 1 layer and a handful of rows saved to disk."""

import importlib.util
import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from datasets import DatasetDict

from tests.ranking_rows import ranking_rows


EXAMPLES_DIR = Path(__file__).resolve().parents[1] / "examples"
EXAMPLES = ("sft_ar", "cft", "opd", "grpo")


def load_example(name: str):
    """An example script as a module (its sibling `_common` importable, as when it runs as a script)."""
    if str(EXAMPLES_DIR) not in sys.path:
        sys.path.insert(0, str(EXAMPLES_DIR))
    module_name = f"examples_{name}"
    if module_name not in sys.modules:
        spec = importlib.util.spec_from_file_location(module_name, EXAMPLES_DIR / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module  # dataclasses look their module up there
        spec.loader.exec_module(module)
    return sys.modules[module_name]


def run(module, argv: list[str]):
    module.main(*module.make_parser().parse_args_and_config(argv))


def length_reward(prompts, completions, **kwargs):
    """A reward that varies within a group (used through `--reward_funcs tests.test_examples.length_reward`)."""
    return [float(len(c if isinstance(c, str) else c[-1]["content"]) % 5) for c in completions]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> str:
    """A saved DatasetDict (train / validation) of ranking rows with the reward and evaluation columns."""
    path = tmp_path_factory.mktemp("data") / "ranking"
    DatasetDict({"train": ranking_rows(6), "validation": ranking_rows(2)}).save_to_disk(str(path))
    return str(path)


@pytest.fixture(scope="module")
def teacher_dir(data_dir, tmp_path_factory) -> str:
    """A saved tiny AR teacher with its tokenizer, as `examples/sft_ar.py` leaves one."""
    parser = load_example("sft_ar").make_parser()
    script_args, _, model_args = parser.parse_args_and_config(
        ["--dataset_name", data_dir, "--hidden_size", "32", "--num_layers", "1", "--vocab_size", "300"]
    )
    from _common import load_rerank_datasets, offline_tokenizer, small_model  # what the scripts use

    tokenizer = offline_tokenizer(load_rerank_datasets(script_args), script_args.vocab_size)
    model = small_model(tokenizer, script_args, model_args, num_heads=2, num_kv_heads=1)
    path = tmp_path_factory.mktemp("teacher")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def tiny_args(data_dir: str, output_dir: Path) -> list[str]:
    return [
        "--dataset_name", data_dir, "--output_dir", str(output_dir), "--max_steps", "2", "--save_strategy", "steps",
        "--save_steps", "1", "--logging_steps", "1", "--report_to", "none", "--disable_tqdm", "true", "--seed", "0",
        "--hidden_size", "32", "--num_layers", "1", "--vocab_size", "300", "--max_train_queries", "6",
        "--max_eval_queries", "2", "--dtype", "float32", "--attn_implementation", "sdpa",
        "--use_peft", "--lora_r", "4", "--lora_alpha", "8", "--lora_dropout", "0.0",
    ]  # fmt: skip


EXTRA = {
    "sft_ar": ["--per_device_train_batch_size", "2", "--max_length", "128", "--warmup_steps", "0",
               "--eval_max_new_tokens", "8", "--eval_batch_size", "2"],
    "cft": ["--per_device_train_batch_size", "2", "--max_length", "128", "--warmup_steps", "0", "--block_size", "4",
            "--valid_rate_num_prompts", "1", "--valid_rate_max_new_tokens", "4", "--eval_max_new_tokens", "8",
            "--eval_batch_size", "2"],
    "opd": ["--per_device_train_batch_size", "1", "--num_rollouts_per_prompt", "2", "--max_completion_length", "8",
            "--block_size", "4", "--teacher_top_k", "4"],
    "grpo": ["--per_device_train_batch_size", "4", "--num_generations", "2", "--max_completion_length", "8",
             "--block_size", "4", "--threshold", "0.5", "--temperature", "1.0",
             "--reward_funcs", "tests.test_examples.length_reward", "validity_reward"],
}  # fmt: skip


@pytest.mark.parametrize("name", EXAMPLES)
def test_help_exits_cleanly(name, capsys):
    with pytest.raises(SystemExit) as exit_info:
        load_example(name).make_parser().parse_args_into_dataclasses(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for flag in (
        "--dataset_name",
        "--use_peft",
        "--lora_r",
        "--dtype",
        "--attn_implementation",
        "--model_name_or_path",
        "--resume_from_checkpoint",
    ):
        assert flag in text, (name, flag)
    if name == "grpo":
        assert "--reward_funcs" in text
    if name == "opd":
        assert "--teacher_model_name_or_path" in text and "--teacher_url" in text
    if name == "cft":  # the valid-rate probe's options, now script arguments that build a ValidRateCallback
        for flag in ("--valid_rate_num_prompts", "--valid_rate_max_new_tokens", "--valid_rate_threshold"):
            assert flag in text, flag


def test_help_as_a_script(tmp_path):
    """Run as a script from any folder, an example finds its sibling `_common` module without any path set up."""
    result = subprocess.run(
        [sys.executable, str(EXAMPLES_DIR / "cft.py"), "--help"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "--use_peft" in result.stdout and "--dataset_name" in result.stdout


@pytest.mark.parametrize("name", EXAMPLES)
def test_cpu_defaults(name):
    script_args, training_args, model_args = load_example(name).make_parser().parse_args_and_config([])
    assert script_args.dataset_name is None and model_args.model_name_or_path is None  # bundled data, small model
    assert training_args.output_dir.startswith("outputs/") and training_args.max_steps > 0
    if not torch.cuda.is_available():
        assert training_args.use_cpu and not training_args.bf16


@pytest.mark.parametrize("name", EXAMPLES)
def test_two_steps_with_lora_then_resume_at_step_2(name, data_dir, teacher_dir, tmp_path):
    module = load_example(name)
    extra = EXTRA[name] + (["--teacher_model_name_or_path", teacher_dir] if name == "opd" else [])
    first, resumed = tmp_path / "first", tmp_path / "resumed"
    run(module, tiny_args(data_dir, first) + extra)
    assert json.loads((first / "checkpoint-2" / "trainer_state.json").read_text())["global_step"] == 2
    assert (first / "adapter_config.json").exists() and (first / "tokenizer_config.json").exists()  # LoRA adapter
    if name == "cft":
        for metrics in ("naive_conversion", "eval", "cft"):
            assert (first / f"{metrics}_results.json").exists(), metrics
        metrics = json.loads((first / "eval_results.json").read_text())
        assert "eval_loss" in metrics and 0.0 <= metrics["eval_valid_rate"] <= 1.0  # the ValidRateCallback

    resume = ["--resume_from_checkpoint", str(first / "checkpoint-1")]
    resume += ["--skip_naive_eval"] if name == "cft" else []
    run(module, tiny_args(data_dir, resumed) + extra + resume)
    # the resumed run starts at step 2: it never saves a step-1 checkpoint of its own
    assert not (resumed / "checkpoint-1").exists()
    state = json.loads((resumed / "checkpoint-2" / "trainer_state.json").read_text())
    assert state["global_step"] == 2
    logged = [entry["step"] for entry in state["log_history"] if "loss" in entry]
    assert logged == [1, 2]  # step 1 comes from the checkpoint's history, step 2 from the resumed run
    assert (resumed / "adapter_config.json").exists()


def test_opd_refuses_to_start_without_a_teacher(data_dir, tmp_path):
    module = load_example("opd")
    with pytest.raises(ValueError, match="--teacher_model_name_or_path.*--teacher_url"):
        run(module, ["--dataset_name", data_dir, "--output_dir", str(tmp_path)])
    with pytest.raises(ValueError, match="--teacher_url needs --model_name_or_path"):
        run(module, ["--dataset_name", data_dir, "--output_dir", str(tmp_path), "--teacher_url", "http://127.0.0.1:1"])


def test_opd_teacher_flag_and_its_older_spelling():
    module = load_example("opd")
    parser = module.make_parser()
    for flag in ("--teacher_model_name_or_path", "--teacher_model"):
        script_args, training_args, _ = parser.parse_args_and_config([flag, "outputs/ar-teacher"])
        assert module.teacher_path(script_args, training_args) == "outputs/ar-teacher"
    script_args, training_args, _ = parser.parse_args_and_config(
        ["--teacher_model", "a", "--teacher_model_name_or_path", "b"]
    )
    with pytest.raises(ValueError, match="--teacher_model 'a' and --teacher_model_name_or_path 'b' disagree"):
        module.teacher_path(script_args, training_args)


def test_grpo_reward_funcs():
    module = load_example("grpo")
    from dgr2_trl.rewards import default_rl_reward, ndcg_reward, validity_reward

    assert module.load_reward_funcs(None) is None  # the trainer's default reward
    funcs = module.load_reward_funcs(["dgr2_trl.rewards.ndcg_reward", "validity_reward", "default_rl_reward"])
    assert funcs == [ndcg_reward, validity_reward, default_rl_reward]
    with pytest.raises(ValueError, match="--reward_funcs 'ndcg'.*expected one of"):
        module.load_reward_funcs(["ndcg"])
    with pytest.raises(ValueError, match="--reward_funcs 'dgr2_trl.rewards.nope': cannot import"):
        module.load_reward_funcs(["dgr2_trl.rewards.nope"])
    with pytest.raises(ValueError, match="expected a callable"):
        module.load_reward_funcs(["dgr2_trl.rewards.REASONS"])


def _two_file_folder(path: Path) -> Path:
    """Sequences and titles in the bundled data's two-file format, small enough to build in a few seconds."""
    rng = random.Random(0)
    path.mkdir()
    lines = [" ".join(map(str, [user] + [rng.randint(1, 20) for _ in range(6)])) for user in range(1, 31)]
    (path / "sequential_data_int.txt").write_text("\n".join(lines) + "\n")
    titles = [f"{item}\tA{item}\tproduct number {item} cream" for item in range(1, 21)]
    (path / "items.tsv").write_text("item_id\tasin\ttitle\n" + "\n".join(titles) + "\n")
    return path


def test_dataset_name_takes_local_data(data_dir, tmp_path):
    load_example("cft")
    from _common import RerankScriptArguments, load_rerank_datasets, offline_tokenizer

    data = load_rerank_datasets(RerankScriptArguments(dataset_name=data_dir, max_train_queries=4))
    assert (len(data.train), len(data.eval), data.built) == (4, 2, None)
    tokenizer = offline_tokenizer(data, vocab_size=300)
    assert len(tokenizer.tokenize("<i_3>")) == 1  # item ids of the candidates column are single tokens

    ranking_rows(3).save_to_disk(str(tmp_path / "single"))  # a Dataset, not a DatasetDict: train only
    data = load_rerank_datasets(RerankScriptArguments(dataset_name=str(tmp_path / "single")))
    assert len(data.train) == 3 and data.eval is None

    ranking_rows(3).to_json(str(tmp_path / "rows.jsonl"))
    data = load_rerank_datasets(RerankScriptArguments(dataset_name=str(tmp_path / "rows.jsonl")))
    assert len(data.train) == 3 and data.train[0]["candidates"] == ranking_rows(1)[0]["candidates"]

    (tmp_path / "files").mkdir()  # a folder of data files: one split per file name
    ranking_rows(3).to_json(str(tmp_path / "files" / "train.jsonl"))
    ranking_rows(2).to_json(str(tmp_path / "files" / "validation.jsonl"))
    data = load_rerank_datasets(RerankScriptArguments(dataset_name=str(tmp_path / "files")))
    assert (len(data.train), len(data.eval)) == (3, 2)

    folder = _two_file_folder(tmp_path / "two-file")
    data = load_rerank_datasets(
        RerankScriptArguments(dataset_name=str(folder), max_train_queries=5, max_eval_queries=3)
    )
    assert data.built is not None and (len(data.train), len(data.eval)) == (5, 3)
    assert {"prompt", "completion", "candidates", "target", "pre_rank"} <= set(data.train.column_names)

    with pytest.raises(FileNotFoundError, match="--dataset_name .*does not exist.*nothing is fetched from the Hub"):
        load_rerank_datasets(RerankScriptArguments(dataset_name=str(tmp_path / "missing")))
    (tmp_path / "rows.txt").write_text("x")
    with pytest.raises(ValueError, match="--dataset_name .*expected a .json/.jsonl/.parquet/.csv file"):
        load_rerank_datasets(RerankScriptArguments(dataset_name=str(tmp_path / "rows.txt")))
    with pytest.raises(ValueError, match="--dataset_train_split 'nope' is not a split.*\\['train', 'validation'\\]"):
        load_rerank_datasets(RerankScriptArguments(dataset_name=data_dir, dataset_train_split="nope"))


def test_quantized_loading_is_refused_with_the_flag_named():
    load_example("cft")
    from _common import model_init_kwargs
    from trl import ModelConfig

    with pytest.raises(ValueError, match="--load_in_4bit / --load_in_8bit are not supported"):
        model_init_kwargs(ModelConfig(load_in_4bit=True))
    assert model_init_kwargs(ModelConfig(dtype="bfloat16", attn_implementation="eager"), {"gguf_file": "m.gguf"}) == {
        "dtype": "bfloat16",
        "attn_implementation": "eager",
        "gguf_file": "m.gguf",
    }
