"""Item identifiers: k-means, semantic ids (unique, registered as single tokens), single-token and plain ids."""

import re

import numpy as np
import pytest

from dgr2_trl.data import kmeans, leave_one_out_split, load_amazon_beauty, make_item_ids, semantic_item_ids
from dgr2_trl.tokenization import train_chat_tokenizer


def test_kmeans_recovers_separated_clusters_deterministically():
    rng = np.random.default_rng(0)
    centers = np.array([[0, 0], [10, 0], [0, 10]])
    x = np.concatenate([c + rng.normal(0, 0.1, (30, 2)) for c in centers])
    c1, a1 = kmeans(x, 3, seed=1)
    c2, a2 = kmeans(x, 3, seed=1)
    assert np.array_equal(a1, a2) and np.allclose(c1, c2)
    for block in range(3):
        assert len(set(a1[block * 30 : (block + 1) * 30])) == 1
    assert len(set(a1)) == 3


def test_single_and_plain_schemes():
    single = make_item_ids("single", [3, 1, 2], [], {})
    assert single.id_of == {1: "<i_1>", 2: "<i_2>", 3: "<i_3>"} and single.special_tokens == [
        "<i_1>",
        "<i_2>",
        "<i_3>",
    ]
    plain = make_item_ids("plain", [3, 1], [], {})
    assert plain.id_of == {1: "1", 3: "3"} and plain.special_tokens == [] and plain.item_of == {"1": 1, "3": 3}
    with pytest.raises(ValueError, match="unknown id_scheme"):
        make_item_ids("nope", [1], [], {})


@pytest.fixture(scope="module")
def beauty_ids():
    data = load_amazon_beauty()
    split = leave_one_out_split(data.sequences, data.user_ids)
    return data, semantic_item_ids(split.train, data.titles, seed=0)


def test_semantic_ids_are_unique_and_made_of_registered_tokens(beauty_ids):
    data, ids = beauty_ids
    assert set(ids.id_of) == set(data.titles)
    assert len(set(ids.id_of.values())) == len(data.titles)
    pattern = re.compile(r"^<a_(\d+)><b_(\d+)><c_(\d+)><d_(\d+)>$")
    tokens = set(ids.special_tokens)
    for s in ids.id_of.values():
        m = pattern.match(s)
        assert m and all(int(g) < 64 for g in m.groups()[:3])
        assert set(re.findall(r"<[a-d]_\d+>", s)) <= tokens
    st = ids.stats
    assert st["num_items"] == 12_101 and 0.5 < st["unique_fraction"] < 1.0
    assert st["num_colliding_items"] == round((1 - st["unique_fraction"]) * 12_101)
    assert len(tokens) == 3 * 64 + st["max_group_size"]


def test_semantic_prefixes_group_similar_titles(beauty_ids):
    data, ids = beauty_ids
    # items sharing a first code share more title words than random pairs do
    words = {i: set(t.lower().split()) for i, t in data.titles.items()}
    first = {i: s.split(">")[0] for i, s in ids.id_of.items()}
    rng = np.random.default_rng(0)
    items = list(data.titles)
    same, rand = [], []
    for a in rng.choice(items, 2000):
        group = [b for b in items[:3000] if first[b] == first[a] and b != a]
        if group:
            b = group[rng.integers(len(group))]
            same.append(len(words[a] & words[b]))
        rand.append(len(words[a] & words[items[rng.integers(len(items))]]))
    assert np.mean(same) > 1.5 * np.mean(rand)


def test_tokenizer_keeps_each_id_token_whole(beauty_ids):
    _, ids = beauty_ids
    tok = train_chat_tokenizer(
        ["nail polish", "lip gloss"] * 10, vocab_size=300, extra_special_tokens=ids.special_tokens
    )
    sample = ids.id_of[1] + " OPI"
    pieces = tok.convert_ids_to_tokens(tok(sample)["input_ids"])
    assert pieces[:4] == re.findall(r"<[a-d]_\d+>", ids.id_of[1])


def test_tokenizer_learns_the_text_between_added_tokens():
    # the BPE is trained on what the added tokens leave, so the separator of an answer written in item tokens is
    # one learnt token; trained across the tokens it would learn merges such as `]","[` that can never apply
    answer = '{"ranking":["[3]","[1]","[2]"]}'
    tok = train_chat_tokenizer([answer] * 50, vocab_size=300, extra_special_tokens=["[1]", "[2]", "[3]"])
    pieces = tok.convert_ids_to_tokens(tok(answer)["input_ids"])
    assert pieces.count('","') == 2 and pieces[3:8] == ["[3]", '","', "[1]", '","', "[2]"]
    assert tok.decode(tok(answer)["input_ids"]) == answer
