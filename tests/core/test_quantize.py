"""Gradient paths of the quantizer forward modes, and codebook behaviours."""

import torch
import torch.nn.functional as F

from rqvae_core.quantize import ResidualQuantizer, VectorQuantizer, rotate_to


def _angle(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.arccos(F.cosine_similarity(a, b, dim=-1).clamp(-1, 1))


def test_rotation_trick_forward_is_the_codeword():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 16, generator=g)
    c = torch.randn(64, 16, generator=g)
    assert torch.allclose(rotate_to(x, c), c, atol=1e-5)


def test_rotation_trick_gradient_keeps_the_angle():
    """Fifty et al. (2024): ∠(∇ₓL, x) = ∠(∇_qL, q) — the gradient is rotated with the vector."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(128, 16, generator=g, requires_grad=True)
    c = torch.randn(128, 16, generator=g)
    upstream = torch.randn(128, 16, generator=g)
    q = rotate_to(x, c)
    q.backward(upstream)
    assert torch.allclose(_angle(x.grad, x.detach()), _angle(upstream, c), atol=1e-4)
    # and it is not the straight-through gradient (which would copy ``upstream``)
    assert not torch.allclose(x.grad, upstream, atol=1e-3)
    # the scale ‖c‖/‖x‖ is applied to the gradient norm
    ratio = x.grad.norm(dim=-1) / upstream.norm(dim=-1)
    assert torch.allclose(ratio, c.norm(dim=-1) / x.detach().norm(dim=-1), rtol=1e-4)


def test_ste_passes_gradients_unchanged():
    vq = VectorQuantizer(dim=8, codebook_size=16, mode="ste", kmeans_init=False, dead_code_window=0)
    vq.eval()
    x = torch.randn(32, 8, requires_grad=True)
    out = vq(x)
    upstream = torch.randn(32, 8)
    out.quantized.backward(upstream)
    assert torch.equal(x.grad, upstream)
    assert torch.allclose(out.quantized, vq.codebook[out.codes])


def test_codes_are_nearest_codewords_at_eval():
    vq = VectorQuantizer(dim=8, codebook_size=32, kmeans_init=False, dead_code_window=0).eval()
    x = torch.randn(100, 8)
    brute = torch.cdist(x, vq.codebook).argmin(-1)
    assert torch.equal(vq(x).codes, brute)


def test_kmeans_init_places_codewords_on_the_data():
    g = torch.Generator().manual_seed(0)
    centers = 10 * torch.randn(8, 4, generator=g)
    x = centers[torch.arange(512) % 8] + 0.01 * torch.randn(512, 4, generator=g)
    vq = VectorQuantizer(dim=4, codebook_size=8, kmeans_init=True, dead_code_window=0)
    vq.train()
    vq(x)
    assert bool(vq.initialized)
    nearest = torch.cdist(centers, vq.codebook).min(-1).values
    assert nearest.max() < 0.1


def test_dead_codes_are_reseeded_from_residuals():
    vq = VectorQuantizer(dim=4, codebook_size=8, kmeans_init=False, dead_code_window=2)
    with torch.no_grad():
        vq.embed[1:] = 1000.0  # seven codes nobody can pick
    vq.train()
    x = torch.randn(64, 4)
    for _ in range(3):
        vq(x)
    used = vq.eval()(x).codes.unique().numel()
    assert used > 1


def test_ema_moves_codewords_without_gradients():
    vq = VectorQuantizer(dim=4, codebook_size=4, ema=True, ema_decay=0.5, kmeans_init=False, dead_code_window=0)
    assert not any(p.requires_grad for p in vq.parameters())
    before = vq.codebook.clone()
    vq.train()
    vq(torch.randn(64, 4) + 5)
    assert not torch.allclose(before, vq.codebook)


def test_residual_levels_quantize_what_is_left():
    rq = ResidualQuantizer(n_levels=3, dim=8, codebook_size=16, kmeans_init=False, dead_code_window=0).eval()
    z = torch.randn(50, 8)
    out = rq(z)
    cbs = [lvl.codebook for lvl in rq.levels]
    total = sum(cb[out.codes[:, i]] for i, cb in enumerate(cbs))
    assert torch.allclose(out.quantized, total, atol=1e-5)
    assert torch.allclose(out.residual, z - total, atol=1e-5)
