"""build_rerank_datasets on Amazon Beauty and on a tiny folder in the same format."""

import json
from collections import Counter

import pytest

from dgr2_trl.data import build_rerank_datasets, build_trace, load_amazon_beauty, train_rerank_tokenizer
from dgr2_trl.rewards import parse_ranking


@pytest.fixture(scope="module")
def beauty():
    return build_rerank_datasets(
        load_amazon_beauty(), id_scheme="plain", max_train_queries=3000, max_eval_queries=300, seed=0
    )


def test_stats_and_eval_filter(beauty):
    st = beauty.stats
    assert st["test"]["num_queries"] == st["validation"]["num_queries"] == 22_363
    assert 1_600 <= st["test"]["num_target_in_candidates"] <= 2_100
    assert st["test"]["num_kept"] == len(beauty.test) == 300 and len(beauty.validation) == 300
    assert all(beauty.test["target_in_candidates"]) and all(p >= 0 for p in beauty.test["pre_rank"])
    assert len(beauty.train) == 3000


def test_columns_and_consistency(beauty):
    for split in (beauty.train, beauty.test):
        for row in split.select(range(200)):
            cands = row["candidates"]
            assert len(cands) == 10 == len(set(cands))
            assert not set(row["candidate_items"]) & set(map(int, row["history"]))
            assert row["pre_rank"] == (cands.index(row["target"]) if row["target"] in cands else -1)
            assert row["target_in_candidates"] == (row["target"] in cands)
            assert row["target"] == str(row["target_item"])
            assert [m["role"] for m in row["prompt"]] == ["system", "user"]
            assert [m["role"] for m in row["completion"]] == ["assistant"]
            user = row["prompt"][1]["content"]
            assert all(f"- {c} " in user for c in cands)
            assert len(row["history"]) <= 10 and f"{len(row['history'])}. {row['history'][-1]} " in user
            parsed = parse_ranking(row["completion"], cands)
            assert parsed.valid
            if row["target_in_candidates"]:
                assert parsed.ranking == [row["target"]] + [c for c in cands if c != row["target"]]
            else:
                assert parsed.ranking == cands


def test_target_insertion_fraction_and_positions(beauty):
    train = beauty.train
    inserted = sum(train["target_inserted"])
    missed = inserted + sum(not x for x in train["target_in_candidates"])
    assert inserted == beauty.stats["train"]["num_inserted"]
    assert 0.45 < inserted / missed < 0.55
    positions = Counter(p for p, ins in zip(train["pre_rank"], train["target_inserted"]) if ins)
    assert len(positions) > 3 and positions[0] > positions[9]  # drawn like the natural hits, not all last


