"""A feature-based listwise re-ranker: what a practitioner would try first, and the order the LM learns.

A small MLP scores each candidate from its evidence features (`dgr2_trl.data.evidence`) plus its pre-ranker
position, trained with the listwise softmax loss (the true item's cross-entropy over its 10 candidates, i.e. a
ListNet/ListMLE top-1 objective). Only torch. `out_of_fold_scores` gives training queries scores from models that
never saw them, so a ranking target built from them carries no memorised answer.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from .prompts import STRONG_SCORE_LEVEL


# log1p before standardising: counts and IDF sums are heavy-tailed
_LOG_FEATURES = (1, 2)


@dataclass
class FeatureRanker:
    """`fit(features, targets)`: features (queries, candidates, F), targets the true item's candidate index."""

    # chosen on validation users (NDCG@3) among hidden 16/32, 50-300 epochs, weight decay 1e-4..1e-1
    hidden_size: int = 16
    epochs: int = 100
    learning_rate: float = 0.01
    weight_decay: float = 1e-2
    seed: int = 0
    _mean: np.ndarray = field(default=None, init=False, repr=False)
    _std: np.ndarray = field(default=None, init=False, repr=False)
    _net: torch.nn.Module = field(default=None, init=False, repr=False)

    def _inputs(self, features: np.ndarray) -> torch.Tensor:
        x = np.asarray(features, dtype=np.float64).copy()
        x[..., list(_LOG_FEATURES)] = np.log1p(np.maximum(x[..., list(_LOG_FEATURES)], 0.0))
        if self._mean is None:
            self._mean = x.reshape(-1, x.shape[-1]).mean(0)
            self._std = x.reshape(-1, x.shape[-1]).std(0) + 1e-6
        x = (x - self._mean) / self._std
        q, k, _ = x.shape
        position = np.broadcast_to(np.eye(k), (q, k, k))
        return torch.tensor(np.concatenate([x, position], axis=-1), dtype=torch.float32)

    def fit(self, features: np.ndarray, targets: np.ndarray) -> FeatureRanker:
        self._mean = None
        x = self._inputs(features)
        y = torch.as_tensor(np.asarray(targets), dtype=torch.long)
        generator = torch.Generator().manual_seed(self.seed)
        with torch.random.fork_rng():
            torch.manual_seed(self.seed)
            self._net = torch.nn.Sequential(
                torch.nn.Linear(x.shape[-1], self.hidden_size), torch.nn.GELU(), torch.nn.Linear(self.hidden_size, 1)
            )
        optimiser = torch.optim.AdamW(self._net.parameters(), lr=self.learning_rate, weight_decay=self.weight_decay)
        batch = 2048
        for _ in range(self.epochs):
            order = torch.randperm(len(x), generator=generator)
            for start in range(0, len(x), batch):
                idx = order[start : start + batch]
                loss = torch.nn.functional.cross_entropy(self._net(x[idx]).squeeze(-1), y[idx])
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
        return self

    @torch.no_grad()
    def scores(self, features: np.ndarray) -> np.ndarray:
        if self._net is None:
            raise RuntimeError("FeatureRanker.fit(...) must be called before scores(...)")
        return self._net(self._inputs(features)).squeeze(-1).double().numpy()

    def rank(self, features: np.ndarray) -> np.ndarray:
        """Candidate indices best first, per query (ties: pre-ranker order)."""
        return np.argsort(-self.scores(features), axis=-1, kind="stable")


def out_of_fold_scores(
    features: np.ndarray, targets: np.ndarray, folds: int = 5, seed: int = 0, **kwargs
) -> np.ndarray:
    """Scores for every query from a `FeatureRanker` fitted on the other folds (queries split at random)."""
    n = len(features)
    fold_of = np.random.default_rng(seed).permutation(n) % folds
    out = np.zeros(features.shape[:2])
    for f in range(folds):
        held = fold_of == f
        ranker = FeatureRanker(seed=seed + f, **kwargs).fit(features[~held], targets[~held])
        out[held] = ranker.scores(features[held])
    return out


