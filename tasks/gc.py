"""Retention for one catalog: old runs, stale work dirs, embedding-cache entries no remaining run uses.

What is never removed:

* the latest published run and the ``keep`` most recently published ones;
* the run any kept run chains from (its ``prior_run``): its changes table and
  audit trail refer to it;
* anything while a run of the catalog is in progress on this host (gc takes the
  catalog lock, without waiting) and, as the guard across hosts, work dirs,
  unfinished run prefixes and cache parts touched less than ``min_age_hours`` ago.

The embedding cache is shared by every catalog under ``--out``: an entry stays
while any remaining run of any catalog there uses its (model, text hash).
"""

from __future__ import annotations

import time
from collections import defaultdict

import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import BaseModel, Field

from tasks import storage
from tasks.embed import cache_parts, write_cache_part
from tasks.chain import LATEST, published_runs, read_manifest, run_ids
from tasks.errors import BadInput
from tasks.export import is_published
from tasks.locks import catalog_exclusion


class GcReport(BaseModel):
    """What gc removed (or, with ``dry_run``, would remove), and why the rest stays."""

    dry_run: bool
    kept_runs: dict[str, str] = Field(default_factory=dict)
    """run prefix -> why it stays (latest / newest N / prior of ...)."""
    removed_runs: list[str] = Field(default_factory=list)
    removed_unfinished: list[str] = Field(default_factory=list)
    removed_work: list[str] = Field(default_factory=list)
    cache_entries_removed: int = 0
    cache_entries_kept: int = 0
    cache_parts_removed: list[str] = Field(default_factory=list)
    cache_parts_rewritten: list[str] = Field(default_factory=list)

    def lines(self) -> list[str]:
        verb = "would remove" if self.dry_run else "removed"
        out = [f"keep     {p}  ({why})" for p, why in self.kept_runs.items()]
        out += [f"{verb}  run {p}" for p in self.removed_runs]
        out += [f"{verb}  unfinished run {p}" for p in self.removed_unfinished]
        out += [f"{verb}  work dir {p}" for p in self.removed_work]
        out += [f"{verb}  cache part {p}" for p in self.cache_parts_removed]
        out += [f"{'would rewrite' if self.dry_run else 'rewrote'}  cache part {p}" for p in self.cache_parts_rewritten]
        out.append(f"cache    {self.cache_entries_removed} entries {'would be removed' if self.dry_run else 'removed'}, {self.cache_entries_kept} kept")
        return out


def _age_hours(uri: str) -> float:
    """Hours since anything under ``uri`` was last modified (a file or a folder tree)."""
    fs, path = storage.filesystem(uri)
    stamps = []
    for f in fs.find(path, withdirs=False) or [path]:
        info = fs.info(f)
        stamp = info.get("mtime") or info.get("LastModified") or info.get("created")
        if stamp is None:
            continue
        stamps.append(stamp.timestamp() if hasattr(stamp, "timestamp") else float(stamp))
    return (time.time() - max(stamps)) / 3600 if stamps else float("inf")


def _chosen_runs(catalog_prefix: str, keep: int) -> tuple[dict[str, str], list[str]]:
    runs = published_runs(catalog_prefix)  # oldest publication first
    name = catalog_prefix.rstrip("/").rsplit("/", 1)[-1]
    kept: dict[str, str] = {}
    for i, run in enumerate(reversed(runs)):
        if i == 0:
            kept[run.prefix] = "latest"
        elif i < keep:
            kept[run.prefix] = f"newest {keep}"
    by_id = {r.run_id: r for r in runs}
    newest = [r for r in runs if r.prefix in kept]
    for run in newest:  # one step back, not transitively: a stable lineage would otherwise keep everything
        if run.prior_run:
            parent, prior_id = run.prior_run.rstrip("/").rsplit("/", 1) if "/" in run.prior_run else ("", run.prior_run)
            prior = by_id.get(prior_id)
            if prior and parent.rstrip("/").rsplit("/", 1)[-1] == name and prior.prefix not in kept:
                kept[prior.prefix] = f"prior of {run.run_id}"
    removed = [r.prefix for r in runs if r.prefix not in kept]
    return kept, removed


