"""The recipe's command line: TRL's parser over `RecipePreset`, with presets, `--config` files and list fields."""

import dataclasses
import json

import pytest

from dgr2_trl.recipe import RecipePreset, get_preset, run_recipe
from dgr2_trl.recipe.cli import make_parser, parse_args
from dgr2_trl.recipe.stages import check_stage_order, data_settings


def test_every_preset_field_has_help_and_is_an_option(capsys):
    for f in dataclasses.fields(RecipePreset):
        assert len(f.metadata.get("help", "")) > 10, f.name
    with pytest.raises(SystemExit):
        make_parser().parse_args(["--help"])
    text = capsys.readouterr().out
    for f in dataclasses.fields(RecipePreset):
        assert f"--{f.name}" in text


def test_defaults_come_from_the_chosen_preset_then_the_command_line():
    script, preset = parse_args([])
    assert preset == get_preset("default") and script.stages == ["ar", "naive", "cft", "opd", "rl"]
    script, preset = parse_args(["--preset", "tiny", "--rl_steps", "7", "--frontier_thresholds", "1.0", "0.8"])
    expected = dataclasses.replace(get_preset("tiny"), rl_steps=7, frontier_thresholds=[1.0, 0.8])
    assert preset == expected and script.preset == "tiny"
    _, preset = parse_args(["--preset=tiny", "--promote_top", "4", "--no_frontier_speculative"])
    assert preset.promote_top == 4 and preset.frontier_speculative is False and preset.hidden_size == 32


def test_config_file_sits_between_the_preset_and_the_command_line(tmp_path):
    config = tmp_path / "recipe.yaml"
    config.write_text("preset: tiny\nrl_steps: 5\ncft_steps: 9\nfrontier_batch_sizes: [1, 2]\nstages: [ar, naive]\n")
    script, preset = parse_args(["--config", str(config), "--rl_steps", "6"])
    assert preset.rl_steps == 6  # the command line wins over the file
    assert preset.cft_steps == 9 and preset.frontier_batch_sizes == [1, 2]  # the file wins over the preset
    assert preset.hidden_size == get_preset("tiny").hidden_size  # the file's preset
    assert script.stages == ["ar", "naive"]


def test_bad_values_are_refused_by_name(capsys):
    with pytest.raises(SystemExit):
        parse_args(["--preset", "nope"])
    assert "--preset" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_args(["--stages", "cft", "bogus"])
    assert "--stages" in capsys.readouterr().err


def test_data_dir_reaches_the_data_builder(tmp_path):
    _, preset = parse_args(["--data_dir", str(tmp_path)])
    assert data_settings(preset)["data"] == str(tmp_path)
    assert data_settings(get_preset("default"))["data"] is None  # the bundled data


def test_a_stage_without_the_stages_it_loads_fails_before_any_work(tmp_path):
    with pytest.raises(ValueError, match=r"stage 'cft' needs the finished stage\(s\) \['ar', 'naive'\]"):
        run_recipe(get_preset("tiny"), tmp_path, stages=("cft",))
    assert not any(tmp_path.iterdir())  # nothing built, nothing written
    with pytest.raises(ValueError, match="unknown stage"):
        check_stage_order(tmp_path, ["sft"])
    for stage in ("ar", "naive"):
        (tmp_path / stage).mkdir()
        (tmp_path / stage / "metrics.json").write_text(json.dumps({}))
    check_stage_order(tmp_path, ["cft", "opd"])  # finished earlier, or requested before
    with pytest.raises(ValueError, match=r"needs the finished stage\(s\) \['cft'\]"):
        check_stage_order(tmp_path, ["opd"])
