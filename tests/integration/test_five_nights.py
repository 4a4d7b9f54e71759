"""Five nights of an evolving catalog through the real deployments, on a real ``prefect server`` + process worker.

deploy/prefect.yaml is deployed as shipped (``prefect deploy --all``); the
worker gets the environment an operator would give it (``SEMID_CATALOGS``,
``SEMID_OUT``), which the ``nightly-beauty`` deployment's ``${VAR}`` parameters
read at run time. Each night is a flow run of that deployment at its schedule
slot (03:00 UTC); between nights 2 and 3 the ``backfill`` deployment publishes
two dated snapshots (given newest first), whose run ids sort *below* the
nightly ones as strings. Night 3 is SIGKILLed mid-run and retried (a new flow run for
the same schedule slot): it must resume its work dir.

Checked: every unchanged item keeps its exact ID every night, no ID is ever
issued to a second item, every change table is exact, ``latest`` follows
publish time, run names and ids come from the schedule slot, each run has its
artifact, and the catalog's global concurrency limit exists.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import random
from pathlib import Path
from typing import NamedTuple

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.integration.conftest import PrefectServer, Worker, api
from tests.reliability import helpers as h

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(2400)]

TINY = h.TINY  # tests/flows' tiny config, embedder pinned to CPU
N_FIRST = 150
SLOTS = [dt.datetime(2026, 11, d, 3, 0, tzinfo=dt.timezone.utc) for d in (26, 27, 28, 29, 30)]


# --------------------------------------------------------------------------- the evolving catalog


class Catalog:
    """The live catalog: adds, removals, text edits and a new row order each step (deterministic)."""

    def __init__(self, seed: int = 11):
        from tasks.sample_catalog import generate_rows

        self.pool = generate_rows(n=N_FIRST + 80, seed=seed)
        self.rows = {r["item_id"]: dict(r) for r in self.pool[:N_FIRST]}
        self.next_new = N_FIRST
        self.rng = random.Random(seed)
        self.step = 0

    def evolve(self, *, add: int = 10, remove: int = 5, edit: int = 5) -> None:
        self.step += 1
        ids = sorted(self.rows)
        for item in self.rng.sample(ids, remove):
            del self.rows[item]
        for item in self.rng.sample(sorted(self.rows), edit):
            self.rows[item]["title"] += f" (v{self.step})"
        for r in self.pool[self.next_new:self.next_new + add]:
            self.rows[r["item_id"]] = dict(r)
        self.next_new += add

    def snapshot(self) -> dict[str, str]:
        """item_id -> the fields that make its text (a changed value means a changed item)."""
        return {k: json.dumps([v["title"], v["brand"], v["categories"], v["description"]]) for k, v in self.rows.items()}

    def write(self, path: Path) -> None:
        rows = list(self.rows.values())
        random.Random(self.step).shuffle(rows)
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(rows), path)


# --------------------------------------------------------------------------- driving the server


def _create_run(server: PrefectServer, deployment: dict, *, slot: dt.datetime | None = None, parameters: dict) -> str:
    body: dict = {"parameters": parameters}
    if slot is not None:
        body["state"] = {"type": "SCHEDULED", "state_details": {"scheduled_time": slot.isoformat()}}
    return api(server, "POST", f"/deployments/{deployment['id']}/create_flow_run", body)["id"]


def _flow_run(server: PrefectServer, run_id: str) -> dict:
    return api(server, "GET", f"/flow_runs/{run_id}")


def _wait_state(server: PrefectServer, run_id: str, states: tuple[str, ...], timeout: float) -> dict:
    def reached() -> dict | None:
        fr = _flow_run(server, run_id)
        return fr if fr["state"]["type"] in states else None

    return h.wait_for(reached, timeout=timeout, interval=0.5, what=f"flow run {run_id} to reach {states}")


def _wait_final(server: PrefectServer, run_id: str, worker: Worker, timeout: float = 900) -> dict:
    fr = _wait_state(server, run_id, ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"), timeout)
    assert fr["state"]["type"] == "COMPLETED", f"{fr['name']}: {fr['state']['type']} {fr['state'].get('message')}\n{worker.tail()}"
    return fr


def _flow_run_pids(run_id: str) -> list[int]:
    """Processes whose environment says they execute this flow run (the worker's child and its engine)."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                env = Path(f"/proc/{entry}/environ").read_bytes()
            except OSError:
                continue
            if f"PREFECT__FLOW_RUN_ID={run_id}".encode() in env.split(b"\0"):
                pids.append(int(entry))
    return pids


def _ids(prefix: Path) -> dict[str, str]:
    t = pq.read_table(prefix / "semantic_ids", columns=["item_id", "sid"])
    return dict(zip(t["item_id"].to_pylist(), t["sid"].to_pylist()))


def _changes(prefix: Path) -> dict[str, tuple[str | None, str | None, str]]:
    t = pq.read_table(prefix / "changes", columns=["item_id", "old_sid", "new_sid", "status"]).to_pylist()
    return {r["item_id"]: (r["old_sid"], r["new_sid"], r["status"]) for r in t}


def _expected_changes(prior: dict[str, str], now: dict[str, str]) -> dict[str, str]:
    status = {k: ("kept" if prior[k] == v else "changed") if k in prior else "new" for k, v in now.items()}
    status.update({k: "removed" for k in prior if k not in now})
    return status


class Scenario(NamedTuple):
    server: PrefectServer
    out: Path
    published: list[tuple[str, dict[str, str]]]  # (run id, catalog snapshot) in publish order
    crashed_run: dict  # night 3's first flow run, SIGKILLed


@pytest.fixture(scope="module")
def nights(prefect_server: PrefectServer, deployed, tmp_path_factory) -> Scenario:
    """Nights 1-2, a backfill of two snapshots, night 3 (killed, then retried), nights 4-5; all through deployments."""
    from tasks import ray_local

    tmp_path = tmp_path_factory.mktemp("nights")
    server = prefect_server
    catalogs, out = tmp_path / "catalogs", tmp_path / "out"
    live = catalogs / "beauty" / "latest.parquet"
    # One standing Ray cluster for all the nights, as an operator would run beside the worker: each flow run
    # joins it through RAY_ADDRESS (tasks/ray_runtime.py) instead of starting and stopping a local cluster of
    # its own, and its warm workers keep the embedder loaded. (A flow run's own local Ray, SIGKILL included,
    # is covered by tests/reliability.) Started with the product's keeper, so it cannot outlive this process.
    with pytest.MonkeyPatch.context() as mp:  # the keeper gets the worker's Ray settings (no token auth, no usage stats)
        for key in ("RAY_AUTH_MODE", "RAY_USAGE_STATS_ENABLED", "HF_HUB_OFFLINE", "TOKENIZERS_PARALLELISM"):
            mp.setenv(key, server.env[key])
        cluster = ray_local.start()
    try:
        worker = Worker(server, tmp_path / "worker.log", env={"SEMID_CATALOGS": str(catalogs), "SEMID_OUT": str(out), "RAY_ADDRESS": cluster.address})
    except BaseException:
        cluster.stop()
        raise
    nightly, backfill = deployed["retokenize/nightly-beauty"], deployed["backfill/backfill"]
    cat = Catalog()
    published: list[tuple[str, dict[str, str]]] = []
    crashed: dict = {}
    try:
        def night(i: int, *, crash: bool = False) -> None:
            cat.write(live)
            run_id = SLOTS[i].strftime("%Y%m%dT%H%M%SZ")
            fr_id = _create_run(server, nightly, slot=SLOTS[i], parameters={"config": TINY})
            if crash:  # SIGKILL the night once its embed stage is recorded, then retry the slot
                work = out / "beauty" / "_work" / run_id
                h.wait_for(lambda: len(list(work.rglob("_stage.json"))) >= 2, timeout=600, interval=0.05, what="night 3's embed stage")
                for pid in _flow_run_pids(fr_id):
                    h.kill_tree(pid)
                crashed.update(_wait_state(server, fr_id, ("CRASHED",), timeout=300))
                assert not (out / "beauty" / run_id / "_SUCCESS").exists()
                # The retry: a new flow run for the same schedule slot (what a re-run of the missed
                # night does), so the same run id and the crashed attempt's work dir.
                fr_id = _create_run(server, nightly, slot=SLOTS[i], parameters={"config": TINY})
            fr = _wait_final(server, fr_id, worker)
            assert fr["name"] == f"beauty/{run_id}", "flow run name = <name>/<run_id>, run id from the schedule slot"
            published.append((run_id, cat.snapshot()))

        night(0)
        cat.evolve()
        night(1)
        # Backfill two dated snapshots, given newest first (a path and a glob): they run oldest first.
        snaps = tmp_path / "snapshots"
        for date in ("2026-11-27", "2026-11-28"):
            cat.evolve()
            cat.write(snaps / f"beauty-{date}.parquet")
            published.append((date, cat.snapshot()))
        fr_id = _create_run(server, backfill, parameters={
            "snapshots": [str(snaps / "beauty-2026-11-28.parquet"), str(snaps / "beauty-2026-11-2[0-7].parquet")],
            "out": "${SEMID_OUT}", "prior_run": "latest", "config": TINY,
        })
        assert _wait_final(server, fr_id, worker)["name"] == "backfill/beauty"
        cat.evolve()
        night(2, crash=True)
        for i in (3, 4):
            cat.evolve()
            night(i)
    finally:
        worker.stop()
        cluster.stop()
    return Scenario(server=server, out=out, published=published, crashed_run=crashed)


def _manifest(out: Path, run_id: str) -> dict:
    return json.loads((out / "beauty" / run_id / "manifest.json").read_text())


def test_backfill_runs_snapshots_in_date_order_each_chained_to_the_previous(nights: Scenario):
    b1, b2 = _manifest(nights.out, "2026-11-27"), _manifest(nights.out, "2026-11-28")
    assert b1["prior_run"] == str(nights.out / "beauty" / "20261127T030000Z"), "the first snapshot chains from latest (night 2)"
    assert b2["prior_run"] == str(nights.out / "beauty" / "2026-11-27")


def test_a_killed_night_resumes_when_its_slot_is_retried(nights: Scenario):
    run_id = SLOTS[2].strftime("%Y%m%dT%H%M%SZ")
    assert nights.crashed_run["name"] == f"beauty/{run_id}"
    n3 = _manifest(nights.out, run_id)
    assert {"ingest", "embed"} <= set(n3["resumed_stages"]), n3["resumed_stages"]


def test_every_run_keeps_unchanged_ids_never_reissues_one_and_reports_exact_changes(nights: Scenario):
    """Checked against each run's actual prior run (whichever `latest` resolved to)."""
    snapshot_of = {str(nights.out / "beauty" / r): snap for r, snap in nights.published}
    owner: dict[str, str] = {}  # every sid ever issued -> the one item it belongs to
    for run_id, snap in nights.published:
        prefix = nights.out / "beauty" / run_id
        ids = _ids(prefix)
        assert set(ids) == set(snap) and len(set(ids.values())) == len(ids), run_id
        for item, sid in ids.items():
            assert owner.setdefault(sid, item) == item, f"{run_id}: {sid} was issued to {owner[sid]} before, now to {item}"
        prior = _manifest(nights.out, run_id)["prior_run"]
        if prior is None:
            assert run_id == nights.published[0][0]
            continue
        prior_ids = _ids(Path(prior))
        expected = _expected_changes(snapshot_of[prior], snap)
        changes = _changes(prefix)
        assert {i: c[2] for i, c in changes.items()} == expected, run_id
        for item, (old, new, status) in changes.items():
            assert old == prior_ids.get(item) and new == ids.get(item), (run_id, item, status, old, new)
            if status == "kept":
                assert new == old, f"{run_id}: unchanged item {item} moved from {old} to {new}"
        counts = {s: list(expected.values()).count(s) for s in ("kept", "new", "changed", "removed")}
        assert counts["kept"] > 100 and min(counts.values()) > 0, counts


def test_each_run_leaves_its_artifact_and_the_catalog_limit_exists(nights: Scenario):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from tasks.locks import concurrency_limit_name

    with temporary_settings({PREFECT_API_URL: nights.server.api_url}), get_client(sync_client=True) as client:
        arts = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["semid-beauty"])))
        assert len(arts) == len(nights.published), "one summary artifact per published run"
        last = max(arts, key=lambda a: a.created)
        assert f"beauty/{nights.published[-1][0]}" in last.data and "| kept | new | changed | removed |" in last.data
        (table,) = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["semid-backfill"])))
        rows = json.loads(table.data) if isinstance(table.data, str) else table.data
        assert [(r["catalog"], r["run_id"], r["status"]) for r in rows] == [("beauty", "2026-11-27", "published"), ("beauty", "2026-11-28", "published")]
        limit = client.read_global_concurrency_limit_by_name(concurrency_limit_name(str(nights.out / "beauty")))
        assert limit.limit == 1 and limit.active_slots == 0


def test_latest_follows_publish_time_not_run_id_order(nights: Scenario):
    """Each run's prior is the run published just before it: the backfill ids 2026-11-2x sort below
    20261127T030000Z as strings, yet night 3 chains from the last backfill run."""
    prefixes = [str(nights.out / "beauty" / r) for r, _ in nights.published]
    priors = [_manifest(nights.out, r)["prior_run"] for r, _ in nights.published]
    assert priors == [None, *prefixes[:-1]]
