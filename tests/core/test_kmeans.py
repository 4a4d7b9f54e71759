import torch

from rqvae_core.kmeans import residual_kmeans


def _clustered(n: int = 2000, d: int = 16, clusters: int = 8, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(clusters, d, generator=g) * 5
    return centres[torch.randint(clusters, (n,), generator=g)] + torch.randn(n, d, generator=g)


def test_residual_kmeans_reconstructs_and_each_level_helps():
    x = _clustered()
    one = residual_kmeans(x, n_levels=1, k=8, seed=0)
    three = residual_kmeans(x, n_levels=3, k=8, seed=0)
    assert three.codes.shape == (2000, 3) and three.codebooks.shape == (3, 8, 16)
    assert int(three.codes.min()) >= 0 and int(three.codes.max()) < 8
    quantized = sum(three.codebooks[lvl][three.codes[:, lvl]] for lvl in range(3))
    torch.testing.assert_close((x - quantized).norm(dim=-1), three.distance, atol=1e-4, rtol=1e-4)
    assert three.distance.mean() < 0.9 * one.distance.mean()
    # level 1 recovers the 8 planted clusters: every cluster maps to one code
    assert len(torch.unique(one.codes[:, 0])) == 8


def test_residual_kmeans_is_deterministic_and_sampled_fit_assigns_every_row():
    x = _clustered(seed=1)
    a = residual_kmeans(x, n_levels=2, k=8, seed=3, fit_rows=500)
    b = residual_kmeans(x, n_levels=2, k=8, seed=3, fit_rows=500)
    assert torch.equal(a.codes, b.codes)
    assert a.codes.shape == (2000, 2)
