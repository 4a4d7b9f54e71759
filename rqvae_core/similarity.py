"""Item similarity read off semantic IDs, vectorised over the whole catalog.

RQ-VAE recommender libraries expose "items like this one" straight from the
IDs: the longer the shared code prefix, the closer the items were put by the
residual quantizer (level 1 is the coarsest cluster, each later level refines
it). Within the same prefix length, the quantized vectors (sum of the chosen
codewords) order items by how close they actually are. Every function here is
one pass of numpy over the catalog, so a 10M-item query is O(N), not a loop.

Codes are the full semantic IDs, shape (N, L+1) with the disambiguation code
last, but nothing here depends on that: any (N, C) integer matrix works.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

__all__ = [
    "exact_match_share",
    "shared_prefix_length",
    "codeword_cosine",
    "SimilarItems",
    "top_k_similar",
]

_EPS = 1e-12
_CHUNK_ROWS = 1 << 20


def exact_match_share(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Share of code positions where ``a`` and ``b`` agree, position by position.

    Broadcasts over leading axes: (C,) vs (N, C) → (N,); (N, C) vs (N, C) → (N,).
    Unlike the shared prefix, it also credits agreement after a first mismatch,
    which is what the "Hamming" similarity of some libraries reports.
    """
    a = np.asarray(a)
    b = np.asarray(b)
    if a.shape[-1] != b.shape[-1]:
        raise ValueError(f"code lengths differ: {a.shape[-1]} vs {b.shape[-1]}")
    return np.mean(a == b, axis=-1)


def shared_prefix_length(query: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Number of leading codes each row of ``codes`` (N, C) shares with ``query`` (C,), as int64 (N,)."""
    query = np.asarray(query)
    codes = np.asarray(codes)
    if codes.ndim != 2 or query.shape != (codes.shape[1],):
        raise ValueError(f"expected query (C,) and codes (N, C), got {query.shape} and {codes.shape}")
    eq = codes == query[None, :]
    first_mismatch = np.argmin(eq, axis=1)  # index of the first False; 0 when all True
    return np.where(eq.all(axis=1), codes.shape[1], first_mismatch).astype(np.int64)


def codeword_cosine(query_vector: Any, vectors: Any) -> np.ndarray:
    """Cosine between one item's quantized vector (D,) and every item's (N, D) → (N,).

    A zero vector has cosine 0 with everything rather than NaN.
    """
    q = np.asarray(query_vector, dtype=np.float64)
    v = np.asarray(vectors)
    if v.ndim != 2 or q.shape != (v.shape[1],):
        raise ValueError(f"expected query (D,) and vectors (N, D), got {q.shape} and {v.shape}")
    qn = np.linalg.norm(q)
    out = np.empty(v.shape[0], dtype=np.float64)
    for start in range(0, v.shape[0], _CHUNK_ROWS):  # chunks bound the float64 temporaries
        block = v[start : start + _CHUNK_ROWS].astype(np.float64, copy=False)
        norms = np.linalg.norm(block, axis=1) * qn
        out[start : start + len(block)] = (block @ q) / np.maximum(norms, _EPS)
    return out


def _euclidean_to(query_vector: np.ndarray, vectors: np.ndarray) -> np.ndarray:
    """Exact ||v_i - q|| in float64 (no ||a||²-2ab+||b||² cancellation, so ties stay ties)."""
    q = np.asarray(query_vector, dtype=np.float64)
    out = np.empty(vectors.shape[0], dtype=np.float64)
    for start in range(0, vectors.shape[0], _CHUNK_ROWS):
        diff = vectors[start : start + _CHUNK_ROWS].astype(np.float64) - q
        out[start : start + len(diff)] = np.sqrt(np.einsum("ij,ij->i", diff, diff))
    return out


class SimilarItems(NamedTuple):
    """The k items most similar to a query, best first."""

    indices: np.ndarray
    """Row indices into the catalog, int64 (k,)."""
    shared_prefix: np.ndarray
    """Leading codes shared with the query, int64 (k,)."""
    distance: np.ndarray
    """Euclidean distance between quantized vectors, float64 (k,)."""


def top_k_similar(*, query_index: int, codes: np.ndarray, vectors: np.ndarray, k: int = 10) -> SimilarItems:
    """The k items most similar to ``codes[query_index]``, the query itself excluded.

    Order: shared prefix length descending, then euclidean distance between
    quantized vectors ascending, then row index ascending, so the answer is
    fully deterministic. O(N): the prefix-length histogram gives the cut-off
    level, ``argpartition`` the distance cut-off inside it (keeping every tie),
    and only that small candidate set is ``lexsort``-ed.
    """
    codes = np.asarray(codes)
    vectors = np.asarray(vectors) if not hasattr(vectors, "shape") else vectors
    if codes.ndim != 2 or vectors.ndim != 2 or codes.shape[0] != vectors.shape[0]:
        raise ValueError(f"expected codes (N, C) and vectors (N, D), got {codes.shape} and {vectors.shape}")
    n, n_codes = codes.shape
    if not 0 <= query_index < n:
        raise IndexError(f"query_index {query_index} out of range for {n} items")
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")

    prefix = shared_prefix_length(codes[query_index], codes)
    dist = _euclidean_to(vectors[query_index], vectors)
    prefix[query_index] = -1  # below every real item
    k = min(k, n - 1)
    if k == 0:
        empty = np.empty(0, dtype=np.int64)
        return SimilarItems(indices=empty, shared_prefix=empty.copy(), distance=np.empty(0))

    # Cut-off prefix length t: the largest t with at least k items sharing >= t codes.
    counts = np.bincount(prefix + 1, minlength=n_codes + 2)[1:]  # counts[t] = items with prefix t
    at_least = np.cumsum(counts[::-1])[::-1]  # at_least[t] = items with prefix >= t
    t = int(np.flatnonzero(at_least >= k)[-1])
    above = prefix > t
    boundary = np.flatnonzero(prefix == t)
    need = k - int(above.sum())
    # The need-th smallest distance on the boundary; keep every item at or below it so index ties survive.
    d_cut = np.partition(dist[boundary], need - 1)[need - 1]
    candidates = np.concatenate([np.flatnonzero(above), boundary[dist[boundary] <= d_cut]])

    order = np.lexsort((candidates, dist[candidates], -prefix[candidates]))[:k]
    best = candidates[order].astype(np.int64)
    return SimilarItems(indices=best, shared_prefix=prefix[best], distance=dist[best])
