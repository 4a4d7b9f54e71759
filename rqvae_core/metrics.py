"""Full-corpus quality metrics of an RQ-VAE tokenization.

A batch metric lies: a code that is never used in a 1024-item batch may be the
code a million items land on. So every number here is computed over the whole
corpus, streaming: ``MetricsAccumulator.update`` sees one batch at a time and
keeps only running sums, per-level code counts and one packed int64 per item
(the item's L-tuple), which is 80 MB for a 10M catalog. Prefix coherence needs
neighbours in embedding space and is computed exactly on a deterministic sample
(``prefix_coherence``), so it too never holds the full corpus.

What the numbers mean (see DESIGN.md, "The model" → Metrics):

- recon MSE / MAE / cosine: how much of the embedding survives encode → quantize → decode.
- per level: active codes, usage rate (active / K), entropy of the code
  frequency distribution (nats) and its exponential, the perplexity, i.e. the
  number of codes the level effectively uses (K for uniform usage, 1 for collapse).
- unique-tuple rate and collision groups *before* disambiguation: how much work
  the extra ID code has to do; a group larger than K cannot be fixed in place.
- prefix coherence: how often an item's nearest neighbours share its first 1 (2)
  codes; this is what makes semantic IDs semantic.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from rqvae_core.kmeans import residual_kmeans

__all__ = [
    "LevelUsage",
    "CorpusMetrics",
    "MetricsAccumulator",
    "prefix_coherence",
    "corpus_metrics",
]

_EPS = 1e-12
_INT64_MAX = np.iinfo(np.int64).max


def _to_numpy(x: Any) -> np.ndarray:
    """Accept torch tensors (any device, with grad) or array-likes; never copy numpy needlessly."""
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


# --------------------------------------------------------------------------- outputs


@dataclass(frozen=True)
class LevelUsage:
    """Code usage of one quantizer level over the whole corpus."""

    level: int
    active_codes: int
    usage_rate: float
    """active_codes / K."""
    perplexity: float
    """exp(entropy): the number of equally used codes that would give the same entropy."""
    entropy: float
    """Entropy in nats of the code frequency distribution."""
    counts: list[int]
    """Items per code, length K."""


@dataclass(frozen=True)
class CorpusMetrics:
    """Everything ``quality.json`` reports about a fitted model on its corpus."""

    n_items: int
    recon_mse: float
    recon_mae: float
    recon_cosine: float
    levels: list[LevelUsage]
    unique_tuple_rate: float
    """Distinct L-tuples / N, before the disambiguation code is added."""
    largest_collision_group: int
    collision_group_sizes: dict[int, int]
    """Histogram: group size → number of distinct L-tuples with that many items (size 1 included)."""
    prefix_coherence: list[float]
    """Entry l-1: mean share of an item's k nearest neighbours that share its first l codes."""

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict: plain Python numbers, and histogram keys as strings (JSON has no int keys)."""
        out = dataclasses.asdict(self)
        out["collision_group_sizes"] = {
            str(size): int(n) for size, n in sorted(self.collision_group_sizes.items())
        }
        return out


# --------------------------------------------------------------------------- helpers


def _level_usage(*, level: int, counts: np.ndarray) -> LevelUsage:
    total = int(counts.sum())
    active = int(np.count_nonzero(counts))
    if total == 0:
        entropy = 0.0
    else:
        p = counts[counts > 0] / total
        entropy = float(-(p * np.log(p)).sum())
    return LevelUsage(
        level=level,
        active_codes=active,
        usage_rate=active / len(counts),
        perplexity=math.exp(entropy),
        entropy=entropy,
        counts=[int(c) for c in counts],
    )


def _fits_int64(*, n_levels: int, codebook_size: int) -> bool:
    """Whether every L-tuple packs into one non-negative int64 as sum code_i * K**i."""
    return codebook_size**n_levels - 1 <= _INT64_MAX


def _row_dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-row dot product, returned as float64 for the cross-row sum."""
    return np.einsum("ij,ij->i", a, b).astype(np.float64)


