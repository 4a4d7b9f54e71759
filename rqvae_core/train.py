"""The fit loop. It owns optimisation only: no data loading, no distribution.

Callers hand it batches (a list, a DataLoader, a Ray Train dataset shard...)
one epoch at a time and get per-epoch metrics through a callback, so the same
loop runs in a notebook, a single process, or inside a Ray Train worker whose
model was wrapped by DDP.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Iterable

import torch
import torch.distributed as dist
from torch import nn

from rqvae_core.config import TrainConfig
from rqvae_core.model import RQVAE


def lr_at(step: int, *, base_lr: float, total_steps: int, warmup_steps: int, min_lr_ratio: float) -> float:
    """Linear warmup, then cosine decay to ``min_lr_ratio × base_lr`` (as nanoGPT)."""
    if warmup_steps > 0 and step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    coeff = 0.5 * (1 + math.cos(math.pi * progress))
    return base_lr * (min_lr_ratio + (1 - min_lr_ratio) * coeff)


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def _reduce_device() -> torch.device:
    """Where collectives run: NCCL reduces CUDA tensors only, gloo CPU ones."""
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def _global_epoch_stats(sums: dict[str, float], n: int, used: torch.Tensor) -> tuple[dict[str, float], torch.Tensor]:
    """Average over every DDP rank, so all ranks see the same metrics and stop at the same epoch."""
    keys = sorted(sums)
    if not _distributed():
        return {k: sums[k] / n for k in keys}, used
    device = _reduce_device()
    totals = torch.tensor([sums[k] for k in keys] + [float(n)], dtype=torch.float64, device=device)
    dist.all_reduce(totals)
    flags = used.to(device=device, dtype=torch.int32)
    dist.all_reduce(flags, op=dist.ReduceOp.MAX)
    return {k: (totals[i] / totals[-1]).item() for i, k in enumerate(keys)}, flags.bool().cpu()


@torch.no_grad()
def eval_recon(model: RQVAE, x: torch.Tensor) -> float:
    """Eval-mode reconstruction error of ``x`` (mean over rows, all DDP ranks): what the saved model does.

    The epoch's training mean is not that: it averages over weights that moved during the epoch,
    with training-mode quantisation (restarts, VAE sampling).
    """
    was_training = model.training
    model.eval()
    try:
        total = sum(float((model(chunk).recon - chunk).pow(2).sum()) for chunk in x.split(65_536))
    finally:
        model.train(was_training)
    totals = torch.tensor([total, float(len(x))], dtype=torch.float64)
    if _distributed():
        totals = totals.to(_reduce_device())
        dist.all_reduce(totals)
    return (totals[0] / totals[1]).item()


def unwrap(model: nn.Module) -> RQVAE:
    """The RQVAE inside a DDP/DataParallel wrapper, or the model itself."""
    return getattr(model, "module", model)


@dataclass
class EpochMetrics:
    epoch: int
    loss: float
    recon: float
    codebook: float
    commitment: float
    lr: float
    steps: int
    code_usage: list[float]
    """Share of codes picked at least once this epoch, per level (training batches)."""
    eval_recon: float | None = None
    """Eval-mode recon of the fit set (``init_data``) with the weights at the end of this epoch."""
    nonfinite: bool = False

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class FitResult:
    history: list[EpochMetrics] = field(default_factory=list)
    stopped_early: bool = False
    steps: int = 0
    kept_epoch: int = -1
    """The epoch whose weights the model holds after :func:`fit` (the last one unless an earlier scored better)."""


class Trainer:
    """AdamW + schedule + clipping over an RQVAE (optionally DDP-wrapped)."""

    def __init__(self, *, model: nn.Module, train: TrainConfig, total_steps: int, device: str | torch.device = "cpu") -> None:
        self.model, self.train_config, self.total_steps = model, train, max(1, total_steps)
        self.device = torch.device(device)
        params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=train.lr, weight_decay=train.weight_decay)
        self.step_count = 0

    def step(self, batch: torch.Tensor) -> dict[str, object]:
        c = self.train_config
        lr = lr_at(self.step_count, base_lr=c.lr, total_steps=self.total_steps, warmup_steps=c.warmup_steps, min_lr_ratio=c.min_lr_ratio)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.model.train()
        out = self.model(batch.to(self.device, non_blocking=True).float())
        self.optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        if c.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), c.grad_clip)
        self.optimizer.step()
        self.step_count += 1
        return {
            "loss": out.loss.item(),
            "recon": out.recon_loss.item(),
            "codebook": out.codebook_loss.item(),
            "commitment": out.commitment_loss.item(),
            "lr": lr,
            "codes": out.codes.detach(),
        }


def fit(
    *,
    model: nn.Module,
    train: TrainConfig,
    epoch_batches: Callable[[int], Iterable[torch.Tensor]],
    steps_per_epoch: int,
    device: str | torch.device = "cpu",
    on_epoch_end: Callable[[EpochMetrics], bool | None] | None = None,
    init_data: torch.Tensor | None = None,
) -> FitResult:
    """Train for up to ``train.epochs``; ``epoch_batches(e)`` yields that epoch's batches.

    ``init_data`` (the fit set, or a sample of it, on ``device``): with ``kmeans_init`` the
    codebooks start at residual k-means of its latents (:meth:`RQVAE.init_codebooks`); without
    it they start at k-means of the first batch.

    The score of an epoch is the eval-mode recon of ``init_data`` with the weights at its end
    (:func:`eval_recon`), or the epoch's training-mean recon without ``init_data``. Stops early when
    the score has not improved by a relative ``train.early_stop_min_delta`` for
    ``train.early_stop_patience`` epochs, when the loss is not finite (reported with
    ``nonfinite=True``), or when ``on_epoch_end`` returns True. With ``init_data`` the model ends
    with the weights of its best-scoring epoch (``FitResult.kept_epoch``), so an early stop or a
    late rise does not publish worse weights than the fit had; a non-finite stop keeps the last
    weights, for the caller to refuse.
    """
    epochs = train.epochs
    if init_data is not None and unwrap(model).config.kmeans_init:
        unwrap(model).init_codebooks(init_data)
    trainer = Trainer(model=model, train=train, total_steps=epochs * max(1, steps_per_epoch), device=device)
    core = unwrap(model)
    config = core.config
    result = FitResult()
    plateau, stale = math.inf, 0  # early stop: the score to beat by min_delta
    best, best_state, best_epoch = math.inf, None, -1  # the weights to keep: the lowest eval-mode recon so far
    for epoch in range(epochs):
        sums: dict[str, float] = {}
        used = torch.zeros(config.n_levels, config.codebook_size, dtype=torch.bool)
        n = 0
        last: dict[str, object] = {}
        for batch in epoch_batches(epoch):
            last = trainer.step(batch)
            codes = last.pop("codes").cpu()
            for level in range(config.n_levels):
                used[level, codes[:, level]] = True
            for k in ("loss", "recon", "codebook", "commitment"):
                sums[k] = sums.get(k, 0.0) + float(last[k])
            n += 1
        if n == 0:
            raise ValueError(f"epoch {epoch} yielded no batches")
        means, used = _global_epoch_stats(sums, n, used)
        nonfinite = not all(math.isfinite(v) for v in means.values())
        score = eval_recon(core, init_data) if init_data is not None and not nonfinite else None
        metrics = EpochMetrics(
            epoch=epoch, steps=trainer.step_count, lr=float(last["lr"]),
            code_usage=used.float().mean(1).tolist(), eval_recon=score, nonfinite=nonfinite, **means,
        )
        result.history.append(metrics)
        result.steps = trainer.step_count
        if score is not None and score < best:
            best, best_state, best_epoch = score, {k: v.detach().clone() for k, v in core.state_dict().items()}, epoch
        stop = bool(on_epoch_end(metrics)) if on_epoch_end else False
        if metrics.nonfinite or stop:
            result.stopped_early = True
            break
        score = metrics.recon if score is None else score
        if score < plateau * (1 - train.early_stop_min_delta):
            plateau, stale = score, 0
        else:
            stale += 1
            if train.early_stop_patience and stale >= train.early_stop_patience:
                result.stopped_early = True
                break
    result.kept_epoch = len(result.history) - 1
    if best_state is not None and not result.history[-1].nonfinite and best_epoch != result.kept_epoch:
        core.load_state_dict(best_state)
        result.kept_epoch = best_epoch
    core.eval()
    return result
