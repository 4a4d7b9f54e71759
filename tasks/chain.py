"""The run chain of one catalog: which finished run is ``latest``, whether a prior run may seed
this one, and the publish gates that stop a broken upstream catalog from churning IDs.

* ``latest`` is the most recently *published* finished run: the order is the
  ``published_at`` time in each run's manifest, never the run id (a backfill id
  such as ``2026-12-05`` or an id with letters must not win by string order).
  After ``_SUCCESS`` the flow writes ``<out>/<catalog>/LATEST`` (a small JSON
  object, written atomically) for consumers; the scan of manifests is the
  authority and the fallback when the pointer is missing or stale.
* A prior run seeds a stable run only with the same embedding identity (model
  weights, precision, dimension): vectors from two embedders must never meet
  under one frozen model.
* The gates compare today's catalog with the prior run's items before anything
  is embedded or published.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import uuid
from typing import Any, NamedTuple

import pyarrow.compute as pc
import pyarrow.parquet as pq

from tasks import storage
from tasks.config import GatesConfig
from tasks.errors import BadInput
from tasks.export import is_published

LATEST = "LATEST"


class EmbeddingMismatch(BadInput):
    """The prior run's vectors come from another embedder (model, weights, precision or dimension)."""


class GatesTripped(BadInput):
    """Today's catalog differs from the prior run by more than the publish gates allow."""


class PriorRunError(BadInput):
    """The given prior run cannot seed this run (not finished, unreadable)."""


# --------------------------------------------------------------------------- latest


class PublishedRun(NamedTuple):
    run_id: str
    prefix: str
    published_at: dt.datetime
    prior_run: str | None


def _published_at(manifest: dict[str, Any]) -> dt.datetime:
    # runs published before ``published_at`` existed carry ``created_at`` (written at the same moment)
    stamp = manifest.get("published_at") or manifest.get("created_at") or "1970-01-01T00:00:00+00:00"
    value = dt.datetime.fromisoformat(stamp)
    return value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)


def run_ids(catalog_prefix: str) -> list[str]:
    """Every run folder of a catalog, finished or not (``_work``, ``LATEST``, ``.lock`` excluded)."""
    fs, path = storage.filesystem(catalog_prefix)
    if not fs.exists(path):
        return []
    names = [p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(path, detail=False)]
    return sorted(n for n in names if not n.startswith(("_", ".")) and n != LATEST and fs.isdir(f"{path}/{n}"))


def published_runs(catalog_prefix: str) -> list[PublishedRun]:
    """Finished runs of a catalog, oldest publication first (ties: run id)."""
    runs = []
    for run_id in run_ids(catalog_prefix):
        prefix = storage.join(catalog_prefix, run_id)
        if not is_published(prefix):
            continue
        manifest = storage.read_json(storage.join(prefix, "manifest.json"))
        runs.append(PublishedRun(run_id=run_id, prefix=prefix, published_at=_published_at(manifest), prior_run=manifest.get("prior_run")))
    return sorted(runs, key=lambda r: (r.published_at, r.run_id))


def latest_published(catalog_prefix: str, *, exclude: str | None = None) -> str | None:
    """The most recently published finished run of a catalog (the authoritative scan), or None."""
    runs = [r for r in published_runs(catalog_prefix) if r.run_id != exclude]
    return runs[-1].prefix if runs else None


def write_latest_pointer(catalog_prefix: str) -> str | None:
    """Point ``<catalog>/LATEST`` at the latest published run; called under the catalog lock after ``_SUCCESS``.

    Also repairs a pointer that a crash between ``_SUCCESS`` and this write left behind.
    """
    runs = published_runs(catalog_prefix)
    if not runs:
        return None
    last = runs[-1]
    pointer = {"run_id": last.run_id, "prefix": last.prefix, "published_at": last.published_at.isoformat()}
    if read_latest_pointer(catalog_prefix) != pointer:
        write_atomic(storage.join(catalog_prefix, LATEST), (json.dumps(pointer, sort_keys=True) + "\n").encode())
    return last.prefix


