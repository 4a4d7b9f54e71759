"""The product's main job as one Prefect flow: ingest → embed → [collab] → fit → assign → export.

The flow only wires: each task calls one stage function in ``tasks/`` and
passes small manifests along. Ray runs in-process (local) unless
``RAY_ADDRESS`` is set; Prefect uses its ephemeral API unless
``PREFECT_API_URL`` is set.
"""

from __future__ import annotations

import re
from pathlib import PurePosixPath
from typing import Any, TypeVar

from prefect import flow, get_run_logger, task

from flows.ops import expand_env, flow_timeout_seconds, publish_summary_artifact, run_name, slot_run_id

from rqvae_core.ids import check_capacity

from tasks import progress, storage
from tasks.assign import assign
from tasks.chain import (
    PriorRunError,
    check_embedding,
    check_gates,
    embedding_identity,
    gate_numbers,
    latest_published,
    model_version,
    prior_model_shape,
    read_manifest,
    retired_count,
    write_latest_pointer,
)
from tasks.collab import collab, collab_identity
from tasks.config import PipelineConfig
from tasks.embed import embed, model_identity, provided_vectors
from tasks.errors import BadInput, is_bad_input
from tasks.export import export, is_published
from tasks.fit import fit_model, reuse_model
from tasks.ingest import ingest
from tasks.locks import catalog_exclusion
from tasks.manifest import AssignResult, CollabResult, EmbedResult, FitResult, IngestResult, StageResult, Stopwatch
from tasks.ray_runtime import ray_session

SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class RunSpecError(BadInput):
    """A run name, run id or output location that cannot be used safely."""


def default_name(catalog: str) -> str:
    stem = PurePosixPath(catalog.rstrip("/")).name.split(".")[0]
    return re.sub(r"[^A-Za-z0-9._-]", "_", stem).lstrip("._-") or "catalog"


def check_safe(kind: str, value: str) -> str:
    """Names become path segments: refuse anything that could leave the output prefix."""
    if not SAFE_NAME.match(value) or value in {".", ".."} or ".." in value:
        raise RunSpecError(f"{kind} {value!r} is not allowed: use letters, digits, '.', '_' and '-' only (no '/', no '..')")
    return value


def _retry_unless_bad_input(task, task_run, state) -> bool:
    """Retry transient failures (a lost Ray worker, S3 hiccups); bad input fails at once."""
    try:
        state.result()
    except Exception as exc:  # noqa: BLE001 - the decision is the point
        return not is_bad_input(exc)
    return False


R = TypeVar("R", bound=StageResult)


def _log_stage(m: R) -> R:
    get_run_logger().info("%s %s in %.1fs: %s", m.stage, "resumed" if m.resumed else "done", m.seconds, m.summary())
    progress.stage_done(m)
    return m


@task(name="ingest", retries=1, retry_delay_seconds=2, retry_condition_fn=_retry_unless_bad_input)
def ingest_task(catalog: str, work: str, config: PipelineConfig) -> IngestResult:
    return _log_stage(ingest(catalog_uri=catalog, work_uri=work, config=config.ingest))


@task(name="gates", retries=1, retry_delay_seconds=2, retry_condition_fn=_retry_unless_bad_input)
def gates_task(items: IngestResult, prior_run: str | None, config: PipelineConfig, force: bool) -> dict[str, Any]:
    numbers = gate_numbers(items_uri=items.items, n_input=items.input, n_quarantined=items.quarantined, prior_run=prior_run)
    record = check_gates(numbers, config.gates, force=force)
    if record["forced"]:
        get_run_logger().warning("publish gates tripped but --force given: %s", "; ".join(record["tripped"]))
    return record


@task(name="embed", retries=2, retry_delay_seconds=5, retry_condition_fn=_retry_unless_bad_input)
def embed_task(items: IngestResult, work: str, cache: str, config: PipelineConfig) -> EmbedResult:
    if items.vectors is not None:  # --embedding-column: the catalog brought its own vectors
        return _log_stage(provided_vectors(items=items, work_uri=work))
    return _log_stage(embed(items_uri=items.items, work_uri=work, cache_uri=cache, config=config.embed))


@task(name="collab", retries=2, retry_delay_seconds=5, retry_condition_fn=_retry_unless_bad_input)
def collab_task(embedded: EmbedResult, interactions: str, interactions_sha256: str, work: str, config: PipelineConfig) -> CollabResult:
    return _log_stage(collab(embeddings_uri=embedded.embeddings, embeddings_hash=embedded.input_hash, interactions=interactions,
                             interactions_sha256=interactions_sha256, work_uri=work, config=config.collab, seed=config.seed))