@dataclass
class LevelScorer:
    """A linear listwise scorer over what the evidence prompt shows: one weight per (feature, level) token plus one
    per pre-ranker position, fitted like `FeatureRanker`. Its score is a sum of per-token weights, so an LM that
    reads the level tokens can compute it exactly; `score_levels` cuts it into `num_score_levels` training
    quantiles, the `<rK>` tokens of the `scores` trace."""

    num_levels: int = 8
    num_score_levels: int = 10
    epochs: int = 300
    learning_rate: float = 0.05
    seed: int = 0
    weights: np.ndarray = field(default=None, init=False, repr=False)  # (features, levels)
    position_weights: np.ndarray = field(default=None, init=False, repr=False)
    edges: np.ndarray = field(default=None, init=False, repr=False)

    def _onehot(self, levels: np.ndarray) -> torch.Tensor:
        levels = np.asarray(levels, dtype=np.int64)
        q, k, f = levels.shape
        x = np.zeros((q, k, f * self.num_levels + k), dtype=np.float32)
        index = levels + np.arange(f) * self.num_levels
        np.put_along_axis(x, index, 1.0, axis=-1)
        x[:, :, f * self.num_levels :] = np.eye(k, dtype=np.float32)
        return torch.from_numpy(x)

    def fit(self, levels: np.ndarray, targets: np.ndarray) -> LevelScorer:
        levels = np.asarray(levels)
        x, y = self._onehot(levels), torch.as_tensor(np.asarray(targets), dtype=torch.long)
        with torch.random.fork_rng():
            torch.manual_seed(self.seed)
            linear = torch.nn.Linear(x.shape[-1], 1, bias=False)
        optimiser = torch.optim.Adam(linear.parameters(), lr=self.learning_rate)
        for _ in range(self.epochs):
            loss = torch.nn.functional.cross_entropy(linear(x).squeeze(-1), y)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
        w = linear.weight.detach().double().numpy()[0]
        f = levels.shape[-1]
        self.weights = w[: f * self.num_levels].reshape(f, self.num_levels)
        self.position_weights = w[f * self.num_levels :]
        scores = self.scores(levels).ravel()
        self.edges = np.quantile(scores, np.linspace(0, 1, self.num_score_levels + 1)[1:-1])
        return self

    def scores(self, levels: np.ndarray) -> np.ndarray:
        """(queries, candidates) sums of token weights (positions beyond the fitted ones get the last weight)."""
        if self.weights is None:
            raise RuntimeError("LevelScorer.fit(...) must be called before scores(...)")
        levels = np.asarray(levels, dtype=np.int64)
        token = self.weights[np.arange(levels.shape[-1]), levels].sum(-1)
        k = levels.shape[-2]
        position = self.position_weights[np.minimum(np.arange(k), len(self.position_weights) - 1)]
        return token + position

    def score_levels(self, levels: np.ndarray) -> np.ndarray:
        return np.searchsorted(self.edges, self.scores(levels), side="right")

    def strongest_feature(self, levels: np.ndarray) -> np.ndarray:
        """Per candidate, the feature beyond the retriever's score (feature 0) whose level token adds the most to
        its score (over that feature's lowest level): the evidence the `scores` trace names."""
        levels = np.asarray(levels, dtype=np.int64)
        gain = self.weights[np.arange(levels.shape[-1]), levels] - self.weights.min(axis=1)
        gain[..., 0] = -np.inf
        return gain.argmax(-1)


def strong_first_order(score_levels) -> list[int]:
    """Candidate indices with a score level >= `STRONG_SCORE_LEVEL` first, then the rest, each in prompt order."""
    strong = [k for k, level in enumerate(score_levels) if int(level) >= STRONG_SCORE_LEVEL]
    return strong + [k for k in range(len(score_levels)) if k not in strong]


def order_by_score_levels(score_levels) -> list[int]:
    """Candidate indices by score level, highest first, ties in prompt order."""
    return sorted(range(len(score_levels)), key=lambda k: (-int(score_levels[k]), k))
