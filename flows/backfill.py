"""Ordered backfills: dated snapshots of a catalog, run in date order, each chained to the previous one.

A backfill replays history so that IDs stay stable across it: the snapshots of
one catalog run one after the other in the order of the date in their file
names, each with the previous snapshot's run as its prior run (frozen model,
unchanged items keep their IDs), and each run is named after its snapshot's
date (``2026-10-01``, or ``2026-10-01T030000Z`` when the name has a time).
Several catalogs run side by side, at most ``max_parallel`` at a time, sharing
one Ray session. A summary table (printed by ``semid backfill`` and stored as a
Prefect table artifact) says what happened to every snapshot.

Catalog name of a snapshot: ``name`` if given, else its file name without the
date (``beauty-2026-10-01.parquet`` -> ``beauty``), else its directory
(``beauty/2026-10-01.parquet`` -> ``beauty``).
"""

from __future__ import annotations

import datetime as dt
import re
from pathlib import PurePosixPath
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.futures import as_completed
from pydantic import BaseModel

from flows.ops import expand_env, flow_timeout_seconds
from flows.retokenize import check_safe, default_name, retokenize
from tasks import storage
from tasks.config import PipelineConfig
from tasks.errors import BadInput
from tasks.ray_runtime import ray_session

# 2026-10-01, 2026_10_01, 20261001, optionally followed by a time: T030000Z, _0300, -03-00-00 ...
_DATE = re.compile(
    r"(?<![0-9])(?P<y>(?:19|20)[0-9]{2})[-_.]?(?P<m>[01][0-9])[-_.]?(?P<d>[0-3][0-9])"
    r"(?:[T_ -]?(?P<H>[0-2][0-9])[-_:.]?(?P<M>[0-5][0-9])(?:[-_:.]?(?P<S>[0-5][0-9]))?Z?)?(?![0-9])"
)


class SnapshotError(BadInput):
    """A snapshot list that cannot be backfilled: no date in a file name, two snapshots of one date, no match."""


class BackfillFailed(RuntimeError):
    """At least one snapshot failed; the summary rows say which, and which later ones were not run."""

    def __init__(self, message: str, rows: list[dict[str, Any]]):
        super().__init__(message)
        self.rows = rows


class Snapshot(BaseModel):
    uri: str
    catalog: str
    date: dt.datetime
    run_id: str


def parse_snapshot(uri: str, name: str | None = None) -> Snapshot:
    """The catalog name, date and run id of one snapshot, from its file name; a clear error without a date."""
    path = PurePosixPath(uri.rstrip("/"))
    stem = path.name.split(".")[0]
    matches = list(_DATE.finditer(stem))
    if not matches:
        raise SnapshotError(
            f"snapshot {uri} has no date in its file name; name snapshots like beauty-2026-10-01.parquet, "
            "2026-10-01.csv or beauty_20261001T030000Z.jsonl"
        )
    m = matches[-1]
    g = {k: int(v) if v else 0 for k, v in m.groupdict().items()}
    try:
        date = dt.datetime(g["y"], g["m"], g["d"], g["H"], g["M"], g["S"], tzinfo=dt.timezone.utc)
    except ValueError as e:
        raise SnapshotError(f"snapshot {uri}: {m.group(0)!r} in its file name is not a valid date ({e})") from None
    run_id = date.strftime("%Y-%m-%d") if m.group("H") is None else date.strftime("%Y-%m-%dT%H%M%SZ")
    if name is None:
        rest = re.sub(r"^[-_.\s]+|[-_.\s]+$", "", stem[: m.start()] + stem[m.end():])
        name = default_name(rest) if rest else default_name(path.parent.name or "catalog")
    return Snapshot(uri=uri, catalog=check_safe("catalog name", name), date=date, run_id=run_id)


def plan(snapshots: list[str], name: str | None = None) -> dict[str, list[Snapshot]]:
    """Snapshots grouped by catalog, each group in date order; two snapshots of one catalog and date are refused."""
    if not snapshots:
        raise SnapshotError("no snapshots to backfill")
    groups: dict[str, list[Snapshot]] = {}
    for uri in snapshots:
        s = parse_snapshot(uri, name)
        groups.setdefault(s.catalog, []).append(s)
    for catalog, group in groups.items():
        group.sort(key=lambda s: s.date)
        for a, b in zip(group, group[1:]):
            if a.run_id == b.run_id:
                raise SnapshotError(f"catalog {catalog}: {a.uri} and {b.uri} are both dated {a.run_id}")
    return dict(sorted(groups.items()))


def expand_snapshots(patterns: list[str]) -> list[str]:
    """Glob patterns (local or s3://) and plain paths to a list of snapshot URIs; a pattern that matches nothing fails."""
    found: list[str] = []
    for pattern in patterns:
        if not any(ch in pattern for ch in "*?["):
            found.append(pattern)
            continue
        fs, path = storage.filesystem(pattern)
        matches = sorted(p for p in fs.glob(path) if not fs.isdir(p))
        if not matches:
            raise SnapshotError(f"--snapshots {pattern} matches no file")
        found += [f"s3://{p}" if storage.is_s3(pattern) else p for p in matches]
    return list(dict.fromkeys(found))


