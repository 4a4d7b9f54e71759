"""The RQ-VAE: encoder → residual quantizer → mirrored decoder (MLPs, by default as identity-skip branches)."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from rqvae_core.config import RQVAEConfig
from rqvae_core.graph import spectral_centers
from rqvae_core.kmeans import squared_distances
from rqvae_core.quantize import ResidualQuantizer


class RQVAEOutput(NamedTuple):
    recon: torch.Tensor  # (B, input_dim)
    z: torch.Tensor  # (B, latent_dim) encoder output
    quantized: torch.Tensor  # (B, latent_dim)
    codes: torch.Tensor  # (B, L) long
    loss: torch.Tensor
    recon_loss: torch.Tensor
    codebook_loss: torch.Tensor
    commitment_loss: torch.Tensor


class Encoded(NamedTuple):
    """What assignment needs per item, computed in eval mode."""

    codes: torch.Tensor  # (N, L) long
    distance: torch.Tensor  # (N,) ‖z − Σ codewords‖: how well the ID explains the item
    quantized: torch.Tensor  # (N, latent_dim) Σ codewords (the item's "codeword embedding")
    last_residual: torch.Tensor  # (N, latent_dim) residual entering the last level (overflow moves)
    recon: torch.Tensor  # (N, input_dim) decoder output of the quantized vector


def mlp(sizes: list[int]) -> nn.Sequential:
    """Linear layers with ReLU between them, none after the last (its output is a code or a vector)."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class RQVAE(nn.Module):
    def __init__(self, *, config: RQVAEConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        torch.manual_seed(c.seed)
        self.encoder = mlp([c.input_dim, *c.hidden_dims, c.latent_dim])
        self.decoder = mlp([c.latent_dim, *reversed(c.hidden_dims), c.input_dim])
        if c.skip:  # z = x + encoder(x), x̂ = q + decoder(q): start as the identity
            for branch in (self.encoder, self.decoder):
                nn.init.zeros_(branch[-1].weight)
                nn.init.zeros_(branch[-1].bias)
        self.quantizer = ResidualQuantizer(
            n_levels=c.n_levels,
            dim=c.latent_dim,
            codebook_size=c.codebook_size,
            mode=c.quantizer,
            ema=c.ema,
            ema_decay=c.ema_decay,
            kmeans_init=c.kmeans_init,
            kmeans_iters=c.kmeans_iters,
            dead_code_window=c.dead_code_window,
            seed=c.seed,
        )

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Latent z: x + MLP(x) with the skip encoder, MLP(x) without."""
        h = self.encoder(x)
        return x + h if self.config.skip else h

    def decode(self, quantized: torch.Tensor) -> torch.Tensor:
        recon = self.decoder(quantized)
        return quantized + recon if self.config.skip else recon

    @torch.no_grad()
    def init_codebooks(self, x: torch.Tensor) -> None:
        """Set every level's codebook to residual k-means of the latents of ``x`` (the fit set, or a sample).

        Better than k-means of the first batch (256 points for 256 codes): each codeword starts at a
        real cluster of the whole set, so no code starts dead and none needs re-seeding. With
        ``spectral_init`` level 1 starts at the means of a spectral clustering of the latents' k-NN
        graph instead (:mod:`rqvae_core.graph`), and levels 2.. at residual k-means of what it leaves.
        """
        was_training = self.training
        self.eval()
        try:
            z = torch.cat([self.encode(chunk) for chunk in x.split(65_536)])
        finally:
            self.train(was_training)
        c = self.config
        first = None
        if c.spectral_init:
            first = spectral_centers(
                z, k=c.codebook_size, neighbors=c.spectral_neighbors, dims=c.spectral_dims,
                iters=c.kmeans_iters, seed=c.seed, max_rows=c.spectral_rows,
            )
        if first is not None:
            # graph clusters can be far from equal in size, and one level-1 code holds at most K^L IDs (levels
            # 2..L and the disambiguation code): a cell that fills half of that already falls back to k-means
            cells = torch.bincount(torch.cat([squared_distances(chunk, first).argmin(-1) for chunk in z.split(65_536)]), minlength=c.codebook_size)
            if int(cells.max()) > c.codebook_size**c.n_levels // 2:
                first = None
        self.quantizer.init_from_data(z, iters=c.kmeans_iters, seed=c.seed, first_centers=first)

    def forward(self, x: torch.Tensor) -> RQVAEOutput:
        c = self.config
        z = self.encode(x)
        q = self.quantizer(z)
        recon = self.decode(q.quantized)
        recon_loss = (recon - x).pow(2).sum(-1).mean()
        loss = recon_loss + q.codebook_loss + c.beta * q.commitment_loss
        return RQVAEOutput(recon, z, q.quantized, q.codes, loss, recon_loss, q.codebook_loss, q.commitment_loss)

    @torch.no_grad()
    def encode_items(self, x: torch.Tensor) -> Encoded:
        """Codes and distances for a batch, deterministic (eval mode)."""
        was_training = self.training
        self.eval()
        try:
            z = self.encode(x)
            q = self.quantizer(z)
            return Encoded(
                codes=q.codes,
                distance=q.residual.norm(dim=-1),
                quantized=q.quantized,
                last_residual=q.last_residual,
                recon=self.decode(q.quantized),
            )
        finally:
            self.train(was_training)

    @torch.no_grad()
    def last_level_distances(self, last_residual: torch.Tensor) -> torch.Tensor:
        """(N, K) distances from residuals entering the last level to each last-level codeword."""
        return self.quantizer.levels[-1].distances(last_residual).sqrt()

    def codebooks(self) -> torch.Tensor:
        """(L, K, latent_dim) codebooks."""
        return torch.stack([level.codebook.detach() for level in self.quantizer.levels])
