"""The one frozen configuration of an RQ-VAE and its fit loop.

Defaults follow TIGER (Rajput et al., 2023) and the genrec docs: an MLP
384 → 512 → 256 → 128 → 32, three residual levels of 256 codes, β = 0.25,
AdamW at 5e-4. Everything the quantizer toolbox offers is a field here so a
checkpoint's ``config.json`` fully describes how it was trained.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any, Literal

QuantizerMode = Literal["ste", "rotation", "gumbel"]


@dataclass(frozen=True, kw_only=True)
class RQVAEConfig:
    # architecture
    input_dim: int = 384
    hidden_dims: tuple[int, ...] = (512, 256, 128)
    embed_dim: int = 32
    n_levels: int = 3
    codebook_size: int = 256
    # quantizer
    quantizer: QuantizerMode = "rotation"
    """How gradients cross the argmin: straight-through, rotation trick, or Gumbel-softmax."""
    beta: float = 0.25
    """Commitment weight: pulls the encoder output towards its chosen codeword."""
    gumbel_temperature_start: float = 1.0
    gumbel_temperature_end: float = 0.1
    sinkhorn: bool = False
    """Balance assignments during training with Sinkhorn-Knopp (as in LC-Rec)."""
    sinkhorn_epsilon: float = 0.05
    sinkhorn_iters: int = 3
    ema: bool = False
    """Move codewords by an exponential moving average of their assigned vectors instead of by gradient."""
    ema_decay: float = 0.99
    cosine: bool = False
    """L2-normalise inputs and codewords at each level (distance becomes angle)."""
    simvq: bool = False
    """SimVQ: a frozen random codebook times a learned linear map, so all codes move together."""
    kmeans_init: bool = True
    kmeans_iters: int = 10
    dead_code_window: int = 20
    """Steps a code may go unused before it is re-seeded from current residuals (0 = never)."""
    # variational bottleneck (beta-VAE), off by default
    vae: bool = False
    vae_beta: float = 1e-3
    # optimisation
    lr: float = 5e-4
    weight_decay: float = 1e-4
    warmup_steps: int = 50
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "hidden_dims", tuple(int(h) for h in self.hidden_dims))
        positive = {
            "input_dim": self.input_dim,
            "embed_dim": self.embed_dim,
            "n_levels": self.n_levels,
            "codebook_size": self.codebook_size,
        }
        for name, value in positive.items():
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if any(h < 1 for h in self.hidden_dims):
            raise ValueError(f"hidden_dims must all be >= 1, got {self.hidden_dims}")
        if self.quantizer not in ("ste", "rotation", "gumbel"):
            raise ValueError(f"quantizer must be ste, rotation or gumbel, got {self.quantizer!r}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.beta < 0 or self.weight_decay < 0 or self.grad_clip < 0 or self.vae_beta < 0:
            raise ValueError("beta, weight_decay, grad_clip and vae_beta must be >= 0")
        if not 0 < self.ema_decay < 1:
            raise ValueError(f"ema_decay must be in (0, 1), got {self.ema_decay}")
        if not 0 < self.min_lr_ratio <= 1:
            raise ValueError(f"min_lr_ratio must be in (0, 1], got {self.min_lr_ratio}")
        if self.gumbel_temperature_start <= 0 or self.gumbel_temperature_end <= 0:
            raise ValueError("gumbel temperatures must be > 0")
        if self.dead_code_window < 0 or self.warmup_steps < 0 or self.kmeans_iters < 0:
            raise ValueError("dead_code_window, warmup_steps and kmeans_iters must be >= 0")
        if self.ema and self.simvq:
            raise ValueError("ema and simvq are exclusive: SimVQ learns its codebook through a linear map")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["hidden_dims"] = list(self.hidden_dims)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RQVAEConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown RQVAEConfig keys: {sorted(unknown)}")
        return cls(**d)


__all__ = ["RQVAEConfig", "QuantizerMode"]
