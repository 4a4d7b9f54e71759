"""Drift: how well the frozen prior model serves the items it has not seen (stable runs only).

A stable run reuses yesterday's model, so new and changed items are encoded by a
model that never trained on them. When the catalog moves (a new category, another
language), their reconstruction error rises above what the model achieved on its
own training catalog and they crowd into few codes or into codes the prior run
never used. The report compares exactly that, and flags drift past
``drift.max_recon_ratio``; ``--retrain-on-drift`` then retrains.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tasks.config import DriftConfig


def drift_report(*, sq_err: np.ndarray, codes: np.ndarray, dim: int, codebook_size: int,
                 prior_recon_mse: float, prior_codes: np.ndarray, config: DriftConfig) -> dict[str, Any]:
    """Compare the fresh (new + changed) items with the prior run.

    ``sq_err``: per fresh item, the summed squared reconstruction error under the
    reused model; ``codes``: their (n, L) model codes before disambiguation;
    ``prior_codes``: the prior run's (m, L+1) IDs.
    """
    n = int(len(sq_err))
    n_levels = codes.shape[1] if codes.ndim == 2 else 0
    recon_mse = float(np.mean(sq_err) / dim) if n else 0.0
    ratio = recon_mse / prior_recon_mse if n and prior_recon_mse > 0 else None
    prior_used = [np.unique(prior_codes[:, level]) for level in range(n_levels)]
    unseen = [float(np.mean(~np.isin(codes[:, level], prior_used[level]))) if n else 0.0 for level in range(n_levels)]
    usage = [len(np.unique(codes[:, level])) / codebook_size for level in range(n_levels)]
    prior_usage = [len(u) / codebook_size for u in prior_used]
    enough = n >= config.min_items
    flagged = bool(enough and ratio is not None and ratio > config.max_recon_ratio)
    if not enough:
        reason = f"{n} new/changed items < drift.min_items {config.min_items}: not enough to judge"
    elif flagged:
        reason = f"recon error of new/changed items is {ratio:.2f}x the prior run's > drift.max_recon_ratio {config.max_recon_ratio}"
    else:
        reason = f"recon ratio {ratio:.2f} <= drift.max_recon_ratio {config.max_recon_ratio}" if ratio is not None else "prior recon error unknown"
    return {
        "items": n,
        "recon_mse": recon_mse,
        "prior_recon_mse": float(prior_recon_mse),
        "recon_ratio": ratio,
        "unseen_code_share": unseen,
        "code_usage": usage,
        "prior_code_usage": prior_usage,
        "max_recon_ratio": config.max_recon_ratio,
        "min_items": config.min_items,
        "flagged": flagged,
        "reason": reason,
    }