@task(name="fit", retries=0)
def fit_task(embedded: EmbedResult | CollabResult, work: str, config: PipelineConfig, prior_run: str | None, retrain: bool) -> FitResult:
    if prior_run and not retrain:
        return _log_stage(reuse_model(prior_model_uri=storage.join(prior_run, "model"), work_uri=work, dim=embedded.dim))
    return _log_stage(fit_model(embeddings_uri=embedded.embeddings, embeddings_hash=embedded.input_hash, n_items=embedded.items, dim=embedded.dim, work_uri=work, config=config))


@task(name="assign", retries=2, retry_delay_seconds=5, retry_condition_fn=_retry_unless_bad_input)
def assign_task(embedded: EmbedResult | CollabResult, fitted: FitResult, work: str, config: PipelineConfig, prior_run: str | None, retrain: bool) -> AssignResult:
    return _log_stage(assign(
        embeddings_uri=embedded.embeddings, embeddings_hash=embedded.input_hash, model_uri=fitted.model,
        model_hash=fitted.model_hash, work_uri=work, config=config, prior_run=prior_run, retrain=retrain,
    ))


@task(name="export", retries=2, retry_delay_seconds=5, retry_condition_fn=_retry_unless_bad_input)
def export_task(prefix: str, items: IngestResult, embedded: EmbedResult, fitted: FitResult, assigned: AssignResult, run: dict[str, Any],
                collabed: CollabResult | None = None) -> dict[str, Any]:
    clock = Stopwatch()
    manifest = export(prefix=prefix, ingest=items, embed=embedded, collab=collabed, fit=fitted, assign=assigned, run=run)
    get_run_logger().info("published %s: %s", prefix, manifest["counts"])
    progress.finished("export", done=manifest["counts"]["ided"], seconds=clock.seconds, note="published")
    return manifest


def _run_name() -> str:
    return run_name(default_name)


@flow(name="retokenize", log_prints=True, flow_run_name=_run_name, timeout_seconds=flow_timeout_seconds())
def retokenize(
    catalog: str,
    out: str,
    name: str | None = None,
    run_id: str | None = None,
    config: PipelineConfig = PipelineConfig(),
    prior_run: str | None = None,
    retrain: bool = False,
    reembed: bool = False,
    retrain_on_drift: bool = False,
    force: bool = False,
    interactions: str | None = None,
) -> dict[str, Any]:
    """Tokenize one catalog into semantic IDs under ``<out>/<name>/<run_id>/``.

    ``interactions``: user sequences whose co-occurrences are fused with the text
    vectors before fitting (tasks/collab.py), so IDs also follow what users consume together.

    ``prior_run``: a published run prefix whose model is reused frozen and whose
    IDs are kept for unchanged items (stable nightly re-tokenization), or
    ``"latest"`` for the most recently published run of this catalog (none: fit anew).
    ``retrain``: with a prior run, fit a new model anyway (a new model version); every
    ID moves to the new model's space, ``changes/`` holds the old→new map, and no ID
    the lineage ever issued (the prior run's, the retired ones) is issued again.
    ``reembed``: the embedder changed on purpose (another model, weights or precision
    than the prior run's): embed every item with the configured one and retrain as above.
    Without it such a prior run is refused.
    ``retrain_on_drift``: retrain when the frozen prior model is flagged as drifted.
    ``force``: publish even when the publish gates trip (recorded in the manifest).
    ``run_id``: default, the flow run's scheduled start time (UTC), so a retry of a
    scheduled night resumes that night's run. ``catalog``, ``out`` and ``name`` may
    hold ``${VAR}``, read from the flow run's environment when it starts.
    """
    catalog, out = expand_env(catalog, "catalog"), expand_env(out, "out")
    name = check_safe("catalog name", expand_env(name, "name") or default_name(catalog))
    catalog, interactions = storage.absolute(catalog), storage.absolute(interactions) if interactions else None
    run_id = check_safe("run id", run_id or slot_run_id())
    logger = get_run_logger()
    catalog_prefix = storage.join(out, name)
    prefix = storage.join(catalog_prefix, run_id)
    with catalog_exclusion(catalog_prefix, wait_seconds=config.lock_wait_seconds):
        if is_published(prefix):
            write_latest_pointer(catalog_prefix)  # repairs a pointer that a crash after _SUCCESS left stale
            logger.info("%s is already published; runs are immutable, nothing to do", prefix)
            return {"prefix": prefix, "counts": storage.read_json(storage.join(prefix, "manifest.json"))["counts"], "skipped": True}
        if prior_run == "latest":
            prior_run = latest_published(catalog_prefix, exclude=run_id)
            logger.info("prior run: %s", prior_run or "none published yet; fitting a new model")
        elif prior_run and not is_published(prior_run):
            raise PriorRunError(f"prior run {prior_run} has no _SUCCESS; only finished runs can seed stable IDs")
        result = _run_stages(catalog=catalog, out=out, name=name, run_id=run_id, prefix=prefix, config=config, prior_run=prior_run,
                             retrain=retrain, reembed=reembed, retrain_on_drift=retrain_on_drift, force=force, interactions=interactions)
        write_latest_pointer(catalog_prefix)
    publish_summary_artifact(prefix)
    return result


