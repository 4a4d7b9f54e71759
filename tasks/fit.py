"""Fit the RQ-VAE with Ray Train: ``TorchTrainer`` workers drive ``rqvae_core.fit`` on their shard.

The driver only wires Ray: the training maths live in rqvae_core and run the
same in one process. Rank 0 saves the checkpoint (safetensors + JSON) through
``ray.train.report``; the driver copies it to ``<work>/fit/model/``.
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
import ray
import ray.data
import ray.train
import torch
from ray.train import Checkpoint, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from rqvae_core import RQVAE, RQVAEConfig, fit, load_checkpoint, save_checkpoint
from rqvae_core.train import EpochMetrics
from tasks import storage
from tasks.config import PipelineConfig
from tasks.manifest import FitResult, hash_of, run_stage, stage_dir

MODEL_DIR = "model"
HISTORY = "history.json"


class TrainingFailed(RuntimeError):
    """Training produced a model that must not be published (NaN loss, codebook collapse)."""


def _train_loop(loop_config: dict[str, Any]) -> None:
    """Runs inside each Ray Train worker."""
    torch.set_num_threads(1)
    logging.getLogger("ray.train").setLevel(logging.WARNING)  # no line per report/checkpoint
    core = RQVAEConfig.from_dict(loop_config["model"])
    model = RQVAE(config=core)
    device = ray.train.torch.get_device()
    model = ray.train.torch.prepare_model(model)
    shard = ray.train.get_dataset_shard("train")
    ctx = ray.train.get_context()
    batch_size = loop_config["batch_size"]

    def epoch_batches(epoch: int):
        for batch in shard.iter_torch_batches(batch_size=batch_size, dtypes=torch.float32, device=device, local_shuffle_buffer_size=4 * batch_size, local_shuffle_seed=core.seed + epoch):
            yield batch["vector"]

    history: list[dict[str, Any]] = []

    def report(metrics: EpochMetrics) -> None:
        history.append(metrics.to_dict())
        if ctx.get_world_rank() == 0:  # one progress line per epoch, forwarded to the driver's log
            print(f"fit epoch {metrics.epoch + 1}/{loop_config['epochs']}: recon {metrics.recon:.5f} loss {metrics.loss:.5f} "
                  f"code usage {[round(u, 3) for u in metrics.code_usage]}", flush=True)
        ray.train.report({"epoch": metrics.epoch, "recon": metrics.recon, "code_usage_min": min(metrics.code_usage)})

    fit(
        model=model,
        config=core,
        epoch_batches=epoch_batches,
        epochs=loop_config["epochs"],
        steps_per_epoch=loop_config["steps_per_epoch"],
        device=device,
        on_epoch_end=report,
        early_stop_patience=loop_config["early_stop_patience"],
        early_stop_min_delta=loop_config["early_stop_min_delta"],
    )
    # One checkpoint at the end (early stop and NaN included), with the history that explains it.
    if ctx.get_world_rank() == 0:
        with tempfile.TemporaryDirectory() as d:
            save_checkpoint(getattr(model, "module", model), d)
            Path(d, HISTORY).write_text(json.dumps(history))
            ray.train.report({"epoch": history[-1]["epoch"], "final": True}, checkpoint=Checkpoint.from_directory(d))
    else:
        ray.train.report({"epoch": history[-1]["epoch"], "final": True})


def _to_matrix(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Fixed-size-list column → one (B, D) float32 matrix (what iter_torch_batches wants)."""
    v = batch["vector"]
    matrix = np.stack(v).astype(np.float32, copy=False) if v.dtype == object else v.astype(np.float32, copy=False)
    return {"vector": matrix}


def read_vectors(embeddings_uri: str) -> ray.data.Dataset:
    files = storage.list_parquet(embeddings_uri)
    if not files:
        raise FileNotFoundError(f"no embeddings under {embeddings_uri}")
    fs, _ = storage.filesystem(embeddings_uri)
    paths = [storage.filesystem(f)[1] for f in files]
    return ray.data.read_parquet(paths, filesystem=fs if storage.is_s3(embeddings_uri) else None, columns=["item_id", "text_hash", "vector"])


def training_dataset(embeddings_uri: str) -> ray.data.Dataset:
    """The training rows in the order of the embedding parts (item_id order), whatever order Ray's tasks finish in.

    Without ``preserve_order``, several part files (catalogs over 50k items) are read by
    parallel tasks whose blocks land in completion order, so the shuffle buffer and hence
    the fitted model (and the IDs) would change from run to run.
    """
    dataset = read_vectors(embeddings_uri)
    dataset.context.execution_options.preserve_order = True  # this dataset's own copy of the DataContext
    # materialised once: every epoch then streams from the object store instead of re-reading Parquet
    return dataset.map_batches(_to_matrix, batch_format="numpy").materialize()


