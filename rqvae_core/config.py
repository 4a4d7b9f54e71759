"""The frozen configurations: what an RQ-VAE *is* (``RQVAEConfig``) and how it is fitted (``TrainConfig``).

Every default of the project lives here, once: the pipeline's config sections
(tasks/config.py) take theirs from these dataclasses. The model config is what a
checkpoint's ``config.json`` holds (enough to rebuild and run the model); the
optimiser and schedule sit in ``TrainConfig`` because they shape a fit, not the
model that comes out of it.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any, Literal

QuantizerMode = Literal["ste", "rotation"]


@dataclass(frozen=True, kw_only=True)
class RQVAEConfig:
    # architecture
    input_dim: int = 384
    hidden_dims: tuple[int, ...] = (512, 256, 128)
    skip: bool = True
    """Identity-skip encoder and decoder: z = x + MLP(x), x̂ = q + MLP(q), the MLPs' last layers
    zero-initialised. An untrained model is then exactly residual k-means on the embeddings (with
    :meth:`RQVAE.init_codebooks`; level 1 from the k-NN graph's spectral clusters with ``spectral_init``),
    and training fine-tunes from there instead of from a random projection. A plain MLP bottleneck (``skip=false``) squeezes the
    embedding into ``embed_dim`` and, measured on Beauty, loses neighbourhoods residual k-means keeps."""
    embed_dim: int | None = None
    """Latent size of the plain MLP encoder (``skip=false`` only; the skip encoder's latent is the input's size)."""
    n_levels: int = 3
    codebook_size: int = 256
    # quantizer
    quantizer: QuantizerMode = "rotation"
    """How gradients cross the argmin: straight-through, or the rotation trick."""
    beta: float = 0.25
    """Commitment weight: pulls the encoder output towards its chosen codeword."""
    ema: bool = True
    """Move codewords by an exponential moving average of their assigned vectors (online k-means) instead of
    by AdamW. Why: the codebooks start at a k-means fixed point, where each codeword's minibatch gradient is
    near-zero-mean noise; Adam divides by its running RMS, so every codeword still moves about ``lr`` per step
    (codes absent from a batch too, on momentum). Measured on Beauty (whole fit set, eval mode), AdamW
    codebooks raised the reconstruction error above its starting value (lr 1e-5 and 1e-4) while the EMA
    codebooks lowered it and kept more distinct prefixes; downstream figures in the README."""
    ema_decay: float = 0.99
    kmeans_init: bool = True
    """Start the codebooks at k-means of the data: residual k-means of the whole fit set's latents when the
    caller passes it (:meth:`RQVAE.init_codebooks`, as the pipeline does; level 1 per ``spectral_init``), else
    k-means of the first batch."""
    kmeans_iters: int = 20
    spectral_init: bool = True
    """Level 1 starts at the means of a spectral clustering of the fit set's cosine k-NN graph, so the first
    code groups items that are each other's neighbours (:mod:`rqvae_core.graph`). Measured on Beauty
    (semid evaluate, 1,500 steps, seeds 0 and 1) against residual k-means on the same vectors: see README."""
    spectral_neighbors: int = 10
    spectral_dims: int = 32
    """Eigenvectors of the normalised adjacency used as the spectral embedding."""
    spectral_rows: int = 50_000
    """The graph is built on a seeded sample of at most this many rows (exact k-NN, O(rows² · d))."""
    dead_code_window: int = 0
    """Steps a code may go unused before it is re-seeded from current residuals (0 = never). Off by default:
    measured on Beauty, re-seeding every 20 steps kept all codes busy but cut the level-2 coherence from
    0.19 to 0.05; codebooks started at residual k-means of the whole set do not collapse without it."""
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "hidden_dims", tuple(int(h) for h in self.hidden_dims))
        if self.skip and self.embed_dim not in (None, self.input_dim):
            raise ValueError(f"embed_dim={self.embed_dim} needs skip=false: the skip encoder's latent has the input's size ({self.input_dim})")
        if not self.skip and self.embed_dim is None:
            raise ValueError("skip=false needs embed_dim (the MLP encoder's latent size)")
        positive = {
            "input_dim": self.input_dim,
            "latent_dim": self.latent_dim,
            "n_levels": self.n_levels,
            "codebook_size": self.codebook_size,
        }
        for name, value in positive.items():
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if any(h < 1 for h in self.hidden_dims):
            raise ValueError(f"hidden_dims must all be >= 1, got {self.hidden_dims}")
        if self.quantizer not in ("ste", "rotation"):
            raise ValueError(f"quantizer must be ste or rotation, got {self.quantizer!r}")
        if self.beta < 0:
            raise ValueError(f"beta must be >= 0, got {self.beta}")
        if not 0 < self.ema_decay < 1:
            raise ValueError(f"ema_decay must be in (0, 1), got {self.ema_decay}")
        if self.spectral_neighbors < 1 or self.spectral_dims < 1 or self.spectral_rows < 2:
            raise ValueError("spectral_neighbors and spectral_dims must be >= 1, spectral_rows >= 2")
        if self.dead_code_window < 0 or self.kmeans_iters < 0:
            raise ValueError("dead_code_window and kmeans_iters must be >= 0")

    @property
    def latent_dim(self) -> int:
        """Size of z and of every codeword."""
        return self.input_dim if self.skip else int(self.embed_dim)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["hidden_dims"] = list(self.hidden_dims)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RQVAEConfig":
        d = _upgrade(d)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown RQVAEConfig keys: {sorted(unknown)}")
        return cls(**d)


# Keys older checkpoints carried that only shaped training, so a model loads without them: the optimiser settings
# (before the model/fit split) and removed options that only changed which code a training batch picked
# (Gumbel temperatures, Sinkhorn balancing); the fitted model encodes by the same argmin.
_TRAINING_ONLY_KEYS = {
    "lr", "weight_decay", "warmup_steps", "min_lr_ratio", "grad_clip",
    "gumbel_temperature_start", "gumbel_temperature_end", "sinkhorn", "sinkhorn_epsilon", "sinkhorn_iters",
}


def _upgrade(d: dict[str, Any]) -> dict[str, Any]:
    """Read a ``config.json`` of an older checkpoint: drop training-only keys, refuse removed model options."""
    d = {k: v for k, v in d.items() if k not in _TRAINING_ONLY_KEYS}
    for removed, what in (("cosine", "cosine codebooks"), ("simvq", "SimVQ codebooks"), ("vae", "a variational bottleneck")):
        if d.pop(removed, False):
            raise ValueError(f"this checkpoint uses {what}, an option removed after it lost in the project's measurements; refit the model")
    d.pop("vae_beta", None)  # only meant something with vae
    d.setdefault("skip", False)  # checkpoints from before the skip encoder had the MLP bottleneck
    if d.get("quantizer") == "gumbel":
        d["quantizer"] = "ste"  # Gumbel only changed training; inference is the same argmin
    return d


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """How ``rqvae_core.train.fit`` optimises a model: AdamW, warmup + cosine decay, clipping, early stop."""

    epochs: int = 20
    batch_size: int = 256
    lr: float = 1e-4
    """Small: the model starts at residual k-means (skip encoder, data-initialised codebooks) and is fine-tuned
    from there. With ``ema`` codebooks (the default) it moves the encoder and decoder only; with AdamW codebooks
    at 1e-3 the codes drifted away from the neighbourhoods within a few epochs (Beauty)."""
    weight_decay: float = 1e-4
    warmup_steps: int = 50
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0
    early_stop_patience: int = 5
    """Epochs without a relative improvement of ``early_stop_min_delta`` in the fit set's eval-mode recon before stopping
    (0 = never); the saved weights are those of the best epoch."""
    early_stop_min_delta: float = 1e-3

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError(f"epochs and batch_size must be >= 1, got {self.epochs}, {self.batch_size}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.weight_decay < 0 or self.grad_clip < 0 or self.warmup_steps < 0:
            raise ValueError("weight_decay, grad_clip and warmup_steps must be >= 0")
        if not 0 < self.min_lr_ratio <= 1:
            raise ValueError(f"min_lr_ratio must be in (0, 1], got {self.min_lr_ratio}")
        if self.early_stop_patience < 0 or self.early_stop_min_delta < 0:
            raise ValueError("early_stop_patience and early_stop_min_delta must be >= 0")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


__all__ = ["RQVAEConfig", "TrainConfig", "QuantizerMode"]
