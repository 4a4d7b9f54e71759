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
from tasks.manifest import StageManifest, Stopwatch
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


def reconcile(*, ingest: StageManifest, assign: StageManifest) -> dict[str, int]:
    counts = {"input": ingest.counts["input"], "ided": assign.counts["ided"], "quarantined": ingest.counts["quarantined"]}
    if counts["input"] != counts["ided"] + counts["quarantined"]:
        raise ReconcileError(f"counts do not reconcile: input {counts['input']} != ided {counts['ided']} + quarantined {counts['quarantined']}")
    return counts


def is_published(prefix: str) -> bool:
    return storage.exists(storage.join(prefix, SUCCESS))


def latest_published(catalog_prefix: str, *, exclude: str) -> str | None:
    """The most recent finished run of a catalog (by run id, which defaults to a UTC timestamp)."""
    fs, path = storage.filesystem(catalog_prefix)
    if not fs.exists(path):
        return None
    runs = sorted(
        (p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(path, detail=False)),
        reverse=True,
    )
    for run_id in runs:
        if run_id.startswith(("_", ".")) or run_id == exclude:
            continue
        candidate = storage.join(catalog_prefix, run_id)
        if is_published(candidate):
            return candidate
    return None


def export(*, prefix: str, stages: dict[str, StageManifest], run: dict[str, Any]) -> dict[str, Any]:
    """Write the run's output layout and return its manifest (as written to ``manifest.json``)."""
    clock = Stopwatch()
    ingest, fit, assign = stages["ingest"], stages["fit"], stages["assign"]
    counts = reconcile(ingest=ingest, assign=assign)
    storage.remove(prefix)  # a half-written earlier attempt; never a published one (checked by the caller)
    files: dict[str, list[str]] = {}
    files["semantic_ids"] = [f"semantic_ids/{p}" for p in storage.copy_tree(assign.outputs["semantic_ids"], storage.join(prefix, "semantic_ids"))]
    for name in ("changes", "retired"):
        if name in assign.outputs:
            files[name] = [f"{name}/{p}" for p in storage.copy_tree(assign.outputs[name], storage.join(prefix, name))]
    storage.write_bytes(storage.join(prefix, "quarantine", "part-00000.parquet"), storage.read_bytes(ingest.outputs["quarantine"]))
    storage.write_bytes(storage.join(prefix, "items", "part-00000.parquet"), storage.read_bytes(ingest.outputs["items"]))
    files["model"] = [f"model/{p}" for p in storage.copy_tree(fit.outputs["model"], storage.join(prefix, "model"))]

    quality = storage.read_json(assign.outputs["quality"])
    quality["run"] = {"catalog": run["name"], "run_id": run["run_id"]}
    quality["counts"] = counts
    if "history" in fit.outputs:
        history = storage.read_json(fit.outputs["history"])
        quality["fit"] = {"epochs_run": len(history), "history": history, "stopped_early": fit.info.get("stopped_early", False)}
    elif "reused_from" in fit.info:
        quality["fit"] = {"reused_from": fit.info["reused_from"]}
    storage.write_json(storage.join(prefix, "quality.json"), quality)
    storage.write_bytes(storage.join(prefix, "quality.html"), render_quality_html(quality).encode())

    manifest = {
        "catalog": run["name"],
        "run_id": run["run_id"],
        "input": {"uri": run["catalog"], "sha256": ingest.info.get("catalog_sha256")},
        "counts": counts,
        "quarantine_reasons": ingest.info.get("quarantine_reasons", {}),
        "params": run["config"],
        "prior_run": run.get("prior_run"),
        "retrain": run.get("retrain", False),
        "versions": versions(),
        "timings": {name: m.seconds for name, m in stages.items()},
        "resumed_stages": sorted(name for name, m in stages.items() if m.resumed),
        "stages": {name: m.model_dump(exclude={"resumed"}) for name, m in stages.items()},
        "files": files,
        "ids_hash": assign.info.get("ids_hash"),
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    manifest["timings"]["export"] = clock.seconds
    storage.write_json(storage.join(prefix, "manifest.json"), manifest)
    storage.write_bytes(storage.join(prefix, SUCCESS), b"")
    return manifest
