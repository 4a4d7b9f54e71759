"""Train a generative retriever on one ID set and score it: the in-process engine.

A plain function, no Ray and no Prefect: :func:`evaluate_ids` takes an ID set,
user sequences, a config and a seed and returns a typed :class:`EvalResult`.
The Ray Train stage calls the same function inside its worker; experiment
scripts call it directly (see the package docstring for an example).

Protocol (TIGER): leave-one-out split (:mod:`tasks.evaluate.split`), a small
T5 trained from scratch to emit the next item's ID tokens, beam search over
valid IDs only (:mod:`tasks.evaluate.beam`), Recall/NDCG@5/10 over all users
(:mod:`tasks.evaluate.metrics`). The budget is a number of optimiser steps or a
number of seconds of training; every ``eval_every`` steps a fixed, seeded
subsample of validation users is scored and the best checkpoint (by
validation NDCG@10) is kept; training stops early after ``patience``
evaluations without improvement. The kept checkpoint then scores the full
validation and test sets.
"""

from __future__ import annotations

import copy
import math
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np
import torch

from tasks.evaluate import metrics as M
from tasks.evaluate.beam import IdTrie, constrained_beam_search
from tasks.evaluate.interactions import DroppedReport, Sequences, restrict_to_known
from tasks.evaluate.retriever import RetrieverConfig, build_model, encode_histories, item_tokens
from tasks.evaluate.split import Examples, Split, leave_one_out

SELECT_METRIC = "ndcg@10"


@dataclass(frozen=True)
class IdSet:
    """Semantic IDs of a catalog: ``codes[i]`` is the (L+1)-code ID of ``item_ids[i]``."""

    name: str
    item_ids: np.ndarray  # (N,) str
    codes: np.ndarray  # (N, D) int
    codebook_size: int

    @classmethod
    def from_codes(cls, *, name: str, item_ids, codes, codebook_size: int | None = None) -> "IdSet":
        codes = np.asarray(codes, dtype=np.int64)
        ids = np.asarray(item_ids).astype(str)
        if codes.ndim != 2 or codes.shape[0] != ids.shape[0]:
            raise ValueError(f"codes must be (N, D) with N = len(item_ids) = {ids.shape[0]}, got {codes.shape}")
        k = int(codebook_size) if codebook_size is not None else int(codes.max()) + 1
        return cls(name=name, item_ids=ids, codes=codes, codebook_size=k)