def ingest_options() -> ray.data.ExecutionOptions:
    """Ray Train's default ingest options, with the block order kept (see ``training_dataset``)."""
    current = ray.data.DataContext.get_current().execution_options
    return ray.data.ExecutionOptions(resource_limits=current.resource_limits, preserve_order=True, verbose_progress=current.verbose_progress)


def check_health(history: list[dict[str, Any]], *, codebook_size: int, n_items: int, min_code_usage: float) -> None:
    """Fail before publishing when the loss went non-finite or a level collapsed."""
    if not history:
        raise TrainingFailed("training reported no epochs")
    last = history[-1]
    if last.get("nonfinite") or not all(math.isfinite(float(last[k])) for k in ("loss", "recon")):
        raise TrainingFailed(f"non-finite loss at epoch {last['epoch']}: loss={last['loss']} recon={last['recon']} codebook={last['codebook']} commitment={last['commitment']}")
    reachable = min(codebook_size, n_items) / codebook_size  # a tiny catalog cannot use every code
    floor = min_code_usage * reachable
    usage = [float(u) for u in last["code_usage"]]
    if min(usage) < floor:
        raise TrainingFailed(
            f"codebook collapse: code usage per level {[round(u, 4) for u in usage]} is below the floor "
            f"{floor:.4f} (fit.min_code_usage={min_code_usage} × reachable share {reachable:.3f}); recon={last['recon']:.5f}"
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
    use_gpu = bool(ray.cluster_resources().get("GPU", 0)) if config.fit.use_gpu == "auto" else bool(config.fit.use_gpu)
    workers = config.fit.num_workers
    per_worker = max(1, n_items // workers)
    batch_size = min(config.fit.batch_size, per_worker)
    # Leave a CPU for Ray Data feeding the shards, or the trainer waits forever (STACK.md).
    cpus = ray.cluster_resources().get("CPU", 1)
    cpu_per_worker = max(0.25, min(1.0, (cpus - 1) / workers)) if cpus > 1 else 0.5
    dataset = training_dataset(embeddings_uri)
    with tempfile.TemporaryDirectory(prefix="semid-train-") as storage_path:
        trainer = TorchTrainer(
            _train_loop,
            train_loop_config={
                "model": core.to_dict(),
                "batch_size": batch_size,
                "epochs": config.fit.epochs,
                "steps_per_epoch": math.ceil(per_worker / batch_size),
                "early_stop_patience": config.fit.early_stop_patience,
                "early_stop_min_delta": config.fit.early_stop_min_delta,
            },
            scaling_config=ScalingConfig(num_workers=workers, use_gpu=use_gpu, resources_per_worker={"CPU": cpu_per_worker, **({"GPU": 1} if use_gpu else {})}),
            datasets={"train": dataset},
            dataset_config=ray.train.DataConfig(execution_options=ingest_options()),
            run_config=RunConfig(name="rqvae", storage_path=storage_path),
        )
        result = trainer.fit()
        if result.checkpoint is None:
            raise TrainingFailed("training finished without a checkpoint")
        with result.checkpoint.as_directory() as ckpt:
            history = json.loads(Path(ckpt, HISTORY).read_text())
            check_health(history, codebook_size=core.codebook_size, n_items=n_items, min_code_usage=config.fit.min_code_usage)
            load_checkpoint(ckpt)  # refuse to publish a checkpoint that does not load
            model_uri = storage.join(out_dir, MODEL_DIR)
            storage.remove(model_uri)
            for name in ("model.safetensors", "config.json"):
                storage.write_bytes(storage.join(model_uri, name), Path(ckpt, name).read_bytes())
    storage.write_json(storage.join(out_dir, "history.json"), history)
    return FitResult(
        model=model_uri,
        model_hash=hashlib.sha256(storage.read_bytes(storage.join(model_uri, "model.safetensors"))).hexdigest(),
        history=storage.join(out_dir, "history.json"),
        items=n_items,
        epochs_run=len(history),
        final=history[-1],
        use_gpu=use_gpu,
        num_workers=workers,
        batch_size=batch_size,
        stopped_early=len(history) < config.fit.epochs,
    )


def reuse_model(*, prior_model_uri: str, work_uri: str, dim: int) -> FitResult:
    """Stable IDs: take a prior run's model frozen instead of refitting."""
    model_uri = storage.join(stage_dir(work_uri, "fit"), MODEL_DIR)
    weights = storage.read_bytes(storage.join(prior_model_uri, "model.safetensors"))
    config = storage.read_json(storage.join(prior_model_uri, "config.json"))
    if config["input_dim"] != dim:
        raise ValueError(f"prior model expects {config['input_dim']}-d embeddings but this run produced {dim}-d; retrain instead")
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
