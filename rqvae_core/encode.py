"""Encode any number of items in fixed-size batches (bounded memory, any device)."""

from __future__ import annotations

from typing import Iterable, Iterator

import numpy as np
import torch

from rqvae_core.model import RQVAE, Encoded


def encode_batches(model: RQVAE, batches: Iterable[np.ndarray | torch.Tensor], *, device: str | torch.device = "cpu") -> Iterator[Encoded]:
    """Yield one :class:`Encoded` (CPU tensors) per input batch."""
    model = model.to(device).eval()
    for batch in batches:
        x = torch.as_tensor(batch, dtype=torch.float32).to(device)
        enc = model.encode_items(x)
        yield Encoded(*(t.cpu() for t in enc))


def encode_array(model: RQVAE, x: np.ndarray | torch.Tensor, *, batch_size: int = 4096, device: str | torch.device = "cpu") -> Encoded:
    """Encode an (N, D) array in batches and concatenate the results."""
    parts = list(encode_batches(model, (x[i : i + batch_size] for i in range(0, len(x), batch_size)), device=device))
    if not parts:
        raise ValueError("nothing to encode: the input has no rows")
    return Encoded(*(torch.cat(ts) for ts in zip(*parts)))