@dataclass(frozen=True, kw_only=True)
class EvalConfig:
    """Budget and protocol. Exactly one of ``steps`` / ``time_budget_s`` bounds training."""

    steps: int | None = 600
    time_budget_s: float | None = None
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_steps: int = 100
    max_history: int = 20
    beam: int = 20
    eval_every: int = 200
    val_users: int = 1000  # validation subsample scored during training (fixed by the seed)
    patience: int = 4  # evaluations without improvement before stopping early
    eval_batch_size: int = 64  # users per beam-search batch
    device: str = "auto"  # auto | cpu | cuda
    model: RetrieverConfig = field(default_factory=RetrieverConfig)

    def __post_init__(self) -> None:
        if (self.steps is None) == (self.time_budget_s is None):
            raise ValueError("set exactly one of steps and time_budget_s")
        if self.steps is not None and self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if self.time_budget_s is not None and self.time_budget_s <= 0:
            raise ValueError(f"time_budget_s must be > 0, got {self.time_budget_s}")
        for name in ("batch_size", "beam", "eval_every", "val_users", "patience", "eval_batch_size", "max_history"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "EvalConfig":
        d = dict(d)
        d["model"] = RetrieverConfig(**d.get("model", {}))
        return cls(**d)


@dataclass(frozen=True)
class CurvePoint:
    step: int
    seconds: float  # training wall time so far
    train_loss: float  # mean loss since the previous point
    val_recall_10: float  # on the validation subsample
    val_ndcg_10: float


@dataclass(frozen=True)
class EvalResult:
    name: str
    seed: int
    metrics: dict[str, dict[str, M.Metric]]  # split ("validation" | "test") -> metric -> mean, s.e.
    curve: list[CurvePoint]
    steps: int  # optimiser steps taken
    best_step: int  # step of the checkpoint that was scored
    stopped: str  # "budget" | "early_stop" | "time_budget"
    train_seconds: float  # wall time of the training loop, validation passes excluded
    eval_seconds: float  # wall time of all beam searches (validation passes + final validation and test)
    cpu_seconds: float  # process CPU time of the whole call: the cost on a shared machine
    n_users: int
    n_train_examples: int
    device: str
    test_users: tuple[str, ...] = ()
    """The scored users (ids from the interactions), in the order of ``test_ranks``; empty on DDP ranks > 0."""
    test_ranks: tuple[int, ...] = ()
    """0-based rank of each test user's held-out item in the beam (-1: not returned). Kept so that two ID sets
    scored on the same users can be compared user by user (:func:`paired_difference`), which the spread of
    per-user hits, shared by every ID set, would otherwise drown."""

    def to_dict(self, *, ranks: bool = True) -> dict:
        """``ranks=False``: without the per-user lists (evaluation.json keeps them in test_ranks.parquet)."""
        out = {
            "name": self.name,
            "seed": self.seed,
            "metrics": {s: {m: v.to_dict() for m, v in ms.items()} for s, ms in self.metrics.items()},
            "curve": [asdict(p) for p in self.curve],
            "steps": self.steps,
            "best_step": self.best_step,
            "stopped": self.stopped,
            "train_seconds": self.train_seconds,
            "eval_seconds": self.eval_seconds,
            "cpu_seconds": self.cpu_seconds,
            "n_users": self.n_users,
            "n_train_examples": self.n_train_examples,
            "device": self.device,
        }
        if ranks:
            out |= {"test_users": list(self.test_users), "test_ranks": list(self.test_ranks)}
        return out

    @classmethod
    def from_dict(cls, d: dict) -> "EvalResult":
        d = dict(d)
        d["metrics"] = {s: {m: M.Metric(**v) for m, v in ms.items()} for s, ms in d["metrics"].items()}
        d["curve"] = [CurvePoint(**p) for p in d["curve"]]
        d["test_users"], d["test_ranks"] = tuple(d.get("test_users", ())), tuple(d.get("test_ranks", ()))
        return cls(**d)


@dataclass(frozen=True)
class PreparedData:
    """Sequences mapped to an ID set's item rows and split; shared by every seed of that ID set."""

    split: Split
    dropped: DroppedReport
    users: tuple[str, ...]  # user ids, one per user row of ``split``

    @property
    def n_users(self) -> int:
        return len(self.users)


def prepare(ids: IdSet, sequences: Sequences, *, max_history: int = 20) -> PreparedData:
    """Drop unknown items (reported), map items to rows, and split leave-one-out."""
    row = {it: i for i, it in enumerate(ids.item_ids.tolist())}
    if len(row) != ids.item_ids.shape[0]:
        raise ValueError(f"ID set {ids.name!r}: item_ids must be unique")
    kept, dropped = restrict_to_known(sequences, row.keys())
    if not kept.users:
        raise ValueError(f"ID set {ids.name!r}: no user has >= 3 items with an ID ({dropped.to_dict()})")
    seqs = [np.fromiter((row[it] for it in s), dtype=np.int32, count=len(s)) for s in kept.items]
    return PreparedData(split=leave_one_out(seqs, max_history=max_history), dropped=dropped, users=tuple(kept.users))


def resolve_device(pref: str) -> str:
    if pref == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if pref == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but no GPU is available")
    return pref


def _autocast(device: str):
    if device == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def rank_items(model, trie: IdTrie, tokens: torch.Tensor, examples: Examples, *, beam: int, batch_users: int, device: str) -> np.ndarray:
    """(U, beam) ranked item rows for each example's history (-1 where fewer valid IDs exist)."""
    model.eval()
    out = np.full((len(examples), beam), -1, dtype=np.int64)
    # Sort by history length so batches carry little padding; results go back to input order.
    order = np.argsort(examples.lengths(), kind="stable")
    with torch.no_grad(), _autocast(device):
        for lo in range(0, order.shape[0], batch_users):
            idx = order[lo : lo + batch_users]
            ids, mask = encode_histories(examples.history[idx], tokens)
            items, _ = constrained_beam_search(model, trie, ids, mask, beam=beam, device=device)
            out[idx] = items.numpy()
    return out


def score(model, trie: IdTrie, tokens: torch.Tensor, examples: Examples, *, config: EvalConfig, device: str) -> np.ndarray:
    """(n,) 0-based rank of each example's target in the constrained beam, -1 when it is not returned."""
    ranked = rank_items(model, trie, tokens, examples, beam=config.beam, batch_users=config.eval_batch_size, device=device)
    return M.target_ranks(ranked, examples.target)


def _batches(n: int, *, batch_size: int, lengths: np.ndarray, rng: np.random.Generator):
    """Endless shuffled batches; within windows of 50 batches examples are grouped by length (less padding)."""
    window = batch_size * 50
    while True:
        perm = rng.permutation(n)
        for lo in range(0, n, window):
            chunk = perm[lo : lo + window]
            chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
            batches = [chunk[i : i + batch_size] for i in range(0, chunk.shape[0], batch_size)]
            for j in rng.permutation(len(batches)):
                yield batches[j]


def _lr_lambda(warmup: int) -> Callable[[int], float]:
    return lambda step: min(1.0, (step + 1) / max(warmup, 1))


def evaluate_ids(
    ids: IdSet,
    sequences: Sequences | PreparedData,
    *,
    config: EvalConfig,
    seed: int,
    log: Callable[[str], None] | None = None,
    ddp: bool | None = None,
) -> EvalResult:
    """Train a retriever on ``ids`` from scratch and score it on all users (see the module docstring).

    ``sequences`` may be a :class:`PreparedData` from :func:`prepare` to share the split across seeds.
    ``ddp``: train data-parallel over the ``torch.distributed`` group (None: whenever one is
    initialised, as in a Ray Train worker). Then each rank trains on its share of every batch and
    rank 0 evaluates; every rank returns a result, only rank 0's holds metrics.
    """
    log = log or (lambda _msg: None)
    data = sequences if isinstance(sequences, PreparedData) else prepare(ids, sequences, max_history=config.max_history)
    split = data.split
    device = resolve_device(config.device)
    dist = torch.distributed.is_available() and torch.distributed.is_initialized()
    dist = dist if ddp is None else (ddp and dist)
    rank, world = (torch.distributed.get_rank(), torch.distributed.get_world_size()) if dist else (0, 1)

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    depth = ids.codes.shape[1]
    model = build_model(depth=depth, codebook_size=ids.codebook_size, config=config.model).to(device)
    train_model = model
    if dist:
        from torch.nn.parallel import DistributedDataParallel

        train_model = DistributedDataParallel(model, device_ids=[torch.cuda.current_device()] if device == "cuda" else None)
    tokens = item_tokens(ids.codes, ids.codebook_size)
    label_tokens = tokens.to(device)
    trie = IdTrie.build(ids.codes, codebook_size=ids.codebook_size)
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(config.warmup_steps))

    n_val = len(split.validation)
    val_sub = split.validation.take(np.sort(np.random.default_rng(seed + 1_000_003).permutation(n_val)[: config.val_users]))
    n_train = len(split.train)
    if n_train == 0:
        raise ValueError(f"ID set {ids.name!r}: no training examples (every user has exactly 3 items)")
    batches = _batches(n_train, batch_size=config.batch_size * world, lengths=split.train.lengths(), rng=rng)

    curve: list[CurvePoint] = []
    best = (-math.inf, 0, copy.deepcopy(model.state_dict()))
    since_best, step, losses, stopped = 0, 0, [], "budget"
    t0, cpu0 = time.perf_counter(), time.process_time()
    eval_time = 0.0
    while True:
        idx = next(batches)[rank::world]
        train_model.train()
        inp, mask = encode_histories(split.train.history[idx], tokens)
        labels = label_tokens[torch.from_numpy(split.train.target[idx]).long().to(device)]
        with _autocast(device):
            loss = train_model(input_ids=inp.to(device), attention_mask=mask.to(device), labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        step += 1
        losses.append(float(loss.detach()))
        elapsed = time.perf_counter() - t0
        out_of_budget = (config.steps is not None and step >= config.steps) or (
            config.time_budget_s is not None and elapsed >= config.time_budget_s
        )
        stop = False
        if step % config.eval_every == 0 or out_of_budget:
            if rank == 0:
                te = time.perf_counter()
                val = M.summarize(score(model, trie, tokens, val_sub, config=config, device=device))
                eval_time += time.perf_counter() - te
                curve.append(CurvePoint(step=step, seconds=round(elapsed, 3), train_loss=float(np.mean(losses)),
                                        val_recall_10=val["recall@10"].mean, val_ndcg_10=val["ndcg@10"].mean))
                log(f"{ids.name} seed {seed} step {step}: loss {np.mean(losses):.4f} val R@10 {val['recall@10'].mean:.4f} N@10 {val[SELECT_METRIC].mean:.4f}")
                losses = []
                if val[SELECT_METRIC].mean > best[0]:
                    best, since_best = (val[SELECT_METRIC].mean, step, copy.deepcopy(model.state_dict())), 0
                else:
                    since_best += 1
                if since_best >= config.patience:
                    stop, stopped = True, "early_stop"
        if out_of_budget and not stop:
            stop, stopped = True, ("budget" if config.time_budget_s is None else "time_budget")
        if dist:  # rank 0 decides (it holds the validation scores and the clock that counts)
            flag = torch.tensor([1 if stop else 0], device=device if device == "cuda" else "cpu")
            torch.distributed.broadcast(flag, src=0)
            stop = bool(flag.item())
        if stop:
            break
    train_seconds = time.perf_counter() - t0 - eval_time

    te = time.perf_counter()
    results: dict[str, dict[str, M.Metric]] = {}
    test_ranks = np.zeros(0, dtype=np.int64)
    if rank == 0:
        model.load_state_dict(best[2])
        test_ranks = score(model, trie, tokens, split.test, config=config, device=device)
        results = {
            "validation": M.summarize(score(model, trie, tokens, split.validation, config=config, device=device)),
            "test": M.summarize(test_ranks),
        }
        log(f"{ids.name} seed {seed}: best step {best[1]}, test R@10 {results['test']['recall@10'].mean:.4f} ± {results['test']['recall@10'].se:.4f}")
    return EvalResult(
        name=ids.name,
        seed=seed,
        metrics=results,
        curve=curve,
        steps=step,
        best_step=best[1],
        stopped=stopped,
        train_seconds=round(train_seconds, 3),
        eval_seconds=round(eval_time + time.perf_counter() - te, 3),
        cpu_seconds=round(time.process_time() - cpu0, 3),
        n_users=data.n_users,
        n_train_examples=n_train,
        device=device,
        test_users=data.users if rank == 0 else (),
        test_ranks=tuple(int(r) for r in test_ranks),
    )


def combine(results: list[EvalResult], split: str = "test") -> dict[str, M.Metric]:
    """One ID set's metrics over seeds (mean over seeds, combined s.e.; see :mod:`tasks.evaluate.metrics`)."""
    return {m: M.combine_seeds([r.metrics[split][m] for r in results]) for m in M.METRICS}


def paired_difference(a: list[EvalResult], b: list[EvalResult]) -> dict[str, M.Metric]:
    """Test metrics of ID set ``a`` minus ``b``, user by user within each seed both share, combined over those seeds.

    Both sets are scored on the same users (same interactions and items), so the per-user difference cancels
    what makes a user easy or hard for any ID set; its s.e. is the one to judge "a beats b" by."""
    by_seed = {r.seed: r for r in b}
    per_seed: dict[str, list[M.Metric]] = {m: [] for m in M.METRICS}
    for ra in a:
        rb = by_seed.get(ra.seed)
        if rb is None:
            continue
        common, ia, ib = np.intersect1d(np.asarray(ra.test_users, dtype=str), np.asarray(rb.test_users, dtype=str), return_indices=True)
        if not common.size:
            raise ValueError(f"{ra.name} and {rb.name} (seed {ra.seed}) have no scored user in common")
        ua, ub = M.per_user(np.asarray(ra.test_ranks)[ia]), M.per_user(np.asarray(rb.test_ranks)[ib])
        for m in M.METRICS:
            per_seed[m].append(M.mean_se(ua[m] - ub[m]))
    if not per_seed[M.METRICS[0]]:
        raise ValueError("no seed scored for both ID sets")
    return {m: M.combine_seeds(v) for m, v in per_seed.items()}
