"""Sequence-level distillation data: the teacher's greedy answers replace the dataset's completions."""

import dataclasses
import json
import logging

import pytest

from dgr2_trl.samplers.output import GenerationOutput
from dgr2_trl.teachers import teacher_completion_dataset
from tests.ranking_rows import ranking_rows


class ScriptedTeacher:
    """Answers row k (by the number in its prompt) with its candidates reversed, except every third row: garbage."""

    def __init__(self):
        self.calls = []

    def generate(self, prompts, max_new_tokens, temperature=1.0):
        self.calls.append((len(prompts), max_new_tokens, temperature))
        texts = []
        for prompt in prompts:
            words = prompt[0]["content"].split()
            k, candidates = int(words[1].rstrip(":")), words[3:]
            texts.append("no idea" if k % 3 == 0 else "Reversed.\n" + json.dumps({"ranking": candidates[::-1]}))
        return GenerationOutput(texts=texts, completion_ids=[[1]] * len(prompts))


def test_valid_teacher_answers_replace_completions(caplog):
    data, teacher = ranking_rows(10), ScriptedTeacher()
    with caplog.at_level(logging.WARNING):
        out = teacher_completion_dataset(
            teacher, data, max_new_tokens=40, batch_size=4, num_queries=7, show_progress=False
        )
    assert teacher.calls == [(4, 40, 0.0), (3, 40, 0.0)]  # greedy, batched, only the first 7 rows
    assert out["prompt"] == [data[k]["prompt"] for k in (1, 2, 4, 5)]  # rows 0, 3, 6 answered garbage
    for row in out:
        assert row["completion"] == [
            {"role": "assistant", "content": "Reversed.\n" + json.dumps({"ranking": row["candidates"][::-1]})}
        ]
        assert row["target"] == row["candidates"][1]  # the other columns travel with their row
    assert "dropped 3 of 7" in caplog.text


def test_keep_invalid_and_clear_errors():
    data = ranking_rows(6)
    kept = teacher_completion_dataset(ScriptedTeacher(), data, 40, keep_invalid=True, show_progress=False)
    assert len(kept) == 6 and kept[0]["completion"][0]["content"] == "no idea"
    with pytest.raises(ValueError, match=r"lacks the column\(s\) \['candidates'\]"):
        teacher_completion_dataset(ScriptedTeacher(), data.remove_columns("candidates"), 40, show_progress=False)
    with pytest.raises(ValueError, match="none of the teacher's 1 answers"):
        teacher_completion_dataset(ScriptedTeacher(), data, 40, num_queries=1, show_progress=False)


def test_recipe_cft_asks_the_ar_teacher(tmp_path, monkeypatch):
    import torch

    from dgr2_trl.recipe import get_preset, stages
    from dgr2_trl.samplers import ARSampler

    seen = {}

    def recording(sampler, dataset, **kwargs):
        seen.update(sampler=sampler, dataset=dataset, **kwargs)
        return "teacher rows"

    monkeypatch.setattr(stages, "teacher_completion_dataset", recording)
    preset = dataclasses.replace(get_preset("tiny"), cft_targets="teacher", cft_teacher_queries=6, ar_steps=1)
    recipe = stages.Recipe(preset, tmp_path)
    recipe.run_stage("ar")
    assert recipe.cft_dataset() == "teacher rows"
    assert isinstance(seen["sampler"], ARSampler) and seen["dataset"] is recipe.data.train
    assert seen["num_queries"] == 6 and seen["max_new_tokens"] == preset.max_new_tokens
    for got, saved in zip(seen["sampler"].model.state_dict().values(), recipe.load("ar").state_dict().values()):
        assert torch.equal(got.cpu(), saved.cpu())  # the trained AR stage, not a fresh model
    recipe.preset = dataclasses.replace(preset, cft_targets="data")
    assert recipe.cft_dataset() is recipe.data.train
    recipe.preset = dataclasses.replace(preset, cft_targets="labels")
    with pytest.raises(ValueError, match="cft_targets must be 'data' or 'teacher'"):
        recipe.cft_dataset()
