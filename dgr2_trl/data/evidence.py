"""Item evidence for re-ranking: what a re-ranking stage knows about each candidate, as features and tokens.

Per (query, candidate), from training interactions and titles only:

- `score`: the pre-ranker's score relative to its top candidate (the retriever's own confidence);
- `cooc`: recency-weighted co-occurrence of the candidate with every history item (within `window` steps in the
  training sequences, normalised by the history item's degree);
- `title`: IDF-weighted title words the candidate shares with the whole history (full titles);
- `svd`: recency-weighted cosine similarity to the history in a truncated SVD of the user-item matrix;
- `brand`: recency-weighted share of history items whose title starts with the candidate's first word;
- `pop`: log popularity.

Leak-free by construction: the statistics are fitted on every user's training prefix *without its last item*,
which is the target of that user's training query, so a training query never sees its own answer (and
validation/test queries see the same statistics). Each feature is cut into `num_levels` levels by training
quantiles (level 0 = no evidence where a feature is often exactly 0), written as one token per feature
(`<c5>`), so a small LM reads them exactly.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from .item_ids import _randomized_svd_rows
from .prompts import EVIDENCE_FEATURES, EVIDENCE_LETTERS, content_words


FEATURES = EVIDENCE_FEATURES


def evidence_tokens(num_levels: int = 8) -> list[str]:
    """Every level token, feature by feature (to register with a tokenizer): `<s0>`..`<s7>`, `<c0>`, ..."""
    return [f"<{letter}{level}>" for letter in EVIDENCE_LETTERS for level in range(num_levels)]


def _brand(title: str) -> str:
    words = title.lower().split()
    return words[0].strip(",.:;'\"()") if words else ""


@dataclass
class EvidenceModel:
    """Fits the statistics behind the evidence features; `features(...)` computes them, `levels(...)` buckets.

    Call `fit(sequences, titles)` with the training prefixes (this drops each prefix's last item itself, see the
    module docstring), then `fit_levels(features)` on the training queries' features.
    """

    window: int = 5
    history_window: int = 20
    recency_decay: float = 0.85
    smoothing: float = 5.0
    svd_rank: int = 48
    num_levels: int = 8
    seed: int = 0
    # fitted state
    _keys: np.ndarray = field(default=None, init=False, repr=False)
    _vals: np.ndarray = field(default=None, init=False, repr=False)
    _degree: np.ndarray = field(default=None, init=False, repr=False)
    _popularity: np.ndarray = field(default=None, init=False, repr=False)
    _embedding: np.ndarray = field(default=None, init=False, repr=False)
    _words: dict = field(default=None, init=False, repr=False)
    _idf: dict = field(default=None, init=False, repr=False)
    _brands: dict = field(default=None, init=False, repr=False)
    _num_slots: int = field(default=0, init=False)
    edges: list = field(default=None, init=False, repr=False)

    # ---- fitting -------------------------------------------------------------------------------------------
    def fit(self, train_prefixes: Sequence[Sequence[int]], titles: Mapping[int, str]) -> EvidenceModel:
        sequences = [list(s[:-1]) for s in train_prefixes]  # the last training item is a training query's target
        items = [i for s in sequences for i in s]
        self._num_slots = n = max(max(titles, default=0), max(items, default=0)) + 1
        src, dst, weight = [], [], []
        for seq in sequences:
            arr = np.asarray(seq, dtype=np.int64)
            for gap in range(1, self.window + 1):
                if len(arr) <= gap:
                    break
                w = 1.0 / gap
                src += [arr[:-gap], arr[gap:]]
                dst += [arr[gap:], arr[:-gap]]
                weight += [np.full(len(arr) - gap, w)] * 2
        src = np.concatenate(src) if src else np.zeros(0, dtype=np.int64)
        dst = np.concatenate(dst) if dst else np.zeros(0, dtype=np.int64)
        weight = np.concatenate(weight) if weight else np.zeros(0)
        keys, inverse = np.unique(src * n + dst, return_inverse=True)
        self._keys, self._vals = keys, np.bincount(inverse, weights=weight, minlength=len(keys))
        self._degree = np.bincount(src, weights=weight, minlength=n)
        self._popularity = np.bincount(np.asarray(items, dtype=np.int64), minlength=n).astype(np.float64)
        # user x item matrix (rows scaled by 1/sqrt(length)) -> item embeddings
        rows = np.concatenate([np.full(len(s), u) for u, s in enumerate(sequences) if s])
        cols = np.asarray(items, dtype=np.int64)
        vals = np.concatenate([np.full(len(s), 1.0 / math.sqrt(len(s))) for s in sequences if s])
        emb = _randomized_svd_rows(rows, cols, vals, (len(sequences), n), self.svd_rank, self.seed)
        self._embedding = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
        self._words = {i: content_words(t) for i, t in titles.items()}
        df = Counter(w for ws in self._words.values() for w in ws)
        self._idf = {w: math.log(len(titles) / c) for w, c in df.items()}
        self._brands = {i: _brand(t) for i, t in titles.items()}
        return self

    # ---- features ------------------------------------------------------------------------------------------
    def features(self, history: Sequence[int], candidates: Sequence[int], pre_scores: Sequence[float]) -> np.ndarray:
        """(len(candidates), len(FEATURES)) raw feature values for one query."""
        if self._keys is None:
            raise RuntimeError("EvidenceModel.fit(...) must be called before computing features")
        hist = [int(h) for h in history[-self.history_window :]][::-1]  # most recent first
        cands = np.asarray(candidates, dtype=np.int64)
        recency = self.recency_decay ** np.arange(len(hist))
        out = np.zeros((len(cands), len(FEATURES)))
        top = max(pre_scores[0], 1e-12) if len(pre_scores) else 1.0
        out[:, 0] = np.clip(np.asarray(pre_scores, dtype=np.float64) / top, 0.0, 1.0)
        if hist:
            h = np.asarray(hist, dtype=np.int64)
            known = h < self._num_slots
            h = np.where(known, h, 0)
            keys = h[:, None] * self._num_slots + cands[None, :]
            pos = np.searchsorted(self._keys, keys)
            pos = np.minimum(pos, len(self._keys) - 1)
            counts = np.where(self._keys[pos] == keys, self._vals[pos], 0.0) * known[:, None]
            norm = counts / (self._degree[h][:, None] + self.smoothing)
            out[:, 1] = recency @ norm
            sims = self._embedding[cands] @ self._embedding[h].T * known[None, :]
            out[:, 3] = sims @ recency / recency.sum()
            words: dict[str, float] = {}
            brands: dict[str, float] = {}
            for r, item in zip(recency, hist):
                for w in self._words.get(item, ()):
                    words[w] = max(words.get(w, 0.0), r)
                b = self._brands.get(item, "")
                if b:
                    brands[b] = brands.get(b, 0.0) + r
            for k, c in enumerate(candidates):
                out[k, 2] = sum(self._idf.get(w, 0.0) * words.get(w, 0.0) for w in self._words.get(int(c), ()))
                out[k, 4] = brands.get(self._brands.get(int(c), ""), 0.0) / recency.sum()
        out[:, 5] = np.log1p(self._popularity[np.minimum(cands, self._num_slots - 1)])
        return out

    # ---- levels --------------------------------------------------------------------------------------------
    def fit_levels(self, features: np.ndarray) -> EvidenceModel:
        """Quantile edges per feature from training features (rows = (query, candidate) pairs). A feature that is
        exactly 0 in over 5% of rows keeps level 0 for 0 and splits the positive values into the other levels."""
        features = np.asarray(features).reshape(-1, len(FEATURES))
        self.edges = []
        for f in range(len(FEATURES)):
            x = features[:, f]
            zero = x <= 0
            if zero.mean() > 0.05:
                qs = np.quantile(x[~zero], np.linspace(0, 1, self.num_levels)[1:-1]) if (~zero).any() else []
                self.edges.append(("zero", np.unique(qs)))
            else:
                qs = np.quantile(x, np.linspace(0, 1, self.num_levels + 1)[1:-1])
                self.edges.append(("all", np.unique(qs)))
        return self

    def levels(self, features: np.ndarray) -> np.ndarray:
        """Integer levels in [0, num_levels) with the shape of `features` (last axis = FEATURES)."""
        if self.edges is None:
            raise RuntimeError("EvidenceModel.fit_levels(...) must be called before levels(...)")
        features = np.asarray(features)
        out = np.zeros(features.shape, dtype=np.int64)
        for f, (kind, edges) in enumerate(self.edges):
            x = features[..., f]
            if kind == "zero":
                out[..., f] = np.where(x <= 0, 0, 1 + np.searchsorted(edges, x, side="right"))
            else:
                out[..., f] = np.searchsorted(edges, x, side="right")
        return np.minimum(out, self.num_levels - 1)
