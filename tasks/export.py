"""Publish one run: copy finished stage outputs to ``<out>/<catalog>/<run_id>/``, ``_SUCCESS`` last.

Nothing is published until every count reconciles (input = ided + quarantined).
A prefix without ``_SUCCESS`` is never trusted: a re-run clears it and
publishes again from the stage outputs, which are complete by construction.
"""

from __future__ import annotations

import datetime as dt
import platform
from importlib import metadata
from typing import Any

from tasks import storage
from tasks.manifest import AssignResult, CollabResult, EmbedResult, FitResult, IngestResult, Stopwatch
from tasks.report import render_quality_html

SUCCESS = "_SUCCESS"


class ReconcileError(RuntimeError):
    """Rows went missing between input and output; nothing is published."""


def versions() -> dict[str, str]:
    names = ["semid", "torch", "ray", "prefect", "polars", "pyarrow", "s3fs", "sentence-transformers", "numpy"]
    out = {"python": platform.python_version()}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "absent"
    return out


def reconcile(*, input: int, ided: int, quarantined: int) -> dict[str, int]:
    counts = {"input": input, "ided": ided, "quarantined": quarantined}
    if counts["input"] != counts["ided"] + counts["quarantined"]:
        raise ReconcileError(f"counts do not reconcile: input {counts['input']} != ided {counts['ided']} + quarantined {counts['quarantined']}")
    return counts


def is_published(prefix: str) -> bool:
    return storage.exists(storage.join(prefix, SUCCESS))


def export(*, prefix: str, ingest: IngestResult, embed: EmbedResult, fit: FitResult, assign: AssignResult, run: dict[str, Any],
           collab: CollabResult | None = None) -> dict[str, Any]:
    """Write the run's output layout and return its manifest (as written to ``manifest.json``)."""
    clock = Stopwatch()
    stages = {"ingest": ingest, "embed": embed, **({"collab": collab} if collab else {}), "fit": fit, "assign": assign}
    counts = reconcile(input=ingest.input, ided=assign.ided, quarantined=ingest.quarantined)
    storage.remove(prefix)  # a half-written earlier attempt; never a published one (checked by the caller)
    files: dict[str, list[str]] = {}
    files["semantic_ids"] = [f"semantic_ids/{p}" for p in storage.copy_tree(assign.semantic_ids, storage.join(prefix, "semantic_ids"))]
    for name, uri in (("changes", assign.changes), ("retired", assign.retired)):
        if uri is not None:
            files[name] = [f"{name}/{p}" for p in storage.copy_tree(uri, storage.join(prefix, name))]
    for name, uri in (("quarantine", ingest.quarantine), ("items", ingest.items)):
        storage.copy_tree(uri, storage.join(prefix, name))
    files["model"] = [f"model/{p}" for p in storage.copy_tree(fit.model, storage.join(prefix, "model"))]

    quality = storage.read_json(assign.quality)
    quality["run"] = {"catalog": run["name"], "run_id": run["run_id"]}
    quality["counts"] = counts
    if fit.history is not None:
        history = storage.read_json(fit.history)
        quality["fit"] = {"epochs_run": len(history), "history": history, "stopped_early": fit.stopped_early, "kept_epoch": fit.final["epoch"]}
    elif fit.reused_from is not None:
        quality["fit"] = {"reused_from": fit.reused_from}
    storage.write_json(storage.join(prefix, "quality.json"), quality)
    storage.write_bytes(storage.join(prefix, "quality.html"), render_quality_html(quality).encode())

    manifest = {
        "catalog": run["name"],
        "run_id": run["run_id"],
        "input": {"uri": run["catalog"], "sha256": ingest.catalog_sha256},
        "counts": counts,
        "quarantine_reasons": ingest.quarantine_reasons,
        "params": run["config"],
        "prior_run": run.get("prior_run"),
        "retrain": run.get("retrain", False),
        "versions": versions(),
        "timings": {name: m.seconds for name, m in stages.items()},
        "resumed_stages": sorted(name for name, m in stages.items() if m.resumed),
        "stages": {name: m.model_dump(exclude={"resumed"}) for name, m in stages.items()},
        "files": files,
        "ids_hash": assign.ids_hash,
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        **run.get("chain", {}),  # embedding identity, model version, gates, drift (tasks.chain)
    }
    manifest["timings"]["export"] = clock.seconds
    # what `latest` is ordered by (tasks.chain), never the run id; microseconds so two runs rarely tie
    manifest["published_at"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="microseconds")
    storage.write_json(storage.join(prefix, "manifest.json"), manifest)
    storage.write_bytes(storage.join(prefix, SUCCESS), b"")
    return manifest