def _rowwise_cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine per row; a zero row has cosine 0 with anything (no NaN in the report)."""
    norm = np.sqrt(_row_dot(a, a) * _row_dot(b, b))
    return _row_dot(a, b) / np.maximum(norm, _EPS)


# --------------------------------------------------------------------------- accumulator


class MetricsAccumulator:
    """Streams batches of (inputs, recon, codes) and reduces them to ``CorpusMetrics``.

    Memory is O(L·K) for the counts plus 8 bytes per item for the packed
    L-tuple keys (or 4·L bytes when K**L does not fit an int64), so it works
    for catalogs that never fit in memory as vectors. Sums are kept in float64
    so the order of batches does not change the result beyond rounding.
    """

    def __init__(self, *, n_levels: int, codebook_size: int) -> None:
        if n_levels < 1 or codebook_size < 1:
            raise ValueError(f"n_levels and codebook_size must be >= 1, got {n_levels}, {codebook_size}")
        self.n_levels = n_levels
        self.codebook_size = codebook_size
        self._packed = _fits_int64(n_levels=n_levels, codebook_size=codebook_size)
        # weights K**i as int64: the packed key of a row is codes @ weights
        self._weights = codebook_size ** np.arange(n_levels, dtype=np.int64) if self._packed else None
        self._counts = np.zeros((n_levels, codebook_size), dtype=np.int64)
        self._keys: list[np.ndarray] = []
        self._n_items = 0
        self._n_values = 0
        self._sq_err = 0.0
        self._abs_err = 0.0
        self._cos_sum = 0.0

    @property
    def n_items(self) -> int:
        return self._n_items

    def update(self, *, inputs: Any, recon: Any, codes: Any) -> None:
        """Add one batch: inputs (B, D), recon (B, D), codes (B, L) integers in [0, K)."""
        x = _to_numpy(inputs)
        r = _to_numpy(recon)
        c = _to_numpy(codes)
        if x.ndim != 2 or x.shape != r.shape:
            raise ValueError(f"inputs and recon must both be (B, D), got {x.shape} and {r.shape}")
        if c.shape != (x.shape[0], self.n_levels):
            raise ValueError(f"codes must be (B, {self.n_levels}) = ({x.shape[0]}, {self.n_levels}), got {c.shape}")
        if not np.issubdtype(c.dtype, np.integer):
            raise TypeError(f"codes must be integers, got {c.dtype}")
        if x.shape[0] == 0:
            return
        c = c.astype(np.int64, copy=False)
        if c.min() < 0 or c.max() >= self.codebook_size:
            raise ValueError(f"codes must lie in [0, {self.codebook_size}), got [{c.min()}, {c.max()}]")

        # Per-row reductions in the input precision (>= float32), summed across rows in
        # float64: 10x faster than casting the batch to float64, and the corpus-level
        # sums (where rounding would pile up over 10M rows) stay exact to ~1e-10.
        dtype = np.result_type(x.dtype, r.dtype, np.float32)
        x = x.astype(dtype, copy=False)
        r = r.astype(dtype, copy=False)
        diff = x - r
        self.update_rows(
            sq_err=_row_dot(diff, diff),
            abs_err=np.abs(diff).sum(axis=1, dtype=np.float64),
            cosine=_rowwise_cosine(x, r),
            dim=x.shape[1],
            codes=c,
        )

    def update_rows(self, *, sq_err: Any, abs_err: Any, cosine: Any, dim: int, codes: Any) -> None:
        """Add rows already reduced where the vectors live (e.g. inside a Ray worker).

        sq_err/abs_err: (B,) per-row sums over the D dimensions; cosine: (B,)
        per-row cosine(input, recon). Lets a distributed encoder ship 3 floats
        per item to the driver instead of two D-dim vectors.
        """
        c = _to_numpy(codes).astype(np.int64, copy=False)
        if c.shape[0] == 0:
            return
        if c.min() < 0 or c.max() >= self.codebook_size:
            raise ValueError(f"codes must lie in [0, {self.codebook_size}), got [{c.min()}, {c.max()}]")
        self._sq_err += float(np.asarray(sq_err, dtype=np.float64).sum())
        self._abs_err += float(np.asarray(abs_err, dtype=np.float64).sum())
        self._cos_sum += float(np.asarray(cosine, dtype=np.float64).sum())
        self._n_values += c.shape[0] * int(dim)
        self._n_items += c.shape[0]

        # per-level counts in one bincount: offset level l by l*K
        offsets = np.arange(self.n_levels, dtype=np.int64) * self.codebook_size
        self._counts += np.bincount(
            (c + offsets).ravel(), minlength=self.n_levels * self.codebook_size
        ).reshape(self.n_levels, self.codebook_size)

        if self._packed:
            self._keys.append(c @ self._weights)
        else:
            self._keys.append(c.astype(np.int32))

    def _group_sizes(self) -> np.ndarray:
        """Number of items per distinct L-tuple (sorting, O(N log N))."""
        keys = np.concatenate(self._keys)
        if self._packed:
            _, sizes = np.unique(keys, return_counts=True)
        else:
            _, sizes = np.unique(keys, axis=0, return_counts=True)
        return sizes

    def partial(self) -> MetricsPartial:
        """The accumulator reduced to O(L·K) numbers: what a worker ships to be merged with ``merge_partials``.

        Collision groups are reduced to a histogram of group sizes, so partials merge
        exactly only when no L-tuple spans two of them, e.g. one partial per first-level
        code (how the assign stage partitions its items).
        """
        sizes = self._group_sizes() if self._n_items else np.zeros(0, dtype=np.int64)
        size_values, size_counts = np.unique(sizes, return_counts=True)
        return MetricsPartial(
            n_levels=self.n_levels, codebook_size=self.codebook_size, n_items=self._n_items, n_values=self._n_values,
            sq_err=self._sq_err, abs_err=self._abs_err, cos_sum=self._cos_sum, counts=self._counts.copy(),
            group_sizes={int(s): int(n) for s, n in zip(size_values, size_counts)},
        )

    def finalize(self, *, prefix_coherence: list[float] | None = None) -> CorpusMetrics:
        """Reduce to ``CorpusMetrics``; ``prefix_coherence`` comes from the function of that name."""
        return merge_partials([self.partial()], prefix_coherence=prefix_coherence)


@dataclass(frozen=True)
class MetricsPartial:
    """Sums, per-level code counts and the collision-group size histogram of a disjoint share of the items."""

    n_levels: int
    codebook_size: int
    n_items: int
    n_values: int
    sq_err: float
    abs_err: float
    cos_sum: float
    counts: np.ndarray  # (L, K) int64
    group_sizes: dict[int, int]  # group size -> number of groups


def merge_partials(parts: list[MetricsPartial], *, prefix_coherence: list[float] | None = None) -> CorpusMetrics:
    """``CorpusMetrics`` of the union of partials whose L-tuples are disjoint (sums add, histograms add)."""
    n_items = sum(p.n_items for p in parts)
    if n_items == 0:
        raise ValueError("MetricsAccumulator.finalize: no items were added")
    shapes = {(p.n_levels, p.codebook_size) for p in parts}
    if len(shapes) != 1:
        raise ValueError(f"partials of different shapes (L, K) cannot be merged: {sorted(shapes)}")
    n_levels, _ = shapes.pop()
    n_values = sum(p.n_values for p in parts)
    counts = np.sum([p.counts for p in parts], axis=0)
    sizes: dict[int, int] = {}
    for p in parts:
        for size, n in p.group_sizes.items():
            sizes[size] = sizes.get(size, 0) + n
    return CorpusMetrics(
        n_items=n_items,
        recon_mse=sum(p.sq_err for p in parts) / n_values,
        recon_mae=sum(p.abs_err for p in parts) / n_values,
        recon_cosine=sum(p.cos_sum for p in parts) / n_items,
        levels=[_level_usage(level=l, counts=counts[l]) for l in range(n_levels)],
        unique_tuple_rate=sum(sizes.values()) / n_items,
        largest_collision_group=max(sizes),
        collision_group_sizes=dict(sorted(sizes.items())),
        prefix_coherence=[float(v) for v in (prefix_coherence or [])],
    )


# --------------------------------------------------------------------------- prefix coherence


def prefix_coherence(
    *,
    vectors: Any,
    codes: Any,
    k: int = 10,
    n_queries: int = 2000,
    max_database: int = 50_000,
    seed: int = 0,
    levels: int = 2,
    chunk_size: int = 1024,
) -> list[float]:
    """Share of an item's k nearest neighbours (cosine, in embedding space) that share its first l codes.

    Exact kNN over a deterministic random sample: a database of at most
    ``max_database`` items and ``n_queries`` queries drawn from inside it, so
    each query's own row is known and excluded. Rows are read in sorted index
    order, so ``vectors`` may be an ``np.memmap`` of the full catalog. Returns
    one value per level 1..min(levels, L); ``[]`` when there are fewer than two
    items (no neighbour to ask about).

    For reference: codes independent of the embedding give about the share of
    the database in the query's code (≈ 1/K under uniform usage).
    """
    c_all = _to_numpy(codes)
    if c_all.ndim != 2:
        raise ValueError(f"codes must be (N, L), got {c_all.shape}")
    n = c_all.shape[0]
    if not hasattr(vectors, "shape"):
        vectors = np.asarray(vectors)
    if vectors.shape[0] != n:
        raise ValueError("vectors and codes must have the same number of rows")
    n_levels = min(levels, c_all.shape[1])
    if k < 1 or n_queries < 1 or n_levels < 1:
        raise ValueError(f"k, n_queries and levels must be >= 1, got {k}, {n_queries}, {levels}")
    m = min(n, max(max_database, n_queries, 2))
    if m < 2:
        return []

    rng = np.random.default_rng(seed)
    db = np.arange(n) if m == n else np.sort(rng.choice(n, size=m, replace=False))
    q = min(n_queries, m)
    q_pos = np.arange(m) if q == m else np.sort(rng.choice(m, size=q, replace=False))
    k = min(k, m - 1)

    if isinstance(vectors, torch.Tensor):
        v = vectors.detach()[torch.from_numpy(db)].cpu().numpy()
    else:
        v = np.asarray(vectors[db])
    v = v.astype(np.float32, copy=True)
    v /= np.maximum(np.linalg.norm(v, axis=1, keepdims=True), _EPS)
    db_codes = c_all[db, :n_levels].astype(np.int64, copy=False)

    hits = np.zeros(n_levels, dtype=np.float64)
    for start in range(0, q, chunk_size):
        rows = q_pos[start : start + chunk_size]
        sims = v[rows] @ v.T  # (b, m)
        sims[np.arange(len(rows)), rows] = -np.inf  # exclude self
        nbrs = np.argpartition(-sims, k - 1, axis=1)[:, :k]  # (b, k), order irrelevant
        same = db_codes[nbrs] == db_codes[rows][:, None, :]  # (b, k, levels)
        prefix_same = np.logical_and.accumulate(same, axis=2)
        hits += prefix_same.sum(axis=(0, 1))
    return [float(h / (q * k)) for h in hits]


# --------------------------------------------------------------------------- convenience


def corpus_metrics(
    *,
    inputs: Any,
    recon: Any,
    codes: Any,
    codebook_size: int,
    k: int = 10,
    n_queries: int = 2000,
    max_database: int = 50_000,
    seed: int = 0,
    batch_size: int = 65_536,
) -> CorpusMetrics:
    """All metrics for arrays already in memory: the accumulator in batches plus prefix coherence."""
    c = _to_numpy(codes)
    if c.ndim != 2:
        raise ValueError(f"codes must be (N, L), got {c.shape}")
    acc = MetricsAccumulator(n_levels=c.shape[1], codebook_size=codebook_size)
    for start in range(0, c.shape[0], batch_size):
        end = start + batch_size
        acc.update(inputs=inputs[start:end], recon=recon[start:end], codes=c[start:end])
    pc = prefix_coherence(
        vectors=inputs, codes=c, k=k, n_queries=n_queries, max_database=max_database, seed=seed
    )
    return acc.finalize(prefix_coherence=pc)


# --------------------------------------------------------------------------- side by side with the baseline


def distinct_prefixes(codes: Any) -> list[int]:
    """Number of distinct code prefixes at depth 1..L: how much of the ID tree a set of codes uses."""
    c = _to_numpy(codes).astype(np.int64, copy=False)
    return [int(len(np.unique(c[:, :depth], axis=0))) for depth in range(1, c.shape[1] + 1)]


def compare_with_residual_kmeans(
    *,
    vectors: Any,
    codes: Any,
    recon_sq_err: Any,
    codebook_size: int,
    k: int = 10,
    n_queries: int = 2000,
    kmeans_iters: int = 10,
    seed: int = 0,
) -> dict[str, Any]:
    """The run's codes beside residual k-means fitted on the same vectors, on the same items.

    Why: utilisation says nothing about whether codes follow neighbourhoods, and residual
    k-means on the raw embeddings is the simplest ID scheme there is; learned IDs that are
    less coherent than it are a regression whatever their code usage. Both sides are
    scored on exactly these rows: prefix coherence at every depth, distinct prefixes per
    depth and reconstruction MSE per dimension (the decoder's output for the run; the sum
    of chosen centres for k-means). ``recon_sq_err``: (N,) the run's per-item squared error.
    """
    x = np.asarray(vectors, dtype=np.float32)
    ours = _to_numpy(codes).astype(np.int64, copy=False)
    n, n_levels = ours.shape
    dim = x.shape[1]
    rk = residual_kmeans(torch.from_numpy(x), n_levels=n_levels, k=codebook_size, iters=kmeans_iters, seed=seed)
    theirs = rk.codes.numpy()

    def side(c: np.ndarray, mse: float) -> dict[str, Any]:
        coherence = prefix_coherence(vectors=x, codes=c, k=k, n_queries=n_queries, seed=seed, levels=n_levels) if n > 1 else []
        return {"prefix_coherence": coherence, "distinct_prefixes": distinct_prefixes(c), "recon_mse": mse}

    run = side(ours, float(np.asarray(recon_sq_err, dtype=np.float64).sum() / max(1, n * dim)))
    baseline = side(theirs, float((rk.distance.double() ** 2).sum().item() / max(1, n * dim)))
    behind = [d + 1 for d, (a, b) in enumerate(zip(run["prefix_coherence"], baseline["prefix_coherence"])) if a < b]
    # coherence rises trivially as prefixes merge, so fewer distinct prefixes is a shortfall of its own
    fewer = [d + 1 for d, (a, b) in enumerate(zip(run["distinct_prefixes"], baseline["distinct_prefixes"])) if a < b]
    problems = []
    if behind:
        problems.append(f"are less coherent than residual k-means on the same embeddings at depth(s) {behind}")
    if fewer:
        problems.append(f"use fewer distinct prefixes than residual k-means at depth(s) {fewer}")
    return {
        "n_items": int(n),
        "run": run,
        "residual_kmeans": baseline,
        "less_coherent_at_depths": behind,
        "fewer_prefixes_at_depths": fewer,
        "warning": ("the learned IDs " + " and ".join(problems)) if problems else None,
    }
