"""Vector quantizers: one level (`VectorQuantizer`) and the residual stack (`ResidualQuantizer`).

The argmin that picks a codeword has no gradient. The forward modes differ
only in how they send the decoder's gradient back to the encoder:

* ``ste``      straight-through: ∂L/∂x := ∂L/∂q (van den Oord et al., 2017).
* ``rotation`` rotation trick (Fifty et al., 2024): q is written as a
  rotation+rescale of x whose matrix is treated as a constant, so the gradient
  keeps the angle it makes with the codeword, carrying information about *where*
  in the Voronoi cell x lies instead of passing it through unchanged.

(Gumbel-softmax, cosine and SimVQ codebooks were here once; all lost in the
project's measurements and were removed.)

Codebook options: EMA updates, residual k-means init from the
whole fit set (``ResidualQuantizer.init_from_data``) or k-means++ of the first
batch, and dead-code restart. (Sinkhorn-balanced training assignment, as in LC-Rec,
was removed too: it gave more distinct prefixes and a lower reconstruction error,
and worse IDs downstream.)
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from rqvae_core.config import QuantizerMode
from rqvae_core.kmeans import kmeans, residual_kmeans, squared_distances


class LevelOutput(NamedTuple):
    quantized: torch.Tensor  # (B, D) codeword with the mode's gradient path to x
    codeword: torch.Tensor  # (B, D) the chosen codeword, value only for the next residual
    codes: torch.Tensor  # (B,) long
    codebook_loss: torch.Tensor  # scalar ||sg(x) − c||²
    commitment_loss: torch.Tensor  # scalar ||x − sg(c)||²


class QuantizerOutput(NamedTuple):
    quantized: torch.Tensor  # (B, D) sum of the levels' codewords
    codes: torch.Tensor  # (B, L) long
    residual: torch.Tensor  # (B, D) what no level explained: z − Σ codewords
    last_residual: torch.Tensor  # (B, D) the residual entering the last level
    codebook_loss: torch.Tensor
    commitment_loss: torch.Tensor


def rotate_to(x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Return a tensor equal to ``target`` whose gradient w.r.t. ``x`` is (‖t‖/‖x‖)·Rᵀ·g.

    R is the rotation taking x̂ to t̂, in Householder form R = I − 2wwᵀ + 2t̂x̂ᵀ with
    w = (x̂ + t̂)/‖x̂ + t̂‖; R and the scale are detached, so only x carries gradient.
    """
    eps = 1e-8
    x_norm = x.norm(dim=-1, keepdim=True).clamp_min(eps)
    t_norm = target.norm(dim=-1, keepdim=True).clamp_min(eps)
    u = (x / x_norm).detach()
    t = (target / t_norm).detach()
    w = F.normalize(u + t, dim=-1, eps=eps).detach()
    xe = x.unsqueeze(1)  # (B, 1, D)
    rotated = (
        xe
        - 2 * (xe @ w.unsqueeze(2)) @ w.unsqueeze(1)
        + 2 * (xe @ u.unsqueeze(2)) @ t.unsqueeze(1)
    ).squeeze(1)
    return rotated * (t_norm / x_norm).detach()


def _broadcast(t: torch.Tensor) -> None:
    """Keep data-dependent codebook edits identical across DDP ranks (rank 0 wins)."""
    if dist.is_available() and dist.is_initialized():
        dist.broadcast(t, src=0)


def _all_reduce(t: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t)
    return t


