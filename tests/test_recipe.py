import json
import sys

import torch

from dgr2_trl.recipe import get_preset, run_recipe
from dgr2_trl.recipe.stages import STAGES, Recipe


def test_tiny_preset_end_to_end_and_resume(tmp_path):
    preset = get_preset("tiny")
    result = run_recipe(preset, tmp_path)
    stages = result["stages"]
    for stage in ("floor", *STAGES):
        metrics = stages[stage]
        for key in ("recall@1", "recall@3", "ndcg@3", "n"):
            assert metrics[key] is not None, (stage, key)
        assert metrics["n"] == stages["floor"]["n"] == preset.max_eval_queries  # every stage on the same queries
    for stage in STAGES:
        assert 0.0 <= stages[stage]["valid_rate"] <= 1.0
        assert (tmp_path / stage / "metrics.json").exists() and (tmp_path / stage / "config.json").exists()
    # the frontier has AR plus one row per threshold, at each batch size, with speed-ups against AR
    rows = result["frontier"]
    # (free with each fallback, then under the ranking constraint with the evaluation's fallback)
    assert preset.eval_constraint
    per_batch = 1 + len(preset.frontier_thresholds) * (len(preset.frontier_fallbacks) + 1) + 3
    assert len(rows) == len(preset.frontier_batch_sizes) * per_batch
    constrained_rule = f"{preset.eval_fallback}, distinct ids"
    assert {r["fallback"] for r in rows} == {None, *preset.frontier_fallbacks, constrained_rule}
    assert all(r["speedup_vs_ar"] > 0 for r in rows)
    # speculative decoding scores exactly as its verifier: the AR teacher, or the final model's own AR mode
    for batch_size in preset.frontier_batch_sizes:
        by_model = {r["model"]: r for r in rows if r["batch_size"] == batch_size}
        for speculative, verifier in (("speculative (teacher)", "ar"), ("speculative (self)", "rl (AR mode)")):
            for key in ("recall@1", "recall@3", "ndcg@3", "valid_rate", "n"):
                assert by_model[speculative][key] == by_model[verifier][key], (batch_size, speculative, key)
    table = (tmp_path / "results.md").read_text()
    # the stage table and the comparison with the teacher, for the constrained evaluation and for the free one
    assert table.count("| +RL |") == 4
    assert "| copies pre-ranker | distinct texts | passes/token |" in table.splitlines()[0]
    assert "decoded free (block decoder at threshold 0.95)" in table
    # every stage's per-query outputs are written, and the paired comparisons are computed from them
    saved = json.loads((tmp_path / "results.json").read_text())
    for stage in STAGES:
        lines = (tmp_path / stage / "test_rows.jsonl").read_text().splitlines()
        assert len(lines) == preset.max_eval_queries
        row = json.loads(lines[0])
        assert set(row) == {"user_id", "candidates", "target", "ranking", "valid", "text"}
        # the headline evaluation is the constrained one, the free one is kept beside it with its own rows
        free_rows = [json.loads(x) for x in (tmp_path / stage / "free-test_rows.jsonl").read_text().splitlines()]
        assert stages[stage]["constrained"] is True and stages[stage]["free"]["n"] == len(free_rows)
        assert stages[stage]["free"]["valid_rate"] == sum(r["valid"] for r in free_rows) / len(free_rows)
        assert stages[stage]["free"]["threshold"] == (None if stage == "ar" else preset.free_eval_threshold)
    for split in ("validation", "free-validation"):
        assert len((tmp_path / "ar" / f"{split}_rows.jsonl").read_text().splitlines()) == preset.max_eval_queries
    assert saved["stages"]["ar"]["validation"]["free"]["n"] == preset.max_eval_queries
    comparisons = saved["comparisons"]
    assert set(comparisons["teacher_vs_floor"]) == {"test", "validation"}
    assert set(comparisons["vs_teacher"]) == {"naive", "cft", "opd", "rl"}
    assert set(comparisons["free"]["vs_teacher"]) == {"naive", "cft", "opd", "rl"}
    for stage, c in comparisons["free"]["vs_teacher"].items():
        diff = stages[stage]["free"]["ndcg@3"] - stages["ar"]["free"]["ndcg@3"]
        assert abs(c["ndcg@3"]["diff"] - diff) < 1e-9
    for stage, c in comparisons["vs_teacher"].items():
        teacher_r3 = stages["ar"]["recall@3"]
        assert abs(c["recall@3"]["diff"] - (stages[stage]["recall@3"] - teacher_r3)) < 1e-9
        assert c["recall@3"]["low"] <= c["recall@3"]["diff"] <= c["recall@3"]["high"]
    assert comparisons["traces"]["ar"]["n"] == preset.max_eval_queries
    assert all(0.0 <= stages[stage]["copies_floor_rate"] <= 1.0 for stage in STAGES)
    assert stages["ar"]["forward_passes_per_token"] == 1.0  # the AR teacher decodes one token per pass
    assert set(json.loads((tmp_path / "results.json").read_text())["stages"]) == {"floor", *STAGES}
    assert (tmp_path / "frontier.png").stat().st_size > 1000
    # resuming: every stage is loaded, nothing is retrained, the same numbers come back
    again = run_recipe(preset, tmp_path)
    for stage in STAGES:
        assert again["stages"][stage] == stages[stage]
    # the benchmarks load a finished run's models in their saved dtype or another one
    recipe = Recipe(preset, tmp_path)
    assert recipe.load("rl").dtype == torch.float32 and recipe.load("rl", torch.bfloat16).dtype == torch.bfloat16
    # distinct candidate ids: the answer marker is read off the data; AR output that was valid is unchanged, and
    # neither decoder writes a duplicate id under the constraint
    constraint = recipe.ranking_constraint()
    assert recipe.tokenizer.decode(list(constraint.start_ids)).startswith('{"ranking"')
    assert len(constraint.token_ids) >= len({c for row in recipe.test["candidates"] for c in row}) >= 10
    teacher = recipe.load("ar")
    free = recipe.evaluate(teacher, block=False, max_queries=16, keep_rows=True)
    constrained = recipe.evaluate(teacher, block=False, max_queries=16, constraint=constraint, keep_rows=True)
    for a, b in zip(free["rows"], constrained["rows"]):
        assert b["text"] == a["text"] or not a["valid"]
    block = recipe.evaluate(recipe.load("rl"), block=True, max_queries=16, constraint=constraint, keep_rows=True)
    assert constrained["invalid_reasons"].get("duplicate", 0) == block["invalid_reasons"].get("duplicate", 0) == 0
    # the list's separator is read off the data too when it is one token, and then no slot is left empty
    example_answer = recipe.data.train[0]["completion"][-1]["content"]
    tokens = recipe.tokenizer.encode(example_answer[example_answer.rfind('{"ranking"') :], add_special_tokens=False)
    at_ids = [i for i, t in enumerate(tokens) if t in constraint.token_ids]
    between = tokens[at_ids[0] + 1 : at_ids[1]]
    assert constraint.separator_id == (between[0] if len(between) == 1 else None)
    for row in constrained["rows"] + block["rows"] if constraint.separator_id is not None else []:
        answer = row["text"][row["text"].find('{"ranking"') :]
        assert '""' not in answer, answer


