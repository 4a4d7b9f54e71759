"""Spectral level-1 centres: they follow the neighbour graph where k-means cuts across it."""

import torch

from rqvae_core.graph import DENSE_EIGH_MAX_ROWS, knn_adjacency, spectral_centers, spectral_embedding
from rqvae_core.kmeans import kmeans, squared_distances


def parallel_bands(n_per_band: int = 400, *, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Two thin bands (4 long, 0.05 thick) one unit apart, far from the origin (so cosine and euclidean neighbours agree)."""
    g = torch.Generator().manual_seed(seed)
    along = torch.rand(2 * n_per_band, generator=g) * 4
    band = torch.arange(2).repeat_interleave(n_per_band)
    across = band.float() + 0.05 * torch.randn(2 * n_per_band, generator=g)
    x = torch.stack([along, across, torch.full_like(along, 10.0)], dim=1)
    return x, band


def purity(assign: torch.Tensor, truth: torch.Tensor) -> float:
    agree = (assign == truth).float().mean().item()
    return max(agree, 1 - agree)


def test_spectral_centres_separate_bands_that_kmeans_cuts_across():
    x, band = parallel_bands()
    centers = spectral_centers(x, k=2, neighbors=10, dims=1, iters=20, seed=0, max_rows=10_000)
    assert centers is not None and centers.shape == (2, 3)
    by_graph = squared_distances(x, centers).argmin(-1)
    by_kmeans = kmeans(x, k=2, iters=20, generator=torch.Generator().manual_seed(0)).assignments
    assert purity(by_graph, band) == 1.0
    assert purity(by_kmeans, band) < 0.8  # k-means splits the long axis: the case the graph init exists for


def test_adjacency_is_symmetric_normalised_with_top_eigenvalue_one():
    x, _ = parallel_bands(100)
    a = knn_adjacency(x, neighbors=5).to_dense()
    assert torch.allclose(a, a.T)
    values = torch.linalg.eigvalsh(a)
    assert abs(values.max().item() - 1.0) < 1e-8 and values.min().item() >= -1 - 1e-8


def test_lobpcg_path_recovers_well_separated_clusters():
    """Above the dense-eigh size the eigenvectors come from LOBPCG; five separated blobs must come out whole."""
    g = torch.Generator().manual_seed(1)
    n_per = DENSE_EIGH_MAX_ROWS // 5 + 200
    truth = torch.arange(5).repeat_interleave(n_per)
    x = torch.eye(5, 8)[truth] * 10 + torch.randn(5 * n_per, 8, generator=g) * 0.3 + torch.ones(8) * 2
    assert x.shape[0] > DENSE_EIGH_MAX_ROWS
    emb = spectral_embedding(knn_adjacency(x, neighbors=10), dims=4, seed=0)
    labels = kmeans(emb, k=5, iters=20, generator=torch.Generator().manual_seed(0)).assignments
    # each true blob maps to exactly one label and no label spans two blobs
    pairs = set(zip(truth.tolist(), labels.tolist()))
    assert len(pairs) == 5 and len({t for t, _ in pairs}) == 5 and len({lab for _, lab in pairs}) == 5


def test_too_few_rows_for_a_partition_fall_back_to_kmeans():
    x = torch.randn(20, 4, generator=torch.Generator().manual_seed(0))
    assert spectral_centers(x, k=16, neighbors=10, dims=8, iters=5, seed=0, max_rows=1000) is None


def test_graph_is_built_on_a_seeded_sample_and_every_centre_sits_on_data():
    x, _ = parallel_bands(300)
    a = spectral_centers(x, k=8, neighbors=10, dims=4, iters=10, seed=3, max_rows=200)
    b = spectral_centers(x, k=8, neighbors=10, dims=4, iters=10, seed=3, max_rows=200)
    assert a is not None and torch.equal(a, b)
    assert torch.isfinite(a).all() and (a[:, 2] - 10).abs().max() < 1e-3  # means of real rows
