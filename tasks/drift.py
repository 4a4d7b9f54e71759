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


def code_counts(codes: np.ndarray, *, codebook_size: int) -> np.ndarray:
    """(L, K) how many of the rows use each code at each level: what workers ship for ``drift_report``."""
    codes = np.asarray(codes, dtype=np.int64)
    if codes.ndim != 2:
        raise ValueError(f"codes must be (rows, levels), got shape {codes.shape}")
    return np.stack([np.bincount(codes[:, level], minlength=codebook_size) for level in range(codes.shape[1])]) if codes.shape[1] \
        else np.zeros((0, codebook_size), dtype=np.int64)


def drift_report(*, n: int, sq_err_sum: float, fresh_code_counts: np.ndarray, prior_code_used: np.ndarray, dim: int,
                 codebook_size: int, prior_recon_mse: float, config: DriftConfig) -> dict[str, Any]:
    """Compare the fresh (new + changed) items with the prior run, from aggregates merged across partitions.

    ``n`` fresh items whose summed squared reconstruction errors under the reused
    model add up to ``sq_err_sum``; ``fresh_code_counts``: (L, K) counts of their
    model codes (before disambiguation, ``code_counts``); ``prior_code_used``: (L, K)
    whether any of the prior run's IDs uses that code at that level.
    """
    fresh_code_counts = np.asarray(fresh_code_counts, dtype=np.int64)
    prior_used = np.asarray(prior_code_used, dtype=bool)
    n_levels = fresh_code_counts.shape[0]
    recon_mse = float(sq_err_sum / n / dim) if n else 0.0
    ratio = recon_mse / prior_recon_mse if n and prior_recon_mse > 0 else None
    unseen = [float(fresh_code_counts[level][~prior_used[level]].sum() / n) if n else 0.0 for level in range(n_levels)]
    usage = [int((fresh_code_counts[level] > 0).sum()) / codebook_size for level in range(n_levels)]
    prior_usage = [int(prior_used[level].sum()) / codebook_size for level in range(n_levels)]
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