def test_trace_length_with_recipe_tokenizer(beauty):
    tok = train_rerank_tokenizer(beauty, vocab_size=1000)
    lengths = sorted(len(tok(r[0]["content"].rsplit("\n", 1)[0])["input_ids"]) for r in beauty.test["completion"])
    assert 50 <= lengths[len(lengths) // 2] <= 150
    assert json.loads(beauty.test[0]["completion"][0]["content"].rsplit("\n", 1)[1])["ranking"]


def test_trace_is_grounded_in_shared_words():
    titles = {"1": "Argan Oil Shampoo", "2": "Argan Oil Conditioner", "3": "Red Nail Polish", "4": "Argan Hair Mask"}
    trace = build_trace(["1", "2"], ["4", "3"], titles)
    assert "most recently bought 2 (Argan Oil Conditioner)" in trace
    assert "mostly about argan, oil and conditioner" in trace
    assert "4 (Argan Hair Mask) fits best: it shares argan" in trace
    assert "3 also relates" not in trace


def toy_folder(tmp_path):
    """20 users over 7 items in the two-file format: builds in about a second."""
    folder = tmp_path / "toy"
    folder.mkdir()
    seqs = [[1, 2, 3, 4, 5], [2, 3, 4, 5, 6], [1, 3, 5, 2, 4], [6, 5, 4, 3, 2], [1, 2, 4, 6, 3]] * 4
    (folder / "sequential_data_int.txt").write_text(
        "\n".join(f"{u + 1} " + " ".join(map(str, s)) for u, s in enumerate(seqs))
    )
    (folder / "items.tsv").write_text(
        "item_id\tasin\ttitle\n" + "".join(f"{i}\tX{i}\ttoy item {i}\n" for i in range(1, 8))
    )
    return folder


def test_generic_folder_and_keep_all(tmp_path):
    folder = toy_folder(tmp_path)
    built = build_rerank_datasets(folder, id_scheme="single", num_candidates=3, keep_all_eval_queries=True, seed=1)
    assert len(built.test) == 20 and len(built.train) == 20
    assert built.special_tokens == [f"<i_{i}>" for i in range(1, 8)]
    assert built.stats["test"]["num_target_in_candidates"] == sum(built.test["target_in_candidates"])
    row = built.test[0]
    assert len(row["candidates"]) == 3 and row["target"] == "<i_5>"
    filtered = build_rerank_datasets(folder, id_scheme="plain", num_candidates=3, seed=1)
    assert len(filtered.test) == built.stats["test"]["num_target_in_candidates"]


def test_slot_ids_name_candidates_by_position():
    from dgr2_trl.data import build_rerank_datasets
    from dgr2_trl.rewards import parse_ranking

    data = build_rerank_datasets(id_scheme="slot", max_train_queries=40, max_eval_queries=5, history_length=3)
    labels = [f"[{k}]" for k in range(1, 11)]
    assert data.special_tokens == labels
    for row in data.test:
        assert row["candidates"] == labels
        assert row["target"] == labels[row["pre_rank"]]  # the true item's slot
        parsed = parse_ranking(row["completion"][0]["content"], row["candidates"])
        assert parsed.valid and parsed.ranking[0] == row["target"]
        assert f"{row['target']} " in row["prompt"][1]["content"]  # each slot label introduces its candidate line


def test_short_trace_evidence_comes_from_the_prompt_only():
    from dgr2_trl.data import build_short_trace

    titles = {
        "h1": "Argan Oil Shampoo",
        "h2": "Red Nail Polish",
        "a": "Argan Hair Mask",
        "b": "Nail Polish Remover",
        "c": "Blue Eyeliner",
        "d": "Argan Oil Serum Extra",
    }
    cands = ["a", "b", "c", "d"]
    # most shared with the most recent item (h2) first, then most shared overall, then prompt order
    assert (
        build_short_trace(["h1", "h2"], cands, ["c", "a", "b", "d"], titles)
        == "Related: b nail polish; d argan oil; a argan. Best: c."
    )
    # the evidence does not depend on the answer
    other = build_short_trace(["h1", "h2"], cands, ["a", "b", "c", "d"], titles)
    assert other.split("Best:")[0] == "Related: b nail polish; d argan oil; a argan. " and other.endswith("Best: a.")
    # words cut from the shown title are not evidence
    assert build_short_trace(["h1"], ["d"], ["d"], titles, max_title_words=1) == "Related: d argan. Best: d."
    assert build_short_trace(["h2"], ["c"], ["c"], titles) == "Related: none. Best: c."
    # without the words: the same candidates in the same order
    assert (
        build_short_trace(["h1", "h2"], cands, ["c", "a", "b", "d"], titles, with_words=False)
        == "Related: b; d; a. Best: c."
    )


@pytest.mark.parametrize("trace_style", ["short", "ids"])
def test_compact_prompt_and_short_trace_dataset(trace_style):
    data = build_rerank_datasets(
        id_scheme="slot",
        max_train_queries=30,
        max_eval_queries=5,
        history_length=3,
        max_title_words=4,
        prompt_style="compact",
        trace_style=trace_style,
    )
    for row in data.test:
        assert [m["role"] for m in row["prompt"]] == ["user"]
        lines = row["prompt"][0]["content"].split("\n")
        assert lines[0] == "History:" and lines[4] == "Candidates:" and len(lines) == 16
        trace, answer = row["completion"][0]["content"].split("\n")
        assert trace.startswith("Related: ") and trace.endswith(f"Best: {row['target']}.")
        if trace_style == "ids":  # only slot labels between "Related:" and "Best:"
            evidence = trace.removeprefix("Related: ").split(". Best:")[0]
            assert evidence == "none" or all(part in row["candidates"] for part in evidence.split("; "))
        assert parse_ranking(answer, row["candidates"]).ranking[0] == row["target"]
    with pytest.raises(ValueError, match="trace_style must be one of"):
        build_rerank_datasets(id_scheme="slot", max_train_queries=5, max_eval_queries=5, trace_style="long")
    with pytest.raises(ValueError, match="prompt_style must be one of"):
        build_rerank_datasets(id_scheme="slot", max_train_queries=5, max_eval_queries=5, prompt_style="tiny")


def test_eval_sample_does_not_depend_on_training_settings():
    a = build_rerank_datasets(id_scheme="slot", max_train_queries=20, max_eval_queries=12, insert_target_fraction=0.0)
    b = build_rerank_datasets(id_scheme="slot", max_train_queries=50, max_eval_queries=12, insert_target_fraction=1.0)
    assert a.test["user_id"] == b.test["user_id"] and a.validation["user_id"] == b.validation["user_id"]


@pytest.mark.parametrize(
    "argument, value, expected",
    [
        ("num_candidates", 0, "an int >= 1"),  # was a bare IndexError
        ("num_candidates", -2, "an int >= 1"),
        ("num_candidates", 2.5, "an int >= 1"),
        ("history_length", -1, "an int >= 0"),  # was silently no history, then an IndexError in the full trace
        ("history_length", 1.0, "an int >= 0"),
        ("max_title_words", 0, "an int >= 1"),  # was every title shown as "..."
        ("max_title_words", -3, "an int >= 1"),
        ("candidate_title_words", -1, "an int >= 0"),
    ],
)
def test_bad_counts_raise_first_naming_the_argument(tmp_path, argument, value, expected):
    # a folder that does not exist: the arguments are checked before any data is read
    with pytest.raises(ValueError, match=rf"^{argument} must be {expected} \(.*\), got {value!r}$"):
        build_rerank_datasets(tmp_path / "absent", **{argument: value})


def test_history_length_zero_shows_no_history(tmp_path):
    folder = toy_folder(tmp_path)
    compact = build_rerank_datasets(
        folder,
        id_scheme="plain",
        num_candidates=3,
        history_length=0,
        prompt_style="compact",
        trace_style="short",
        seed=1,
    )
    for row in compact.test:
        assert row["history"] == []
        lines = row["prompt"][0]["content"].split("\n")
        assert lines[:2] == ["History:", "Candidates:"]  # the heading stays, nothing under it
        assert row["completion"][0]["content"].startswith("Related: none. Best: ")
    evidence = build_rerank_datasets(
        folder,
        id_scheme="plain",
        num_candidates=3,
        history_length=0,
        prompt_style="evidence",
        trace_style="evidence",
        seed=1,
    )
    assert all(
        row["history"] == [] and row["prompt"][0]["content"].startswith("Candidates:\n") for row in evidence.test
    )
    one = build_rerank_datasets(
        folder,
        id_scheme="plain",
        num_candidates=3,
        history_length=1,
        prompt_style="compact",
        trace_style="short",
        seed=1,
    )
    assert all(
        len(row["history"]) == 1 and row["prompt"][0]["content"].split("\n")[2] == "Candidates:" for row in one.test
    )
    # the templated trace starts from the most recent history item: with none shown it was an IndexError
    with pytest.raises(ValueError, match=r"trace_style='full' .* needs history_length >= 1"):
        build_rerank_datasets(folder, history_length=0, trace_style="full")


def test_shorten_title_needs_a_word():
    from dgr2_trl.data import shorten_title

    assert shorten_title("Argan Oil Shampoo", 1) == "Argan..."
    with pytest.raises(ValueError, match="max_words >= 1, got 0"):
        shorten_title("Argan Oil Shampoo", 0)  # was "..."