def read_latest_pointer(catalog_prefix: str) -> dict[str, Any] | None:
    uri = storage.join(catalog_prefix, LATEST)
    if not storage.exists(uri):
        return None
    try:
        return json.loads(storage.read_bytes(uri))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None


def resolve_latest(catalog_prefix: str) -> str | None:
    """For consumers: the ``LATEST`` pointer when it names a finished run, else the scan."""
    pointer = read_latest_pointer(catalog_prefix)
    if pointer and pointer.get("run_id"):
        prefix = storage.join(catalog_prefix, pointer["run_id"])
        if is_published(prefix):
            return prefix
    return latest_published(catalog_prefix)


def write_atomic(uri: str, data: bytes) -> None:
    """Readers see the old object or the new one, never a partial write (temp + rename locally, one PUT on S3)."""
    if storage.is_s3(uri):
        storage.write_bytes(uri, data)
        return
    tmp = f"{uri}.tmp-{uuid.uuid4().hex[:12]}"
    storage.write_bytes(tmp, data)
    os.replace(tmp, uri)


# --------------------------------------------------------------------------- the prior run


def read_manifest(prefix: str) -> dict[str, Any]:
    return storage.read_json(storage.join(prefix, "manifest.json"))


def embedding_identity(embed_info: dict[str, Any], *, embedding_column: str | None = None, fused: dict[str, str] | None = None,
                       dim: int | None = None) -> dict[str, Any]:
    """What a run's vectors depend on: model name (for messages), weights identity, precision, dimension.

    Vectors brought in a catalog column (``ingest.embedding_column``) come from the user's own
    encoder: their identity is the column's name and dimension (keeping that stable is theirs).
    ``fused`` (``--interactions``, :func:`tasks.collab.collab_identity`) joins the weights' identity,
    and ``dim`` is then the fused vectors' size.
    """
    dim = int(embed_info["dim"] if dim is None else dim)
    if embedding_column:
        return {"model": f"column {embedding_column}", "weights": {"embedding_column": embedding_column, **(fused or {})}, "precision": "provided", "dim": dim}
    return {
        "model": embed_info["model"],
        "weights": {**embed_info["model_identity"], **(fused or {})},
        "precision": "fp16" if embed_info.get("fp16") else "fp32",
        "dim": dim,
    }


def prior_embedding(manifest: dict[str, Any]) -> dict[str, Any]:
    if "embedding" in manifest:
        return manifest["embedding"]
    embed = manifest["stages"]["embed"]
    return embedding_identity(embed.get("info", embed))  # "info": runs published before typed stage results


def _describe(e: dict[str, Any], keys: tuple[str, ...]) -> str:
    weights = ", ".join(f"{k}={v}" for k, v in sorted(e["weights"].items()))
    extra = "".join(f", {e['precision']}" if k == "precision" else f", {e['dim']}-d" if k == "dim" else "" for k in keys)
    return f"{e['model']} ({weights}){extra}"


def embedding_mismatch(prior: dict[str, Any], current: dict[str, Any], *, keys: tuple[str, ...] = ("weights", "precision", "dim")) -> str | None:
    """A message naming both identities when they differ in ``keys``, else None.

    The model *name* is not compared: two names for the same weights are the same
    space. A local copy of the default model's weights has another identity form
    (its sha256 rather than the package version) and is refused too: re-embed.
    """
    differing = [k for k in keys if prior.get(k) != current.get(k)]
    if not differing:
        return None
    return (
        f"the prior run's embeddings come from {_describe(prior, keys)} but this run's from {_describe(current, keys)} "
        f"(differs in {', '.join(differing)}); the frozen prior model cannot serve another embedding space. "
        f"Pass --reembed to embed every item with the new embedder and retrain (retired IDs are kept, old→new map in changes/)"
    )


def check_embedding(prior_manifest: dict[str, Any], current: dict[str, Any], *, reembed: bool, keys: tuple[str, ...] = ("weights", "precision", "dim")) -> bool:
    """True when the embedders differ and ``reembed`` allows it; raises :class:`EmbeddingMismatch` otherwise."""
    message = embedding_mismatch(prior_embedding(prior_manifest), current, keys=keys)
    if message and not reembed:
        raise EmbeddingMismatch(message)
    return message is not None