def test_cli_runs_only_the_stages_asked_for(tmp_path, monkeypatch):
    from dgr2_trl.recipe.cli import main

    monkeypatch.setattr(
        "sys.argv",
        [
            "dgr2-recipe",
            "--preset",
            "tiny",
            "--output_dir",
            str(tmp_path),
            "--stages",
            "ar",
            "--no_frontier",
            "--ar_steps",
            "2",
            "--eval_fallback",
            "leftmost",
        ],
    )
    main()
    metrics = json.loads((tmp_path / "ar" / "metrics.json").read_text())
    assert metrics["n"] == get_preset("tiny").max_eval_queries and metrics["constrained"] and "free" in metrics
    assert not (tmp_path / "naive").exists() and not (tmp_path / "frontier.json").exists()
    assert json.loads((tmp_path / "results.json").read_text())["preset"]["eval_fallback"] == "leftmost"
    # --reevaluate scores the finished stage again with today's settings (here free), without training it again
    monkeypatch.setattr("sys.argv", [*sys.argv, "--reevaluate", "--eval_constraint", "False"])
    main()
    again = json.loads((tmp_path / "ar" / "metrics.json").read_text())
    assert again["constrained"] is False and "free" not in again
    assert again["train_seconds"] == metrics["train_seconds"] and again["n"] == metrics["n"]
    assert again["ndcg@3"] == metrics["free"]["ndcg@3"]  # the free evaluation it had beside the constrained one