class VectorQuantizer(nn.Module):
    """One codebook of ``codebook_size`` vectors of size ``dim``."""

    def __init__(
        self,
        *,
        dim: int,
        codebook_size: int,
        mode: QuantizerMode = "rotation",
        ema: bool = False,
        ema_decay: float = 0.99,
        kmeans_init: bool = True,
        kmeans_iters: int = 10,
        dead_code_window: int = 100,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.dim, self.codebook_size, self.mode = dim, codebook_size, mode
        self.ema, self.ema_decay = ema, ema_decay
        self.kmeans_iters, self.dead_code_window = kmeans_iters, dead_code_window
        self.generator = torch.Generator().manual_seed(seed)
        init = torch.randn(codebook_size, dim, generator=self.generator) / dim**0.5
        if ema:
            self.register_buffer("embed", init.clone())
            self.register_buffer("ema_count", torch.ones(codebook_size))
            self.register_buffer("ema_sum", init.clone())
        else:
            self.embed = nn.Parameter(init.clone())
        self.register_buffer("initialized", torch.tensor(not kmeans_init))
        self.register_buffer("steps_unused", torch.zeros(codebook_size, dtype=torch.long))

    @property
    def codebook(self) -> torch.Tensor:
        return self.embed

    @torch.no_grad()
    def _set_codewords(self, index: torch.Tensor, vectors: torch.Tensor) -> None:
        """Place codewords ``index`` at ``vectors`` (and restart their EMA statistics there)."""
        self.embed.data[index] = vectors
        if self.ema:
            self.ema_sum[index] = vectors
            self.ema_count[index] = 1.0

    @torch.no_grad()
    def _kmeans_init(self, x: torch.Tensor) -> None:
        self.set_codebook(kmeans(x, k=self.codebook_size, iters=self.kmeans_iters, generator=self.generator).centers.to(x.dtype))

    @torch.no_grad()
    def set_codebook(self, centers: torch.Tensor) -> None:
        """Place all K codewords (rank 0's on every DDP rank) and mark the codebook initialised."""
        self._set_codewords(torch.arange(self.codebook_size, device=centers.device), centers)
        _broadcast(self.embed.data)
        if self.ema:
            _broadcast(self.ema_sum)
        self.initialized.fill_(True)

    @torch.no_grad()
    def _restart_dead_codes(self, x: torch.Tensor, codes: torch.Tensor, nearest: torch.Tensor) -> None:
        """Re-seed codes unused for ``dead_code_window`` steps from residuals of this batch.

        Residuals are drawn ∝ their distance to the nearest codeword (as in k-means++), so
        dead codes move to where the codebook serves data worst instead of into dense regions
        that live codes already cover.
        """
        used = torch.zeros(self.codebook_size, device=x.device)
        used.index_add_(0, codes, torch.ones_like(codes, dtype=used.dtype))
        used = _all_reduce(used)
        self.steps_unused.add_(1).masked_fill_(used > 0, 0)
        dead = (self.steps_unused >= self.dead_code_window).nonzero().squeeze(1)
        if dead.numel() == 0:
            return
        weights = nearest.clamp_min(0).float().cpu() + 1e-12
        replace = dead.numel() > x.shape[0]
        pick = torch.multinomial(weights, dead.numel(), replacement=replace, generator=self.generator).to(x.device)
        self._set_codewords(dead, x[pick].detach())
        _broadcast(self.embed.data)
        self.steps_unused[dead] = 0

    @torch.no_grad()
    def _ema_update(self, x: torch.Tensor, codes: torch.Tensor) -> None:
        onehot = F.one_hot(codes, self.codebook_size).to(x.dtype)
        count = _all_reduce(onehot.sum(0))
        total = _all_reduce(onehot.T @ x)
        self.ema_count.mul_(self.ema_decay).add_(count, alpha=1 - self.ema_decay)
        self.ema_sum.mul_(self.ema_decay).add_(total, alpha=1 - self.ema_decay)
        n = self.ema_count.sum()
        smoothed = (self.ema_count + 1e-5) / (n + self.codebook_size * 1e-5) * n  # Laplace smoothing
        self.embed.data.copy_(self.ema_sum / smoothed[:, None])

    def distances(self, x: torch.Tensor) -> torch.Tensor:
        """(B, K) squared distances from ``x`` to every codeword."""
        return squared_distances(x, self.codebook)

    def forward(self, x: torch.Tensor) -> LevelOutput:
        if self.training and not bool(self.initialized):
            self._kmeans_init(x)
        codebook = self.codebook
        d = squared_distances(x, codebook)
        codes = d.argmin(-1)
        # A one-hot product instead of ``codebook[codes]``: the same values, but its backward is a matrix
        # product, which repeats bit-for-bit with several CPU threads; indexing's scatter-add backward does not.
        codeword = F.one_hot(codes, self.codebook_size).to(codebook.dtype) @ codebook
        if self.mode == "rotation":
            quantized = rotate_to(x, codeword.detach())
        else:
            quantized = x + (codeword - x).detach()
        codebook_loss = (x.detach() - codeword).pow(2).mean() if not self.ema else x.new_zeros(())
        commitment_loss = (x - codeword.detach()).pow(2).mean()
        if self.training:
            if self.ema:
                self._ema_update(x.detach(), codes)
            if self.dead_code_window > 0:
                self._restart_dead_codes(x.detach(), codes, d.detach().gather(1, codes[:, None]).squeeze(1))
        return LevelOutput(quantized, codeword.detach(), codes, codebook_loss, commitment_loss)


class ResidualQuantizer(nn.Module):
    """L levels; level i quantizes what levels < i left unexplained."""

    def __init__(self, *, n_levels: int, **level_kwargs) -> None:
        super().__init__()
        seed = level_kwargs.pop("seed", 0)
        self.levels = nn.ModuleList(
            VectorQuantizer(seed=seed * 1000 + i, **level_kwargs) for i in range(n_levels)
        )

    @torch.no_grad()
    def init_from_data(
        self, z: torch.Tensor, *, iters: int, seed: int, fit_rows: int = 131_072, first_centers: torch.Tensor | None = None
    ) -> None:
        """Codebooks = residual k-means of ``z`` (level i clusters what levels < i left); identical on every DDP rank.

        Each level is fitted on at most ``fit_rows`` rows (a seeded sample): the centres of 256 clusters
        are settled long before that, and the (rows × K) distance matrix stays small. ``first_centers``
        replace level 1's k-means (the spectral initialisation); later levels cluster what they leave.
        """
        result = residual_kmeans(
            z, n_levels=len(self.levels), k=self.levels[0].codebook_size, iters=iters, seed=seed, fit_rows=fit_rows,
            first_centers=first_centers,
        )
        for level, centers in zip(self.levels, result.codebooks):
            level.set_codebook(centers.to(z.dtype))

    def forward(self, z: torch.Tensor) -> QuantizerOutput:
        residual = z
        quantized = torch.zeros_like(z)
        codes, cb_losses, commit_losses = [], [], []
        last_residual = z
        for level in self.levels:
            last_residual = residual
            out = level(residual)
            quantized = quantized + out.quantized
            residual = residual - out.codeword  # the next level sees a residual without gradient tricks
            codes.append(out.codes)
            cb_losses.append(out.codebook_loss)
            commit_losses.append(out.commitment_loss)
        return QuantizerOutput(
            quantized=quantized,
            codes=torch.stack(codes, dim=-1),
            residual=residual.detach(),
            last_residual=last_residual.detach(),
            codebook_loss=torch.stack(cb_losses).sum(),
            commitment_loss=torch.stack(commit_losses).sum(),
        )
