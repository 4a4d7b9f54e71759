"""Typed stage results, and the one runner that resumes, times and records every stage.

A stage writes its outputs under ``<work>/<stage>/`` and then, last,
``<work>/<stage>/_stage.json`` (the stage's result, as JSON). A re-run of the
same run id whose input hash matches finds that record and skips the stage;
anything without the record is treated as absent and rebuilt. ``run_stage`` is
the only place that implements this, so every stage resumes the same way.

Each stage returns its own result type (fields, not ``dict`` entries read by key
in other modules): what it produced (URIs), counts and hashes, never the data.
"""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any, Callable, ClassVar, Literal, TypeVar

from pydantic import BaseModel, ConfigDict

from tasks import storage

STAGE_RECORD = "_stage.json"


class StageResult(BaseModel):
    """Fields every stage result has; ``run_stage`` fills them in."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    stage: ClassVar[str]
    input_hash: str = ""
    """Hash of everything the stage's output depends on (inputs' hashes + config)."""
    seconds: float = 0.0
    resumed: bool = False

    def summary(self) -> dict[str, int]:
        """The integer fields (counts), for one log line per stage."""
        return {k: v for k, v in self.model_dump().items() if isinstance(v, int) and not isinstance(v, bool)}


class IngestResult(StageResult):
    stage: ClassVar[str] = "ingest"
    items: str
    """Prefix of the valid items' parts (``part-<partition>.parquet``: item_id, text, text_hash; sorted by item_id within a part)."""
    quarantine: str
    """Prefix of the quarantined rows (one part, in input order)."""
    input: int
    valid: int
    quarantined: int
    catalog_uri: str
    catalog_sha256: str
    columns: list[str]
    id_column: str
    text_columns: list[str]
    format: str
    quarantine_reasons: dict[str, int]
    text_hash: str
    """How ``text_hash`` is computed (documentation carried into the manifest)."""
    vectors: str | None = None
    """With ``ingest.embedding_column``: the items' own vectors, in the embed stage's layout."""
    dim: int | None = None
    partitions: int = 1
    """Ingest partitions (item_id hash buckets) the catalog was validated and de-duplicated in."""


class EmbedResult(StageResult):
    stage: ClassVar[str] = "embed"
    embeddings: str
    cache: str | None = None
    items: int
    unique_texts: int
    embedded: int
    cache_hits: int
    dim: int
    model: str
    model_identity: dict[str, str]
    device: str
    fp16: bool
    num_actors: int
    """Embedding actors in the pool (0: the stage ran as one task)."""
    runner: Literal["task", "ray_data"] = "ray_data"
    """``task``: the whole stage in one Ray task (small one-bucket catalogs); ``ray_data``: a task per step, an actor pool embeds."""
    parts: int
    embed_seconds: float
    items_per_s: float


class CollabResult(StageResult):
    """Text vectors fused with collaborative ones (``--interactions``): what fit and assign read instead of embed's."""

    stage: ClassVar[str] = "collab"
    embeddings: str
    items: int
    dim: int
    text_dim: int
    cf_dim: int
    interactions: str
    interactions_sha256: str
    weight: float
    window: int
    holdout_last: int
    users: int
    interactions_used: int
    items_with_interactions: int
    cold_items: int
    unknown_items: int
    unknown_interactions: int


class FitResult(StageResult):
    stage: ClassVar[str] = "fit"
    model: str
    model_hash: str
    history: str | None = None
    """URI of the per-epoch history (absent when the model was reused)."""
    reused_from: str | None = None
    items: int = 0
    fit_items: int = 0
    """Items the model was fitted on (a hash sample above ``fit.max_items``)."""
    epochs_run: int = 0
    final: dict[str, Any] | None = None
    """History row of the epoch whose weights were saved (the best eval-mode recon, see ``rqvae_core.train.fit``)."""
    use_gpu: bool = False
    num_workers: int = 0
    runner: str = ""
    """``task`` (one Ray task) or ``ray_train`` (TorchTrainer workers)."""
    batch_size: int = 0
    stopped_early: bool = False


class AssignResult(StageResult):
    stage: ClassVar[str] = "assign"
    semantic_ids: str
    quality: str
    changes: str | None = None
    retired: str | None = None
    ided: int
    removed: int | None = None
    device: str
    n_moved: int
    unique_tuple_rate: float
    ids_hash: str
    n_retired: int = 0
    """IDs this lineage may never issue again (carried across retrains)."""
    drift: dict[str, Any] | None = None
    """Stable runs: how well the frozen prior model serves new/changed items (tasks.drift)."""
    partitions: int = 1
    """Resolution partitions (by first-level code) the IDs were resolved in."""
    runner: Literal["task", "ray_data"] = "ray_data"
    """``task``: the whole stage in one Ray task (small one-partition catalogs); ``ray_data``: encoder actors, then a task per step."""


R = TypeVar("R", bound=StageResult)


def hash_of(*parts: Any) -> str:
    """A stable sha256 over JSON-serialisable parts (dict keys sorted)."""
    h = hashlib.sha256()
    for p in parts:
        h.update(json.dumps(p, sort_keys=True, default=str).encode())
        h.update(b"\x00")
    return h.hexdigest()


def stage_dir(work_uri: str, stage: str) -> str:
    return storage.join(work_uri, stage)


def _record(work_uri: str, stage: str) -> str:
    return storage.join(stage_dir(work_uri, stage), STAGE_RECORD)


def completed(work_uri: str, result_type: type[R], input_hash: str) -> R | None:
    """The stage's result if it finished before with the same input hash (and the same result schema), else None."""
    record = _record(work_uri, result_type.stage)
    if not storage.exists(record):
        return None
    try:
        result = result_type.model_validate(storage.read_json(record))
    except ValueError:  # a record from another version of the result type: rebuild
        return None
    if result.input_hash != input_hash:
        return None
    return result.model_copy(update={"resumed": True})


def run_stage(*, work_uri: str, result_type: type[R], input_hash: str, build: Callable[[], R]) -> R:
    """Resume ``result_type.stage`` if complete, else build it, time it and record it last.

    ``build`` writes the stage's outputs and returns its result; the stale record is
    removed before it runs, so a half-rewritten stage never looks complete.
    """
    done = completed(work_uri, result_type, input_hash)
    if done is not None:
        return done
    start = time.perf_counter()
    storage.remove(_record(work_uri, result_type.stage))
    result = build()
    result = result.model_copy(update={"input_hash": input_hash, "seconds": round(time.perf_counter() - start, 3), "resumed": False})
    storage.write_json(_record(work_uri, result_type.stage), result.model_dump(exclude={"resumed"}))
    return result


class Stopwatch:
    def __init__(self) -> None:
        self.start = time.perf_counter()

    @property
    def seconds(self) -> float:
        return round(time.perf_counter() - self.start, 3)
