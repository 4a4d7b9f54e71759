"""Baseline ID sets built from the same embeddings as the run: residual k-means and random codes.

``rkmeans`` clusters the run's text vectors; ``rkmeans_fused`` (runs built with ``--interactions``)
clusters the fused text + collaborative vectors the run's model was fitted on, so the comparison
separates what the model adds from what the interactions add.

Both use the run's L and K and the project's disambiguation
(:func:`rqvae_core.ids.resolve_collisions`), so the only difference from the
run's IDs is how the L codes were chosen. Residual k-means orders a collision
group by the residual norm (what the codes leave unexplained) and moves
overflow to the nearest last-level centre; random IDs draw codes uniformly and
order groups by random distances.
"""

from __future__ import annotations

import numpy as np
import torch

from rqvae_core.ids import resolve_collisions
from rqvae_core.kmeans import residual_kmeans, squared_distances
from tasks.evaluate.engine import IdSet

BASELINES = ("rkmeans", "rkmeans_fused", "random")


def rkmeans_ids(item_ids: np.ndarray, vectors: np.ndarray, *, n_levels: int, codebook_size: int, seed: int, name: str = "rkmeans") -> IdSet:
    """``vectors``: the (rows, dim) float32 matrix, writable (as :func:`tasks.embed.vectors_matrix` returns it)."""
    rk = residual_kmeans(torch.from_numpy(np.asarray(vectors, dtype=np.float32)), n_levels=n_levels, k=codebook_size, seed=seed)
    last_book = rk.codebooks[-1]

    def last_level_distances(idx: np.ndarray) -> np.ndarray:
        r = rk.last_residual[torch.from_numpy(np.asarray(idx, dtype=np.int64))]
        return squared_distances(r, last_book).sqrt().double().numpy()

    assigned = resolve_collisions(
        item_ids=item_ids, codes=rk.codes.numpy(), distances=rk.distance.double().numpy(),
        codebook_size=codebook_size, last_level_distances=last_level_distances,
    )
    return IdSet.from_codes(name=name, item_ids=item_ids, codes=assigned.codes, codebook_size=codebook_size)


def random_ids(item_ids: np.ndarray, *, n_levels: int, codebook_size: int, seed: int) -> IdSet:
    rng = np.random.default_rng(seed)
    n = len(item_ids)
    codes = rng.integers(0, codebook_size, size=(n, n_levels))
    distances = rng.random(n)
    overflow = rng.random((n, codebook_size)) if n * codebook_size <= 50_000_000 else None

    def last_level_distances(idx: np.ndarray) -> np.ndarray:
        if overflow is not None:
            return overflow[np.asarray(idx)]
        return np.random.default_rng([seed, int(np.asarray(idx)[0])]).random((len(idx), codebook_size))

    assigned = resolve_collisions(
        item_ids=item_ids, codes=codes, distances=distances, codebook_size=codebook_size, last_level_distances=last_level_distances
    )
    return IdSet.from_codes(name="random", item_ids=item_ids, codes=assigned.codes, codebook_size=codebook_size)


def baseline_ids(name: str, item_ids: np.ndarray, vectors: np.ndarray, *, n_levels: int, codebook_size: int, seed: int) -> IdSet:
    """``vectors``: the text vectors for ``rkmeans``, the fused ones for ``rkmeans_fused`` (unused for ``random``)."""
    if name in ("rkmeans", "rkmeans_fused"):
        return rkmeans_ids(item_ids, vectors, n_levels=n_levels, codebook_size=codebook_size, seed=seed, name=name)
    if name == "random":
        return random_ids(item_ids, n_levels=n_levels, codebook_size=codebook_size, seed=seed)
    raise ValueError(f"unknown baseline {name!r}; choose from {list(BASELINES)}")