def _used_cache_hashes(out: str, removed: set[str]) -> dict[str, set[str]]:
    """cache dir -> text hashes used by every remaining published run of every catalog under ``out``."""
    fs, root = storage.filesystem(out)
    used: dict[str, set[str]] = defaultdict(set)
    for entry in fs.ls(root, detail=False):
        name = entry.rstrip("/").rsplit("/", 1)[-1]
        if name.startswith(("_", ".")) or not fs.isdir(entry):
            continue
        for run in published_runs(storage.join(out, name)):
            if run.prefix in removed:
                continue
            embed = read_manifest(run.prefix).get("stages", {}).get("embed", {})
            cache_dir = embed.get("cache") or embed.get("outputs", {}).get("cache")  # "outputs": runs before typed stage results
            if cache_dir:
                hashes = storage.read_parquet(storage.join(run.prefix, "semantic_ids")).column("text_hash").to_pylist()
                used[storage.absolute(cache_dir)].update(hashes)
    return used


def _collect_cache(out: str, used: dict[str, set[str]], *, min_age_hours: float, dry_run: bool, report: GcReport) -> None:
    cache_root = storage.join(out, "_cache", "embeddings")
    fs, root = storage.filesystem(cache_root)
    if not fs.exists(root):
        return
    for entry in sorted(fs.ls(root, detail=False)):
        if not fs.isdir(entry):
            continue
        model_dir = storage.join(cache_root, entry.rstrip("/").rsplit("/", 1)[-1])
        wanted = used.get(storage.absolute(model_dir), set())
        for part in cache_parts(model_dir):
            if _age_hours(part) < min_age_hours:  # possibly written by a run in progress elsewhere
                report.cache_entries_kept += pq.ParquetFile(storage.filesystem(part)[1], filesystem=fs).metadata.num_rows
                continue
            table = storage.read_parquet(part)
            keep = pc.is_in(table["text_hash"], value_set=_as_array(wanted))
            n_keep = pc.sum(keep.cast("int64")).as_py() or 0
            report.cache_entries_kept += n_keep
            report.cache_entries_removed += table.num_rows - n_keep
            if n_keep == table.num_rows:
                continue
            if n_keep == 0:
                report.cache_parts_removed.append(part)
                if not dry_run:
                    storage.remove(part)
                continue
            report.cache_parts_rewritten.append(part)
            if not dry_run:
                # the kept entries go to a new part (complete or absent, as in tasks.embed), then the old one goes
                write_cache_part(part.rsplit("/", 1)[0], table.filter(keep))  # into the part's own shard folder
                storage.remove(part)


def _as_array(values: set[str]):
    import pyarrow as pa

    return pa.array(sorted(values), pa.string())


def collect_garbage(*, out: str, name: str, keep: int, dry_run: bool = False, min_age_hours: float = 24.0) -> GcReport:
    """Remove (or list, with ``dry_run``) what no one needs any more; see the module docstring for what stays."""
    if keep < 1:
        raise BadInput(f"--keep must be at least 1 (the latest run always stays), got {keep}")
    if min_age_hours < 0:
        raise BadInput(f"--min-age-hours must be >= 0, got {min_age_hours}")
    catalog_prefix = storage.join(out, name)
    if not storage.exists(catalog_prefix):
        raise BadInput(f"no catalog {name!r} under {out}")
    report = GcReport(dry_run=dry_run)
    with catalog_exclusion(catalog_prefix, wait_seconds=0):  # fails at once (RunLocked) while a run is in progress
        kept, removed = _chosen_runs(catalog_prefix, keep)
        report.kept_runs, report.removed_runs = kept, removed
        for run_id in run_ids(catalog_prefix):
            prefix = storage.join(catalog_prefix, run_id)
            if run_id != LATEST and not is_published(prefix) and _age_hours(prefix) >= min_age_hours:
                report.removed_unfinished.append(prefix)  # a publish that crashed before _SUCCESS
        work_root = storage.join(catalog_prefix, "_work")
        fs, work_path = storage.filesystem(work_root)
        if fs.exists(work_path):
            for entry in sorted(fs.ls(work_path, detail=False)):
                run_id = entry.rstrip("/").rsplit("/", 1)[-1]
                work = storage.join(work_root, run_id)
                if is_published(storage.join(catalog_prefix, run_id)) or _age_hours(work) >= min_age_hours:
                    report.removed_work.append(work)
        used = _used_cache_hashes(out, set(removed))
        if not dry_run:
            for prefix in [*removed, *report.removed_unfinished, *report.removed_work]:
                storage.remove(prefix)
            storage.remove_if_empty(work_root)
        _collect_cache(out, used, min_age_hours=min_age_hours, dry_run=dry_run, report=report)
    return report
