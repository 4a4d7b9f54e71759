"""Recall@k and NDCG@k with one held-out item per user, and their standard errors.

With a single relevant item at (0-based) rank r in the returned list:
Recall@k = 1[r < k] and NDCG@k = 1[r < k] / log2(r + 2) (the ideal DCG is 1).
A user whose item is not returned scores 0. Every user counts (the mean is
over all users), and the standard error is the sample standard deviation over
users / sqrt(n).

Over seeds the same users are scored by differently trained models, so the
user-sampling error does not shrink with more seeds while the training noise
does: the combined s.e. is sqrt(mean_s se_s^2 + var_s(mean_s) / S).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

CUTOFFS = (5, 10)
METRICS = tuple(f"{m}@{k}" for m in ("recall", "ndcg") for k in CUTOFFS)


@dataclass(frozen=True)
class Metric:
    mean: float
    se: float

    def to_dict(self) -> dict[str, float]:
        return {"mean": self.mean, "se": self.se}


def target_ranks(ranked: np.ndarray, target: np.ndarray) -> np.ndarray:
    """(U, W) ranked item rows (-1 = empty) and (U,) targets -> (U,) 0-based rank, or -1 when absent."""
    ranked = np.asarray(ranked)
    hit = ranked == np.asarray(target)[:, None]
    return np.where(hit.any(axis=1), hit.argmax(axis=1), -1)


def per_user(ranks: np.ndarray) -> dict[str, np.ndarray]:
    """Per-user Recall@k and NDCG@k from target ranks (-1 = not retrieved)."""
    ranks = np.asarray(ranks)
    found = ranks >= 0
    out: dict[str, np.ndarray] = {}
    for k in CUTOFFS:
        inside = found & (ranks < k)
        out[f"recall@{k}"] = inside.astype(np.float64)
        out[f"ndcg@{k}"] = np.where(inside, 1.0 / np.log2(np.where(found, ranks, 0) + 2.0), 0.0)
    return {m: out[m] for m in METRICS}


def mean_se(values: np.ndarray) -> Metric:
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return Metric(mean=float("nan"), se=float("nan"))
    se = float(v.std(ddof=1) / math.sqrt(v.size)) if v.size > 1 else 0.0
    return Metric(mean=float(v.mean()), se=se)


def summarize(ranks: np.ndarray) -> dict[str, Metric]:
    return {m: mean_se(v) for m, v in per_user(ranks).items()}


def combine_seeds(per_seed: list[Metric]) -> Metric:
    """Mean over seeds; s.e. = sqrt(mean of per-seed s.e.^2 + between-seed variance / S)."""
    if not per_seed:
        raise ValueError("no seeds to combine")
    means = np.array([m.mean for m in per_seed])
    ses = np.array([m.se for m in per_seed])
    s = means.size
    between = float(means.var(ddof=1)) / s if s > 1 else 0.0
    return Metric(mean=float(means.mean()), se=float(math.sqrt(float((ses**2).mean()) + between)))