def prior_model_shape(prior_run: str) -> tuple[int, int]:
    """(n_levels, codebook_size) of the prior run's model: a reused model's ID space, whatever the config says."""
    config = storage.read_json(storage.join(prior_run, "model", "config.json"))
    return int(config["n_levels"]), int(config["codebook_size"])


def retired_count(prior_run: str) -> int:
    files = storage.list_parquet(storage.join(prior_run, "retired"))
    return sum(pq.ParquetFile(storage.filesystem(f)[1], filesystem=storage.filesystem(f)[0]).metadata.num_rows for f in files)


def model_version(prior_manifest: dict[str, Any] | None, *, retrained: bool) -> int:
    """1 for a first run; the prior's for a stable run; the prior's + 1 for a retrain."""
    if prior_manifest is None:
        return 1
    return int(prior_manifest.get("model_version", 1)) + (1 if retrained else 0)


# --------------------------------------------------------------------------- gates


def gate_numbers(*, items_uri: str, n_input: int, n_quarantined: int, prior_run: str | None) -> dict[str, Any]:
    """Quarantined share of the input; removed and changed shares of the prior run's items.

    The item tables are compared in a Ray worker when Ray is up (the flow starts it before
    the gates), so a 100M-item catalog never passes through the driver; inline otherwise.
    """
    numbers: dict[str, Any] = {"input": n_input, "quarantined": n_quarantined, "quarantined_share": n_quarantined / max(n_input, 1)}
    if not prior_run:
        return numbers
    import ray

    from tasks.steps import in_tasks, inline

    run = in_tasks if ray.is_initialized() else inline
    (changes,) = run(_prior_changes, [dict(items_uri=items_uri, prior_run=prior_run)])
    n_prior = changes["prior_items"]
    numbers.update(changes, removed_share=changes["removed"] / max(n_prior, 1), changed_share=changes["changed"] / max(n_prior, 1))
    return numbers


def _prior_changes(*, items_uri: str, prior_run: str) -> dict[str, int]:
    """How many of the prior run's items are gone from today's items, and how many changed their text."""
    current = storage.read_parquet(items_uri).select(["item_id", "text_hash"])
    prior = storage.read_parquet(storage.join(prior_run, "semantic_ids")).select(["item_id", "text_hash"])
    idx = pc.index_in(prior["item_id"], value_set=current["item_id"])
    present = pc.is_valid(idx)
    n_prior = prior.num_rows
    removed = n_prior - pc.sum(present.cast("int64")).as_py() if n_prior else 0
    same_hash = pc.equal(prior["text_hash"], current["text_hash"].take(idx))
    changed = pc.sum(pc.and_(present, pc.invert(pc.fill_null(same_hash, True))).cast("int64")).as_py() or 0
    return {"prior_items": n_prior, "removed": int(removed), "changed": int(changed)}


def check_gates(numbers: dict[str, Any], gates: GatesConfig, *, force: bool) -> dict[str, Any]:
    """The gate record for the manifest; raises :class:`GatesTripped` (nothing published) unless ``force``."""
    tripped = []
    if numbers["quarantined_share"] > gates.max_quarantined_share:
        tripped.append(f"quarantined share {numbers['quarantined_share']:.1%} ({numbers['quarantined']} of {numbers['input']} input rows) "
                       f"> max {gates.max_quarantined_share:.1%} (gates.max_quarantined_share)")
    for kind in ("removed", "changed"):
        share = numbers.get(f"{kind}_share")
        limit = getattr(gates, f"max_{kind}_share")
        if share is not None and share > limit:
            tripped.append(f"{kind} share {share:.1%} ({numbers[kind]} of {numbers['prior_items']} prior items) > max {limit:.1%} (gates.max_{kind}_share)")
    record = {**numbers, "limits": gates.model_dump(), "tripped": tripped, "forced": bool(force and tripped)}
    if tripped and not force:
        raise GatesTripped("publish gates tripped, nothing published: " + "; ".join(tripped)
                           + ". If the upstream catalog really changed this much, re-run with --force (recorded in the manifest)")
    return record
