"""Item identifiers: how an item is written in prompts and answers.

Three schemes:
- `semantic`: a short tuple of codebook tokens, e.g. `<a_12><b_3><c_40><d_1>`: residual k-means (3 levels by
  default) over item vectors built from training interactions (truncated SVD of the user-item matrix, i.e. of
  item co-occurrence) and title bag-of-words, plus a last level that numbers the items sharing a tuple so that
  every id is unique. Similar items share prefixes.
- `single`: one token per item, `<i_123>`.
- `plain`: the item id as text, `123` (no special tokens; handy in tests).

Every scheme gives `special_tokens`, the token strings a tokenizer must register (see
`dgr2_trl.tokenization.train_chat_tokenizer(..., extra_special_tokens=...)`).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np


ID_SCHEMES = ("semantic", "single", "plain")
_WORD = re.compile(r"[a-z][a-z0-9]+")


@dataclass(frozen=True)
class ItemIdentifiers:
    """Bijection item id <-> id string, plus the special tokens the id strings are made of."""

    scheme: str
    id_of: dict[int, str]
    special_tokens: list[str]
    stats: dict = field(default_factory=dict)

    @property
    def item_of(self) -> dict[str, int]:
        return {s: i for i, s in self.id_of.items()}

    def __len__(self) -> int:
        return len(self.id_of)


def plain_item_ids(items: Iterable[int]) -> ItemIdentifiers:
    return ItemIdentifiers("plain", {int(i): str(int(i)) for i in sorted(set(items))}, [])


def single_token_item_ids(items: Iterable[int]) -> ItemIdentifiers:
    id_of = {int(i): f"<i_{int(i)}>" for i in sorted(set(items))}
    return ItemIdentifiers("single", id_of, list(id_of.values()))


# ---- item vectors ----------------------------------------------------------------------------------------------
def _grouped_sum(values: np.ndarray, groups: np.ndarray, num_groups: int) -> np.ndarray:
    """Sum the rows of `values` by `groups` (a sparse-matrix product without scipy)."""
    out = np.zeros((num_groups, values.shape[1]))
    np.add.at(out, groups, values)
    return out


def _randomized_svd_rows(
    rows: np.ndarray, cols: np.ndarray, vals: np.ndarray, shape: tuple[int, int], rank: int, seed: int
) -> np.ndarray:
    """Column embeddings (V * singular values) of a sparse matrix given as COO arrays (randomised SVD, 2 power
    iterations)."""
    rng = np.random.default_rng(seed)
    rank = max(1, min(rank, min(shape) - 1))
    sketch = rng.standard_normal((shape[1], rank + 10))

    def matvec(m):  # A @ m
        return _grouped_sum(vals[:, None] * m[cols], rows, shape[0])

    def rmatvec(m):  # A.T @ m
        return _grouped_sum(vals[:, None] * m[rows], cols, shape[1])

    q = sketch
    for _ in range(2):
        q, _ = np.linalg.qr(rmatvec(matvec(q)))
    b = matvec(q)  # A Q  (rows x r)
    _, s, vt = np.linalg.svd(b, full_matrices=False)
    return (q @ vt.T)[:, :rank] * s[:rank]


def title_words(title: str) -> list[str]:
    """Lower-case word tokens of a title (letters first, at least 2 characters)."""
    return _WORD.findall(title.lower())


def item_vectors(
    items: Sequence[int],
    train_sequences: Sequence[Sequence[int]],
    titles: Mapping[int, str],
    dim: int = 64,
    title_weight: float = 1.0,
    seed: int = 0,
) -> np.ndarray:
    """One row per item of `items`: [interaction SVD | title bag-of-words SVD], each part L2-normalised.

    Interactions come from `train_sequences` only (no validation/test leakage). Items never seen in training
    get a zero interaction part and rely on their title.
    """
    index = {int(i): k for k, i in enumerate(items)}
    n = len(items)
    parts: list[tuple[np.ndarray, float]] = []  # (embedding, weight)
    # interactions: user x item, rows scaled by 1/sqrt(length) so long sequences do not dominate
    r, c, v = [], [], []
    for u, seq in enumerate(train_sequences):
        known = [index[i] for i in seq if i in index]
        r += [u] * len(known)
        c += known
        v += [1.0 / np.sqrt(max(len(known), 1))] * len(known)
    if c:
        parts.append(
            (_randomized_svd_rows(np.array(r), np.array(c), np.array(v), (len(train_sequences), n), dim, seed), 1.0)
        )
    # titles: TF-IDF over words that appear in at least 2 titles
    docs = [title_words(titles.get(int(i), "")) for i in items]
    df = Counter(w for d in docs for w in set(d))
    vocab = {w: k for k, w in enumerate(sorted(w for w, f in df.items() if f >= 2))}
    r, c, v = [], [], []
    for k, d in enumerate(docs):
        counts = Counter(w for w in d if w in vocab)
        norm = np.sqrt(sum(x * x for x in counts.values())) or 1.0
        for w, x in counts.items():
            r.append(k)
            c.append(vocab[w])
            v.append(x / norm * np.log(n / df[w]))
    if c and title_weight > 0:
        # SVD of the word x item matrix: its column embeddings are item vectors
        parts.append(
            (_randomized_svd_rows(np.array(c), np.array(r), np.array(v), (len(vocab), n), dim, seed + 1), title_weight)
        )
    if not parts:
        raise ValueError("no interactions and no titles to build item vectors from")
    return np.concatenate(
        [w * p / np.maximum(np.linalg.norm(p, axis=1, keepdims=True), 1e-12) for p, w in parts], axis=1
    )


# ---- residual k-means -------------------------------------------------------------------------------------------
def kmeans(x: np.ndarray, k: int, seed: int = 0, iterations: int = 25) -> tuple[np.ndarray, np.ndarray]:
    """Plain Lloyd k-means with k-means++ seeding; returns (centroids, assignment). Deterministic for a seed."""
    rng = np.random.default_rng(seed)
    n = len(x)
    k = min(k, n)
    sq = (x * x).sum(1)
    centroids = [x[rng.integers(n)]]
    closest = ((x - centroids[0]) ** 2).sum(1)
    for _ in range(1, k):
        p = closest / closest.sum() if closest.sum() > 0 else np.full(n, 1.0 / n)
        centroids.append(x[rng.choice(n, p=p)])
        closest = np.minimum(closest, ((x - centroids[-1]) ** 2).sum(1))
    c = np.array(centroids)
    assign = np.zeros(n, dtype=np.int64)
    for _ in range(iterations):
        dist = sq[:, None] - 2 * x @ c.T + (c * c).sum(1)[None, :]
        new = dist.argmin(1)
        if _ > 0 and np.array_equal(new, assign):
            break
        assign = new
        for j in range(k):
            members = assign == j
            # an empty cluster takes the point farthest from its centroid, so all k codes stay in use
            c[j] = x[members].mean(0) if members.any() else x[dist[np.arange(n), assign].argmax()]
    return c, assign


def residual_codes(x: np.ndarray, levels: int = 3, codebook_size: int = 64, seed: int = 0) -> np.ndarray:
    """(n, levels) codes: level l clusters what levels < l left unexplained (residual quantisation)."""
    residual = x.copy()
    codes = np.zeros((len(x), levels), dtype=np.int64)
    for level in range(levels):
        centroids, assign = kmeans(residual, codebook_size, seed=seed + level)
        codes[:, level] = assign
        residual = residual - centroids[assign]
    return codes


def semantic_item_ids(
    train_sequences: Sequence[Sequence[int]],
    titles: Mapping[int, str],
    items: Iterable[int] | None = None,
    levels: int = 3,
    codebook_size: int = 64,
    dim: int = 64,
    title_weight: float = 1.0,
    seed: int = 0,
) -> ItemIdentifiers:
    """Semantic ids: `levels` residual k-means codes + a last code numbering items that share those codes.

    `stats` reports uniqueness before the last level: `unique_fraction` (items whose code tuple no other item
    has), `num_colliding_items`, `num_collision_groups`, `max_group_size`.
    """
    items = sorted(set(items) if items is not None else set(titles))
    letters = "abcdefghijklmnopqrstuvwxyz"
    if levels + 1 > len(letters):
        raise ValueError(f"at most {len(letters) - 1} levels, got {levels}")
    vectors = item_vectors(items, train_sequences, titles, dim=dim, title_weight=title_weight, seed=seed)
    codes = residual_codes(vectors, levels=levels, codebook_size=codebook_size, seed=seed)
    groups: dict[tuple[int, ...], list[int]] = {}
    for item, code in zip(items, map(tuple, codes.tolist())):
        groups.setdefault(code, []).append(item)
    id_of: dict[int, str] = {}
    for code, members in groups.items():
        prefix = "".join(f"<{letters[l]}_{c}>" for l, c in enumerate(code))
        for rank, item in enumerate(members):  # members are in increasing item id
            id_of[item] = prefix + f"<{letters[levels]}_{rank}>"
    max_group = max(len(m) for m in groups.values())
    tokens = [f"<{letters[l]}_{c}>" for l in range(levels) for c in range(codebook_size)]
    tokens += [f"<{letters[levels]}_{r}>" for r in range(max_group)]
    colliding = sum(len(m) for m in groups.values() if len(m) > 1)
    stats = {
        "num_items": len(items),
        "levels": levels,
        "codebook_size": codebook_size,
        "unique_fraction": 1.0 - colliding / len(items),
        "num_colliding_items": colliding,
        "num_collision_groups": sum(1 for m in groups.values() if len(m) > 1),
        "num_distinct_tuples": len(groups),
        "max_group_size": max_group,
    }
    return ItemIdentifiers("semantic", dict(sorted(id_of.items())), tokens, stats)


def make_item_ids(
    scheme: str,
    items: Iterable[int],
    train_sequences: Sequence[Sequence[int]],
    titles: Mapping[int, str],
    seed: int = 0,
    **kwargs,
) -> ItemIdentifiers:
    """Build identifiers by scheme name (`semantic`, `single` or `plain`)."""
    if scheme == "semantic":
        return semantic_item_ids(train_sequences, titles, items=items, seed=seed, **kwargs)
    if scheme == "single":
        return single_token_item_ids(items)
    if scheme == "plain":
        return plain_item_ids(items)
    raise ValueError(f"unknown id_scheme {scheme!r}; expected one of {ID_SCHEMES}")