def _run_stages(*, catalog: str, out: str, name: str, run_id: str, prefix: str, config: PipelineConfig, prior_run: str | None,
                retrain: bool, reembed: bool, retrain_on_drift: bool, force: bool, interactions: str | None) -> dict[str, Any]:
    logger = get_run_logger()
    work = storage.join(out, name, "_work", run_id)
    cache = storage.join(out, "_cache", "embeddings")
    prior = read_manifest(prior_run) if prior_run else None
    retrain = bool(prior_run and (retrain or reembed))
    fused = collab_identity(interactions, config.collab) if interactions else {}
    if prior and not reembed and not config.ingest.embedding_column:  # the weights are known before embedding: refuse another embedder at once
        check_embedding(prior, {"model": config.embed.model, "weights": {**model_identity(config.embed.model), **fused}}, reembed=False, keys=("weights",))
    items = ingest_task(catalog, work, config)  # polars only: bad input fails before Ray starts
    with ray_session():
        gates = gates_task(items, prior_run, config, force)  # compares the item tables in a Ray worker
        # A catalog that cannot fit the ID space fails here, before any embedding or fitting. A reused
        # model's own L and K count, and so do the IDs the lineage may never issue again.
        if prior_run and not retrain:
            (n_levels, codebook_size), taken = prior_model_shape(prior_run), retired_count(prior_run)
        else:
            n_levels, codebook_size = config.model.n_levels, config.model.codebook_size
            taken = retired_count(prior_run) + prior["counts"]["ided"] if prior else 0
        check_capacity(n_items=items.valid + taken, n_levels=n_levels, codebook_size=codebook_size)
        embedded = embed_task(items, work, cache, config)
        collabed = collab_task(embedded, interactions, fused["interactions_sha256"], work, config) if interactions else None
        vectors = collabed or embedded  # what the model is fitted on and encodes
        embedding = embedding_identity(embedded.model_dump(), embedding_column=config.ingest.embedding_column, fused=fused, dim=vectors.dim)
        reembedded = check_embedding(prior, embedding, reembed=reembed) if prior else False
        fitted = fit_task(vectors, work, config, prior_run, retrain)
        assigned = assign_task(vectors, fitted, work, config, prior_run, retrain)
        drift = assigned.drift
        retrain_reason = ("reembed" if reembed else "explicit") if retrain else None
        if drift and drift["flagged"]:
            logger.warning("drift: %s%s", drift["reason"], "; retraining (--retrain-on-drift)" if retrain_on_drift else "")
            if retrain_on_drift:
                retrain, retrain_reason = True, "drift"
                fitted = fit_task(vectors, work, config, prior_run, retrain)
                assigned = assign_task(vectors, fitted, work, config, prior_run, retrain)
        chain = {
            "embedding": embedding,
            "model_version": model_version(prior, retrained=retrain),
            "retrain_reason": retrain_reason,
            "reembedded": reembedded,
            "gates": gates,
            "forced": gates["forced"],
            "drift": drift,
            **({"remap": "changes/"} if retrain else {}),
        }
        run = {"catalog": catalog, "name": name, "run_id": run_id, "config": config.model_dump(), "prior_run": prior_run, "retrain": retrain, "chain": chain}
        manifest = export_task(prefix, items, embedded, fitted, assigned, run, collabed)
    storage.remove(work)
    storage.remove_if_empty(storage.join(out, name, "_work"))
    return {"prefix": prefix, "counts": manifest["counts"], "skipped": False}