def _row(s: Snapshot, status: str, prior: str | None, result: dict[str, Any] | None = None, error: str | None = None) -> dict[str, Any]:
    row: dict[str, Any] = {"catalog": s.catalog, "snapshot": PurePosixPath(s.uri).name, "run_id": s.run_id, "status": status, "prior_run": prior}
    for key in ("input", "ided", "quarantined", "kept", "new", "changed", "removed"):
        row[key] = None
    if result is not None:
        from flows.runs import run_summary

        summary = run_summary(result["prefix"])
        row.update(summary["counts"])
        row.update(summary["changes"])
        row["prefix"] = result["prefix"]
    if error:
        row["error"] = error
    return row


@task(name="backfill-catalog", retries=0)
def backfill_catalog(snapshots: list[Snapshot], out: str, config: PipelineConfig, prior_run: str | None) -> list[dict[str, Any]]:
    """One catalog's snapshots, oldest first, each run chained to the previous one; stops at the first failure."""
    logger = get_run_logger()
    rows: list[dict[str, Any]] = []
    prior = prior_run
    for i, s in enumerate(snapshots):
        try:
            result = retokenize(catalog=s.uri, out=out, name=s.catalog, run_id=s.run_id, config=config, prior_run=prior)
        except Exception as e:  # noqa: BLE001 - recorded in the summary; later snapshots cannot chain past it
            logger.error("%s/%s failed: %s: %s", s.catalog, s.run_id, type(e).__name__, e)
            rows.append(_row(s, "failed", prior, error=f"{type(e).__name__}: {e}"))
            rows += [_row(t, "not run", None, error=f"{s.run_id} failed") for t in snapshots[i + 1:]]
            break
        rows.append(_row(s, "skipped (already published)" if result.get("skipped") else "published", prior, result))
        prior = result["prefix"]
    return rows


def _run_name() -> str:
    """``backfill/<catalog>+<catalog>`` from the snapshot names (globs whose names hold no date are left out)."""
    from prefect.runtime import flow_run

    params = flow_run.parameters or {}
    catalogs: list[str] = []
    for uri in params.get("snapshots") or []:
        try:
            catalogs.append(parse_snapshot(str(uri), params.get("name")).catalog)
        except SnapshotError:
            continue
    return "backfill/" + ("+".join(sorted(set(catalogs))) or "snapshots")


@flow(name="backfill", flow_run_name=_run_name, timeout_seconds=flow_timeout_seconds(24 * 3600))
def backfill(
    snapshots: list[str],
    out: str,
    name: str | None = None,
    config: PipelineConfig = PipelineConfig(),
    prior_run: str | None = None,
    max_parallel: int = 1,
) -> list[dict[str, Any]]:
    """Backfill dated snapshots: per catalog in date order, each chained to the previous; catalogs in parallel.

    ``snapshots``: snapshot URIs or glob patterns (local or s3://), dated in their file names.
    ``snapshots`` and ``out`` may hold ``${VAR}``, read from the flow run's environment.
    ``name``: one catalog name for all snapshots (default: from each file name).
    ``prior_run``: what the first snapshot of each catalog chains from: a published run
    prefix (one catalog only), ``"latest"`` (that catalog's latest run), or none (a new model).
    ``max_parallel``: catalogs backfilled at the same time.
    Returns the summary rows; fails after the summary if any snapshot failed.
    """
    from prefect.artifacts import create_table_artifact

    logger = get_run_logger()
    out = expand_env(out, "out")
    groups = plan(expand_snapshots([expand_env(s, "snapshot") for s in snapshots]), name)
    if prior_run not in (None, "latest") and len(groups) > 1:
        raise SnapshotError(f"prior_run {prior_run} can seed one catalog only, but the snapshots hold {len(groups)}: {sorted(groups)}")
    logger.info("backfill: %s", {c: [s.run_id for s in g] for c, g in groups.items()})
    rows: list[dict[str, Any]] = []
    pending = list(groups.values())
    running = []
    with ray_session():  # one local Ray for every chain (each subflow reuses it)
        while pending or running:
            while pending and len(running) < max(1, max_parallel):
                running.append(backfill_catalog.submit(pending.pop(0), out, config, prior_run))
            done = next(as_completed(running))
            running.remove(done)
            rows += done.result()
    rows.sort(key=lambda r: (r["catalog"], r["run_id"]))
    create_table_artifact(key="semid-backfill", table=rows, description="semid backfill: one row per snapshot")
    logger.info("backfill summary:\n%s", format_summary(rows))
    failed = [r for r in rows if r["status"] == "failed"]
    if failed:
        detail = "; ".join(f"{r['catalog']}/{r['run_id']}: {r['error']}" for r in failed)
        raise BackfillFailed(f"{len(failed)} of {len(rows)} snapshots failed: {detail}", rows)
    return rows


def format_summary(rows: list[dict[str, Any]]) -> str:
    """The summary as a plain-text table (one line per snapshot)."""
    cols = ["catalog", "run_id", "status", "input", "ided", "quarantined", "kept", "new", "changed", "removed"]
    cells = [[("-" if r.get(c) is None else str(r[c])) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)