def test_tiny_preset_with_lora_saves_a_dense_trained_model_per_stage(tmp_path):
    """`use_peft=True`: every training stage trains a LoRA adapter and saves it merged, so each stage folder holds
    a dense model with the base model's parameter names, whose weights differ from the stage it started from."""
    preset = get_preset(
        "tiny",
        use_peft=True,
        lora_r=4,
        lora_alpha=8,
        frontier_speculative=False,
        diffusion_eval_queries=3,  # the pretrained CPU preset's caps on evaluation
        evaluate_validation=False,
    )
    recipe = Recipe(preset, tmp_path)
    for stage in STAGES:
        metrics = recipe.run_stage(stage)
        assert not (tmp_path / stage / "adapter_config.json").exists(), stage
        assert metrics["n"] == (3 if stage in ("cft", "opd", "rl") else preset.max_eval_queries), stage
    assert "validation" not in json.loads((tmp_path / "ar" / "metrics.json").read_text())
    assert not (tmp_path / "ar" / "validation_rows.jsonl").exists()
    weights = {stage: recipe.load(stage).state_dict() for stage in STAGES}
    assert set(weights["cft"]) == set(weights["naive"]) == set(weights["rl"])  # no lora_A / lora_B left
    # (RL's single tiny step has all-equal rewards, so no gradient: a zero-initialised LoRA B merges to nothing)
    for before, after in (("naive", "cft"), ("cft", "opd")):
        changed = [k for k in weights[after] if not torch.equal(weights[before][k], weights[after][k])]
        assert changed, f"{after} did not change the weights of {before}"
        # LoRA touches the linear layers only (the model from a config has no added-token rows to train)
        assert all("embed_tokens" not in k for k in changed), (after, changed[:3])


def test_pretrained_recipe_trains_embedding_rows_only_where_it_added_tokens():
    recipe = Recipe.__new__(Recipe)  # peft_config reads the preset only
    recipe.preset = get_preset("smollm2-cpu")  # plain-text prompts: the pretrained vocabulary plus the mask token
    assert recipe.preset.use_peft and recipe.peft_config().modules_to_save is None
    recipe.preset = get_preset("smollm2-cpu", add_data_tokens=True)
    assert set(recipe.peft_config().modules_to_save) == {"embed_tokens", "lm_head"}


def test_lora_config_trains_the_embeddings_of_a_pretrained_model():
    from dgr2_trl.recipe.stages import lora_config

    assert lora_config(get_preset("tiny")) is None
    config = lora_config(get_preset("tiny", use_peft=True, lora_r=8), train_embeddings=True)
    assert config.r == 8 and config.target_modules == "all-linear"
    assert set(config.modules_to_save) == {"embed_tokens", "lm_head"}
    assert lora_config(get_preset("tiny", use_peft=True)).modules_to_save is None


def test_lora_layers_adapt_only_the_named_decoder_layers():
    from peft import get_peft_model

    from dgr2_trl.modeling.tiny import tiny_causal_lm
    from dgr2_trl.recipe.stages import lora_config

    def adapted_layers(preset):
        model = get_peft_model(tiny_causal_lm(64, hidden_size=32, num_layers=4), lora_config(preset))
        return {int(name.split("layers.")[1].split(".")[0]) for name, _ in model.named_parameters() if "lora_" in name}

    assert adapted_layers(get_preset("tiny", use_peft=True, lora_layers=[2, 3])) == {2, 3}
    assert adapted_layers(get_preset("tiny", use_peft=True)) == {0, 1, 2, 3}
    # the command line takes the list
    from dgr2_trl.recipe.cli import parse_args

    assert parse_args(["--preset", "tiny", "--lora_layers", "2", "3"])[1].lora_layers == [2, 3]
