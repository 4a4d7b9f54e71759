"""Fit the RQ-VAE on Ray: one Ray task for small fits, ``TorchTrainer`` workers (DDP) otherwise.

The driver only wires Ray and reads back the model's small files: the training
maths live in rqvae_core, and ``_train_loop`` is the same job either way. Workers
read their shard of the embedding parts straight from the work prefix (local or
S3) into memory once and iterate epochs from there. Rank 0 writes the model
(safetensors + JSON) and the history to ``<work>/fit/``; under Ray Train the
checkpoint also goes to Ray Train's ``storage_path``, ``<work>/fit/_train`` (S3
through a pyarrow filesystem when the output is S3, as a multi-node cluster needs).

Above ``fit.max_items`` the model is fitted on a deterministic sample of about that
many items, chosen by a hash of the item text: an RQ-VAE learns codebooks, and a
few hundred thousand items fix them as well as 100M; every item is still assigned.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray
import torch

from rqvae_core import RQVAE, RQVAEConfig, TrainConfig, fit, load_checkpoint, save_checkpoint
from rqvae_core.train import EpochMetrics
from tasks import progress, storage
from tasks.config import PipelineConfig
from tasks.embed import vectors_matrix
from tasks.errors import BadInput
from tasks.manifest import FitResult, hash_of, run_stage, stage_dir
from tasks.ray_runtime import cpu_threads_per_worker

MODEL_DIR = "model"
HISTORY = "history.json"


class TrainingFailed(RuntimeError):
    """Training produced a model that must not be published (NaN loss, codebook collapse)."""


def sample_threshold(*, n_items: int, max_items: int) -> int:
    """Rows whose ``text_hash`` prefix (32 bits) is below this are in the fitting sample (``2**32``: all rows).

    A hash of the item's text, not its position, decides: the same catalog gives the same
    sample whatever the row order or partitioning, and it is about ``max_items`` rows.
    """
    if n_items <= max_items:
        return 1 << 32
    return int((max_items / n_items) * (1 << 32))


def load_shard(files: list[str], *, rank: int, world_size: int, threshold: int) -> np.ndarray:
    """This worker's training rows as one float32 matrix, read once from the embedding parts.

    Parts are dealt round-robin to workers (each reads only its own); with fewer parts than
    workers every worker reads all parts and keeps every ``world_size``-th row. Rows keep
    the parts' order (item_id), so the seeded shuffle, the model and the IDs are reproducible.
    """
    mine = files[rank::world_size] if len(files) >= world_size else files
    matrices = []
    for uri in mine:
        fs, path = storage.filesystem(uri)
        table = pq.read_table(path, filesystem=fs, columns=["text_hash", "vector"])
        if threshold < (1 << 32):
            prefix = np.array([int(h[:8], 16) for h in table["text_hash"].to_pylist()], dtype=np.int64)
            table = table.filter(pa.array(prefix < threshold))
        if table.num_rows:
            matrices.append(vectors_matrix(table))
    if not matrices:
        raise TrainingFailed(f"worker {rank} has no training rows ({len(mine)} embedding parts)")
    x = np.concatenate(matrices)
    return x[rank::world_size] if len(files) < world_size else x


def _train_loop(loop_config: dict[str, Any]) -> None:
    """The training job, the same in one Ray task (``in_train=False``) and in each Ray Train worker.

    Each worker loads its shard into memory once and iterates epochs from there (a seeded
    permutation per epoch): no per-epoch Ray Data pipeline. Rank 0 writes the model
    (safetensors + JSON) and the per-epoch history straight to the work prefix.
    Torch uses the CPUs the task holds (``threads``); training repeats bit-for-bit at a
    given thread count (``rqvae_core``'s backward has no scatter-add), so the model
    depends on the catalog, config, seed and cluster shape only.
    """
    torch.set_num_threads(loop_config["threads"])
    in_train = loop_config["in_train"]
    core = RQVAEConfig.from_dict(loop_config["model"])
    train = TrainConfig(**loop_config["train"])
    model = RQVAE(config=core)
    if in_train:  # Ray Train is imported only where it runs: a one-task fit's worker skips its ~1 s import
        import ray.train
        import ray.train.torch

        logging.getLogger("ray.train").setLevel(logging.WARNING)  # no line per report/checkpoint
        ctx = ray.train.get_context()
        rank, world = ctx.get_world_rank(), ctx.get_world_size()
        device = ray.train.torch.get_device()
        model = ray.train.torch.prepare_model(model)
    else:
        rank, world, device = 0, 1, torch.device(loop_config["device"])
        model = model.to(device)
    x = torch.from_numpy(load_shard(loop_config["files"], rank=rank, world_size=world, threshold=loop_config["threshold"]))
    n = len(x)
    if world > 1:  # DDP needs the same number of steps on every rank
        count = torch.tensor([n])
        torch.distributed.all_reduce(count, op=torch.distributed.ReduceOp.MIN)
        n = int(count.item())
    batch_size = max(1, min(train.batch_size, n))
    steps = math.ceil(n / batch_size)

    def epoch_batches(epoch: int):
        perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(core.seed * 1_000_003 + epoch * world + rank))[:n]
        for start in range(0, n, batch_size):
            yield x[perm[start : start + batch_size]].to(device)

    history: list[dict[str, Any]] = []

    def report(metrics: EpochMetrics) -> None:
        history.append(metrics.to_dict())
        if rank == 0:  # one progress line per epoch, forwarded to the driver's log
            scored = "" if metrics.eval_recon is None else f" eval recon {metrics.eval_recon:.5f}"
            progress.worker_line(f"fit epoch {metrics.epoch + 1}/{train.epochs}: recon {metrics.recon:.5f}{scored} loss {metrics.loss:.5f} "
                                 f"code usage {[round(u, 3) for u in metrics.code_usage]}")
            progress.worker_report("fit", metrics.epoch + 1, train.epochs, unit="epochs")
        if in_train:
            ray.train.report({"epoch": metrics.epoch, "recon": metrics.recon, "code_usage_min": min(metrics.code_usage)})

    # codebooks from residual k-means of the whole in-memory shard, not of the first batch
    result = fit(model=model, train=train, epoch_batches=epoch_batches, steps_per_epoch=steps, device=device, on_epoch_end=report, init_data=x.to(device))
    history[result.kept_epoch]["kept"] = True  # the epoch whose weights are saved (the best eval recon)
    # One checkpoint at the end (early stop and NaN included), with the history that explains it.
    if rank == 0:
        with tempfile.TemporaryDirectory() as d:
            save_checkpoint(getattr(model, "module", model), d)
            Path(d, HISTORY).write_text(json.dumps(history))
            for name in ("model.safetensors", "config.json"):
                storage.write_bytes(storage.join(loop_config["model_uri"], name), Path(d, name).read_bytes())
            storage.write_json(loop_config["history_uri"], history)
            if in_train:
                ray.train.report({"epoch": history[-1]["epoch"], "final": True}, checkpoint=ray.train.Checkpoint.from_directory(d))
    elif in_train:
        ray.train.report({"epoch": history[-1]["epoch"], "final": True})


def read_vectors(embeddings_uri: str) -> "ray.data.Dataset":
    import ray.data

    files = storage.list_parquet(embeddings_uri)
    if not files:
        raise FileNotFoundError(f"no embeddings under {embeddings_uri}")
    fs, _ = storage.filesystem(embeddings_uri)
    paths = [storage.filesystem(f)[1] for f in files]
    return ray.data.read_parquet(paths, filesystem=fs if storage.is_s3(embeddings_uri) else None, columns=["item_id", "text_hash", "vector"])


def kept_epoch(history: list[dict[str, Any]]) -> dict[str, Any]:
    """The history row of the epoch whose weights were saved (marked ``kept``; the last in older histories)."""
    return next((row for row in history if row.get("kept")), history[-1])


def check_health(history: list[dict[str, Any]], *, codebook_size: int, n_items: int, min_code_usage: float) -> None:
    """Fail before publishing when the loss went non-finite or the saved epoch's levels collapsed."""
    if not history:
        raise TrainingFailed("training reported no epochs")
    last = history[-1]
    if last.get("nonfinite") or not all(math.isfinite(float(last[k])) for k in ("loss", "recon")):
        raise TrainingFailed(f"non-finite loss at epoch {last['epoch']}: loss={last['loss']} recon={last['recon']} codebook={last['codebook']} commitment={last['commitment']}")
    kept = kept_epoch(history)
    reachable = min(codebook_size, n_items) / codebook_size  # a tiny catalog cannot use every code
    floor = min_code_usage * reachable
    usage = [float(u) for u in kept["code_usage"]]
    if min(usage) < floor:
        raise TrainingFailed(
            f"codebook collapse: code usage per level {[round(u, 4) for u in usage]} at epoch {kept['epoch']} is below the floor "
            f"{floor:.4f} (fit.min_code_usage={min_code_usage} × reachable share {reachable:.3f}); recon={kept['recon']:.5f}"
        )


def fit_model(*, embeddings_uri: str, embeddings_hash: str, n_items: int, dim: int, work_uri: str, config: PipelineConfig) -> FitResult:
    core = config.model.to_core(input_dim=dim, seed=config.seed)
    input_hash = hash_of("fit", embeddings_hash, core.to_dict(), config.fit.model_dump())
    return run_stage(
        work_uri=work_uri, result_type=FitResult, input_hash=input_hash,
        build=lambda: _fit(embeddings_uri=embeddings_uri, n_items=n_items, core=core, work_uri=work_uri, config=config),
    )


def _fit(*, embeddings_uri: str, n_items: int, core: RQVAEConfig, work_uri: str, config: PipelineConfig) -> FitResult:
    out_dir = stage_dir(work_uri, "fit")
    files = storage.list_parquet(embeddings_uri)
    if not files:
        raise FileNotFoundError(f"no embeddings under {embeddings_uri}")
    # "auto" reads the cluster's live resources: set fit.use_gpu=true to make an autoscaler start GPU workers.
    use_gpu = bool(ray.cluster_resources().get("GPU", 0)) if config.fit.use_gpu == "auto" else bool(config.fit.use_gpu)
    workers = config.fit.num_workers
    n_fit = min(n_items, config.fit.max_items)
    model_uri, history_uri = storage.join(out_dir, MODEL_DIR), storage.join(out_dir, HISTORY)
    storage.remove(model_uri)
    loop_config = {
        "model": core.to_dict(),
        "files": files,
        "threshold": sample_threshold(n_items=n_items, max_items=config.fit.max_items),
        "train": config.fit.to_core().to_dict(),
        "model_uri": model_uri,
        "history_uri": history_uri,
        "device": "cuda" if use_gpu else "cpu",
    }
    single = workers == 1 and n_fit <= config.fit.single_task_max_items
    if single:
        # One Ray task: no Train controller, worker group or process group to start (most of a small fit's time).
        # On CPU it holds a node's CPUs as torch threads: 1.6x faster on 2 cores than one thread (Beauty).
        threads = 1 if use_gpu else cpu_threads_per_worker(1)
        run = ray.remote(_train_loop).options(num_cpus=threads, num_gpus=1 if use_gpu else 0, max_retries=0)
        ray.get(run.remote({**loop_config, "in_train": False, "threads": threads}))
    else:
        from ray.train import RunConfig, ScalingConfig
        from ray.train.torch import TorchTrainer

        cpus = ray.cluster_resources().get("CPU", 1)
        cpu_per_worker = max(0.25, min(1.0, cpus / workers))
        fs, path = storage.arrow_filesystem(storage.join(out_dir, "_train"))
        trainer = TorchTrainer(
            _train_loop,
            train_loop_config={**loop_config, "in_train": True, "threads": 1},
            scaling_config=ScalingConfig(num_workers=workers, use_gpu=use_gpu, resources_per_worker={"CPU": cpu_per_worker, **({"GPU": 1} if use_gpu else {})}),
            run_config=RunConfig(name="rqvae", storage_path=path, storage_filesystem=fs),
        )
        result = trainer.fit()
        if result.checkpoint is None:
            raise TrainingFailed("training finished without a checkpoint")
    history = storage.read_json(history_uri)
    check_health(history, codebook_size=core.codebook_size, n_items=n_fit, min_code_usage=config.fit.min_code_usage)
    load_model(model_uri)  # refuse to publish a checkpoint that does not load
    return FitResult(
        model=model_uri,
        model_hash=hashlib.sha256(storage.read_bytes(storage.join(model_uri, "model.safetensors"))).hexdigest(),
        history=history_uri,
        items=n_items,
        fit_items=n_fit,
        epochs_run=len(history),
        final=kept_epoch(history),
        use_gpu=use_gpu,
        num_workers=workers,
        runner="task" if single else "ray_train",
        batch_size=min(config.fit.batch_size, max(1, n_fit // workers)),
        stopped_early=len(history) < config.fit.epochs,
    )


def reuse_model(*, prior_model_uri: str, work_uri: str, dim: int) -> FitResult:
    """Stable IDs: take a prior run's model frozen instead of refitting."""
    model_uri = storage.join(stage_dir(work_uri, "fit"), MODEL_DIR)
    weights = storage.read_bytes(storage.join(prior_model_uri, "model.safetensors"))
    config = storage.read_json(storage.join(prior_model_uri, "config.json"))
    if config["input_dim"] != dim:
        raise BadInput(f"prior model expects {config['input_dim']}-d embeddings but this run produced {dim}-d; retrain instead")
    input_hash = hash_of("reuse", prior_model_uri, hashlib.sha256(weights).hexdigest())

    def build() -> FitResult:
        storage.write_bytes(storage.join(model_uri, "model.safetensors"), weights)
        storage.write_json(storage.join(model_uri, "config.json"), config)
        return FitResult(model=model_uri, model_hash=input_hash, reused_from=prior_model_uri)

    return run_stage(work_uri=work_uri, result_type=FitResult, input_hash=input_hash, build=build)


def load_model(model_uri: str) -> RQVAE:
    """Load a model from a local or S3 ``model/`` folder (safetensors + JSON, no pickle)."""
    if not storage.is_s3(model_uri):
        return load_checkpoint(model_uri)
    with tempfile.TemporaryDirectory() as d:
        for name in ("model.safetensors", "config.json"):
            Path(d, name).write_bytes(storage.read_bytes(storage.join(model_uri, name)))
        return load_checkpoint(d)
