"""Tests for dgr2_trl.evaluation.compare: per-query metrics, paired bootstrap, Kendall tau, seed summaries, JSONL."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from dgr2_trl.evaluation.compare import (
    METRIC_KEYS,
    aggregate_seeds,
    compare_rankings,
    kendall_tau,
    paired_bootstrap,
    per_query_metrics,
    read_jsonl,
    write_jsonl,
)


ITEMS = ["a", "b", "c", "d", "e", "f"]


def test_per_query_metrics_hand_computed():
    # target at rank 0, 2 and 4 of the same 6-item list
    m = per_query_metrics([ITEMS, ITEMS, ITEMS], ["a", "c", "e"])
    assert tuple(m) == METRIC_KEYS
    expected = {
        "recall@1": [1.0, 0.0, 0.0],
        "recall@3": [1.0, 1.0, 0.0],
        "recall@5": [1.0, 1.0, 1.0],
        "ndcg@3": [1.0, 0.5, 0.0],
        "ndcg@5": [1.0, 0.5, 1.0 / math.log2(6)],
    }
    for key, values in expected.items():
        assert m[key].dtype == np.float64
        assert m[key].shape == (3,)
        np.testing.assert_allclose(m[key], values, rtol=0, atol=1e-12)


def test_per_query_metrics_target_missing_or_last():
    m = per_query_metrics([ITEMS, ITEMS], ["f", "zzz"])
    for key in METRIC_KEYS:
        assert m[key].tolist() == [0.0, 0.0]


def test_per_query_metrics_length_mismatch_names_both_lengths():
    with pytest.raises(ValueError, match=r"2.*3"):
        per_query_metrics([ITEMS, ITEMS], ["a", "b", "c"])


def test_paired_bootstrap_identical_inputs():
    a = np.random.default_rng(3).random(200)
    res = paired_bootstrap(a, a.copy(), num_samples=2_000)
    assert res == {"diff": 0.0, "low": 0.0, "high": 0.0, "n": 200}


def test_paired_bootstrap_constant_shift():
    b = np.random.default_rng(4).random(300)
    res = paired_bootstrap(b + 0.1, b, num_samples=2_000)
    assert res["n"] == 300
    assert res["diff"] == pytest.approx(0.1, abs=1e-12)
    assert res["low"] <= 0.1 + 1e-12 and res["high"] >= 0.1 - 1e-12
    assert res["high"] - res["low"] < 1e-12


def test_paired_bootstrap_noisy_difference():
    rng = np.random.default_rng(5)
    n = 2_000
    b = rng.random(n)
    a = b + 0.05 + rng.normal(0.0, 0.3, n)
    res = paired_bootstrap(a, b, num_samples=4_000, seed=7)
    assert res["diff"] == pytest.approx(float(np.mean(a - b)), abs=1e-12)
    assert res["low"] < res["diff"] < res["high"]
    assert res["low"] < 0.05 < res["high"]
    # standard error is 0.3 / sqrt(2000) ~ 0.0067, so a 95% interval is ~0.026 wide
    assert 0.015 < res["high"] - res["low"] < 0.04
    assert paired_bootstrap(a, b, num_samples=4_000, seed=7) == res
    other = paired_bootstrap(a, b, num_samples=4_000, seed=8)
    assert other["diff"] == res["diff"]
    assert (other["low"], other["high"]) != (res["low"], res["high"])
    wider = paired_bootstrap(a, b, num_samples=4_000, seed=7, confidence=0.99)
    assert wider["low"] < res["low"] and wider["high"] > res["high"]


def test_paired_bootstrap_chunking_matches_single_chunk(monkeypatch):
    # chunk boundaries (incl. a partial last chunk) must neither drop nor repeat samples: same seed, same result
    import dgr2_trl.evaluation.compare as compare

    rng = np.random.default_rng(6)
    a, b = rng.random(50), rng.random(50)
    big = paired_bootstrap(a, b, num_samples=500, seed=1)
    monkeypatch.setattr(compare, "_BOOTSTRAP_CHUNK_CELLS", 50 * 7)  # 7 samples per chunk, last chunk partial
    small = paired_bootstrap(a, b, num_samples=500, seed=1)
    assert small == big


def test_paired_bootstrap_errors():
    with pytest.raises(ValueError, match=r"3.*2"):
        paired_bootstrap([1.0, 2.0, 3.0], [1.0, 2.0])
    with pytest.raises(ValueError):
        paired_bootstrap([], [])


def test_kendall_tau():
    x = ["a", "b", "c", "d"]
    assert kendall_tau(x, list(x)) == 1.0
    assert kendall_tau(x, x[::-1]) == -1.0
    assert kendall_tau(x, ["a", "c", "b", "d"]) == pytest.approx(1 - 2 * 1 / 6, abs=1e-12)
    # symmetric, and two discordant pairs out of three
    assert kendall_tau(["a", "b", "c"], ["b", "c", "a"]) == pytest.approx(1 - 2 * 2 / 3, abs=1e-12)
    assert kendall_tau(["b", "c", "a"], ["a", "b", "c"]) == pytest.approx(1 - 2 * 2 / 3, abs=1e-12)
    assert kendall_tau(["a"], ["a"]) == 1.0
    assert kendall_tau([], []) == 1.0


def test_kendall_tau_rejects_non_permutations():
    with pytest.raises(ValueError):
        kendall_tau(["a", "b", "c"], ["a", "b", "d"])
    with pytest.raises(ValueError):
        kendall_tau(["a", "b"], ["a", "b", "c"])
    with pytest.raises(ValueError):
        kendall_tau(["a", "a", "b"], ["a", "b", "b"])


def test_compare_rankings_hand_made():
    ref = ["a", "b", "c"]
    rankings = [["a", "b", "c"], ["b", "a", "c"], ["c", "b", "a"], ["a", "b", "c"]]
    reference = [ref, ref, ref, ref]
    targets = ["a", "b", "c", "c"]
    out = compare_rankings(rankings, reference, targets, num_samples=1_000)
    assert out["n"] == 4
    assert out["identical_rate"] == 0.5
    assert out["mean_kendall_tau"] == pytest.approx((1 + 1 / 3 - 1 + 1) / 4, abs=1e-12)
    # recall@1: queries 2 and 3 gain 1, the others tie
    assert out["recall@1"]["diff"] == 0.5
    assert 0.0 <= out["recall@1"]["low"] <= 0.5 <= out["recall@1"]["high"] <= 1.0
    # every target is in the top 3 of both lists
    assert out["recall@3"] == {"diff": 0.0, "low": 0.0, "high": 0.0}
    assert out["recall@5"] == {"diff": 0.0, "low": 0.0, "high": 0.0}
    # ndcg@3: query 2 gains 1 - 1/log2(3), query 3 gains 1 - 1/2
    expected = ((1 - 1 / math.log2(3)) + 0.5) / 4
    assert out["ndcg@3"]["diff"] == pytest.approx(expected, abs=1e-12)
    assert out["ndcg@5"]["diff"] == pytest.approx(expected, abs=1e-12)
    assert set(out) == set(METRIC_KEYS) | {"identical_rate", "mean_kendall_tau", "n"}


def test_compare_rankings_length_mismatch():
    with pytest.raises(ValueError):
        compare_rankings([["a", "b"]], [["a", "b"], ["b", "a"]], ["a"])


def test_aggregate_seeds_against_numpy():
    results = [
        {"recall@1": 0.37, "ndcg@3": 0.50, "n": 100, "name": "s0", "valid": {"rate": 1.0}, "only_here": 1.0},
        {"recall@1": 0.41, "ndcg@3": 0.52, "n": 100, "name": "s1", "valid": {"rate": 0.9}},
        {"recall@1": 0.35, "ndcg@3": 0.47, "n": 100, "name": "s2", "valid": {"rate": 0.8}},
    ]
    out = aggregate_seeds(results)
    assert set(out) == {"recall@1", "ndcg@3", "n"}
    r1 = np.array([0.37, 0.41, 0.35])
    assert out["recall@1"]["mean"] == pytest.approx(r1.mean(), abs=1e-12)
    assert out["recall@1"]["std"] == pytest.approx(r1.std(ddof=1), abs=1e-12)
    assert out["recall@1"]["min"] == 0.35
    assert out["recall@1"]["max"] == 0.41
    assert out["recall@1"]["n_seeds"] == 3
    assert out["n"] == {"mean": 100.0, "std": 0.0, "min": 100.0, "max": 100.0, "n_seeds": 3}
    assert set(aggregate_seeds(results, keys=["ndcg@3", "name", "missing"])) == {"ndcg@3"}


def test_aggregate_seeds_single_seed_and_empty():
    out = aggregate_seeds([{"recall@1": 0.4, "flag": True}])
    assert out == {"recall@1": {"mean": 0.4, "std": 0.0, "min": 0.4, "max": 0.4, "n_seeds": 1}}
    assert aggregate_seeds([]) == {}


def test_jsonl_round_trip(tmp_path):
    rows = [
        {"query": "café — 東京 🚀", "ranking": ["ä", "b"], "score": 0.25},
        {"query": "plain", "ranking": [], "score": np.float64(0.5), "n": np.int64(3)},
    ]
    path = tmp_path / "nested" / "dir" / "out.jsonl"
    write_jsonl(path, rows)
    raw = path.read_bytes().decode("utf-8")
    assert raw.count("\n") == 2
    assert "東京" in raw  # written as UTF-8, not \u escapes
    assert [json.loads(line) for line in raw.splitlines()] == read_jsonl(path)
    back = read_jsonl(str(path))
    assert back == [
        {"query": "café — 東京 🚀", "ranking": ["ä", "b"], "score": 0.25},
        {"query": "plain", "ranking": [], "score": 0.5, "n": 3},
    ]


def test_recipe_seed_aggregation(tmp_path):
    import json

    from dgr2_trl.recipe.seeds import aggregate_runs, markdown

    dirs, benches = [], []
    for seed, r3, cft in ((0, 0.60, 0.55), (1, 0.64, 0.54)):
        d = tmp_path / f"seed{seed}"
        d.mkdir()
        teacher = {"recall@3": {"diff": r3 - 0.5, "low": 0.0, "high": 0.2}, "identical_rate": 0.1, "n": 10}
        floor = {"recall@3": 0.5, "ndcg@3": 0.5, "n": 10}
        results = {
            "preset": {"seed": seed},
            "stages": {
                "floor": floor,
                "ar": {"recall@3": r3, "ndcg@3": r3, "valid_rate": 1.0, "n": 10},
                "naive": {"ndcg@3": 0.5, "n": 5},  # a sample: no gain-kept share
                "cft": {"recall@3": cft, "ndcg@3": cft, "valid_rate": 0.8, "n": 10},
            },
            "comparisons": {"teacher_vs_floor": {"test": teacher}, "vs_teacher": {}},
        }
        (d / "results.json").write_text(json.dumps(results))
        dirs.append(d)
        bench = {
            "seed": seed,
            "runs": {
                "ar/free": results["stages"]["ar"],
                "cft/constrained": {"ndcg@3": cft + 0.02, "valid_rate": 1.0, "n": 10},
            },
            "vs_teacher_free": {"cft": {"constrained": {"ndcg@3": {"diff": cft + 0.02 - r3}, "n": 10}}},
        }
        benches.append(tmp_path / f"constrained{seed}.json")
        benches[-1].write_text(json.dumps(bench))
    summary = aggregate_runs(dirs)
    assert summary["seeds"] == [0, 1]
    ar = summary["stages"]["ar"]["recall@3"]
    assert abs(ar["mean"] - 0.62) < 1e-12 and abs(ar["std"] - np.std([0.60, 0.64], ddof=1)) < 1e-12
    assert abs(summary["teacher_vs_floor"]["test"]["recall@3"]["mean"] - 0.12) < 1e-12
    assert "| AR teacher |" in markdown(summary) and "0.6200 ± 0.0283" in markdown(summary)
    # gain kept: (0.55 - 0.5) / 0.10 and (0.54 - 0.5) / 0.14; the naive sample is left out
    assert set(summary["gain_kept"]) == {"cft"}
    assert abs(summary["gain_kept"]["cft"]["mean"] - (0.5 + 0.04 / 0.14) / 2) < 1e-12
    assert "constrained" not in summary

    summary = aggregate_runs(dirs, benches)
    c = summary["constrained"]
    assert abs(c["stages"]["cft"]["ndcg@3"]["mean"] - 0.565) < 1e-12
    assert abs(c["vs_teacher"]["cft"]["ndcg@3"]["mean"] - ((0.57 - 0.60) + (0.56 - 0.64)) / 2) < 1e-12
    assert abs(c["gain_kept"]["cft"]["min"] - 0.06 / 0.14) < 1e-12 and abs(c["gain_kept"]["cft"]["max"] - 0.7) < 1e-12
    assert "| +CFT constrained - teacher (test) |" in markdown(summary)
    with pytest.raises(ValueError, match="one per run"):
        aggregate_runs(dirs, benches[:1])
    with pytest.raises(ValueError, match="seed 1 but its run has seed 0"):
        aggregate_runs(dirs, benches[::-1])


def test_recipe_seed_aggregation_of_constrained_runs_pools_the_per_query_rows(tmp_path):
    """Runs evaluated under the ranking constraint with their free evaluation beside it: both decodings are
    summarised, and each stage is compared with the teacher over the pooled test users of every run (paired)."""
    import json

    from dgr2_trl.evaluation import per_query_metrics, write_jsonl
    from dgr2_trl.recipe.seeds import aggregate_runs, markdown

    candidates = [f"i{k}" for k in range(10)]
    rng = np.random.default_rng(0)
    dirs, stage_diffs, first_is_target = [], [], []
    for seed in (0, 1, 2):
        d = tmp_path / f"seed{seed}"
        targets = [candidates[k] for k in rng.integers(0, 10, size=20)]
        first_is_target.append(np.mean([t == candidates[0] for t in targets]))
        # the teacher puts the target first on half the users, the student on a third; free both do worse
        rankings = {
            ("ar", ""): [[t] + [c for c in candidates if c != t] if u % 2 else candidates for u, t in enumerate(targets)],
            ("cft", ""): [[t] + [c for c in candidates if c != t] if u % 3 == 0 else candidates for u, t in enumerate(targets)],
            ("ar", "free-"): [candidates] * 20,
            ("opd", ""): [[t] + [c for c in candidates if c != t] if u % 2 else candidates for u, t in enumerate(targets)],
            ("cft", "free-"): [candidates[::-1]] * 20,
        }  # fmt: skip
        stages = {"floor": {"ndcg@3": 0.5, "recall@3": 0.5, "n": 20}}
        for (stage, prefix), ranked in rankings.items():
            (d / stage).mkdir(parents=True, exist_ok=True)
            write_jsonl(
                d / stage / f"{prefix}test_rows.jsonl", [{"ranking": r, "target": t} for r, t in zip(ranked, targets)]
            )
            metrics = {k: float(v.mean()) for k, v in per_query_metrics(ranked, targets).items()}
            metrics.update(valid_rate=1.0, n=20)
            if prefix:
                stages[stage]["free"] = metrics
            else:
                stages[stage] = {**metrics, "constrained": True}
        model, teacher = (
            per_query_metrics(rankings["cft", ""], targets),
            per_query_metrics(rankings["ar", ""], targets),
        )
        stage_diffs.append(model["ndcg@3"] - teacher["ndcg@3"])
        comparisons = {"vs_teacher": {"cft": {"ndcg@3": {"diff": float(stage_diffs[-1].mean())}}}, "free": {}}
        (d / "results.json").write_text(
            json.dumps({"preset": {"seed": seed}, "stages": stages, "comparisons": comparisons})
        )
        dirs.append(d)
    summary = aggregate_runs(dirs)
    assert summary["evaluated_constrained"]
    # OPD writes the teacher's rankings here: its step over CFT is the teacher's lead, pooled and per seed
    assert set(summary["pooled_vs_teacher"]) == {"cft", "opd", "opd - cft"}
    assert summary["pooled_vs_teacher"]["opd"]["identical_rate"] == 1.0
    step = summary["pooled_vs_teacher"]["opd - cft"]["ndcg@3"]["diff"]
    assert abs(step + np.concatenate(stage_diffs).mean()) < 1e-12
    assert [s["ndcg@3"] for s in summary["vs_teacher_per_seed"]["opd - cft"]] == pytest.approx(
        [-float(x.mean()) for x in stage_diffs]
    )
    pooled = summary["pooled_vs_teacher"]["cft"]
    assert pooled["n"] == 60 and abs(pooled["ndcg@3"]["diff"] - np.concatenate(stage_diffs).mean()) < 1e-12
    assert pooled["ndcg@3"]["low"] <= pooled["ndcg@3"]["diff"] <= pooled["ndcg@3"]["high"]
    assert [s["ndcg@3"] for s in summary["vs_teacher_per_seed"]["cft"]] == [float(x.mean()) for x in stage_diffs]
    # the free evaluation, summarised on its own: the free teacher keeps the candidates' order
    free = summary["free"]
    assert abs(free["stages"]["ar"]["recall@1"]["mean"] - np.mean(first_is_target)) < 1e-12
    assert free["pooled_vs_teacher"]["cft"]["identical_rate"] == 0.0
    assert free["stages"]["floor"]["ndcg@3"]["mean"] == 0.5
    text = markdown(summary)
    assert "The same models decoded free (no constraint):" in text
    # a stage row and a per-seed row for each decoding (OPD has no free rows here), and CFT -> OPD's step
    assert sum(line.startswith("| +CFT |") for line in text.splitlines()) == 4
    assert "| +OPD - +CFT |" in text
    assert "| +CFT - teacher (test) |" in text
    per_seed = " / ".join(f"{float(x.mean()):+.4f}" for x in stage_diffs)
    assert per_seed in text
