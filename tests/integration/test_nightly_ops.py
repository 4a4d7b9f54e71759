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
import time
import urllib.error
import urllib.request
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.integration.conftest import POOL, PREFECT_FILE, PrefectServer, Worker
from tests.reliability import helpers as h

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TINY = {
    "embed": {"batch_size": 64, "device": "cpu"},
    "model": {"hidden_dims": [128, 64], "embed_dim": 16, "codebook_size": 16, "n_levels": 3, "warmup_steps": 5, "dead_code_window": 5},
    "fit": {"epochs": 4, "batch_size": 64, "early_stop_patience": 0},
}
N_FIRST = 150
SLOTS = [dt.datetime(2026, 11, d, 3, 0, tzinfo=dt.timezone.utc) for d in (26, 27, 28, 29, 30)]


def _api(server: PrefectServer, method: str, path: str, body: dict | None = None) -> dict | list | None:
    """One REST call; a busy server's 503 is retried, as Prefect's own client does."""
    req = urllib.request.Request(
        f"{server.api_url}{path}", method=method, data=None if body is None else json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    for attempt in range(10):
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                raw = r.read()
            return json.loads(raw) if raw else None
        except urllib.error.HTTPError as e:
            if e.code != 503 or attempt == 9:
                raise
            time.sleep(1 + attempt)


@pytest.fixture(scope="module")
def deployed(prefect_server: PrefectServer) -> dict[str, dict]:
    """deploy/prefect.yaml as shipped, with both work pools present (the kubernetes one has no worker here)."""
    _api(prefect_server, "POST", "/work_pools/", {"name": "semid-kubernetes", "type": "kubernetes"})
    # Deploy-time values that must NOT end up in the deployments (they are read when a run starts).
    prefect_server.cli("deploy", "--all", "--prefect-file", PREFECT_FILE, env={"SEMID_OUT": "/deploy-time", "SEMID_CATALOGS": "/deploy-time"})
    out = {}
    for name in ("retokenize/nightly-beauty", "retokenize/nightly-beauty-k8s", "backfill/backfill", "retokenize/manual"):
        out[name] = _api(prefect_server, "GET", f"/deployments/name/{name}")
    return out


def test_deploy_all_registers_every_deployment_without_deploy_time_values(deployed):
    nightly = deployed["retokenize/nightly-beauty"]
    assert nightly["entrypoint"] == "flows.retokenize.retokenize" and nightly["pull_steps"] == []
    assert nightly["parameters"] == {"catalog": "${SEMID_CATALOGS}/beauty/latest.parquet", "out": "${SEMID_OUT}", "name": "beauty", "prior_run": "latest"}
    crons = [(s["schedule"]["cron"], s["schedule"]["timezone"], s["active"]) for s in nightly["schedules"]]
    assert crons == [("0 3 * * *", "UTC", True)]
    k8s = deployed["retokenize/nightly-beauty-k8s"]
    assert k8s["work_pool_name"] == "semid-kubernetes" and k8s["job_variables"]["image"] == "semid:0.1.0"
    assert [s["active"] for s in k8s["schedules"]] == [False], "the k8s variant ships paused"
    assert deployed["backfill/backfill"]["entrypoint"] == "flows.backfill.backfill"
    for name, dep in deployed.items():
        assert dep["version"] == "0.1.0", name
        assert (dep.get("global_concurrency_limit") or {}).get("limit") in (1, 2), f"{name} has no concurrency limit"
        assert dep["concurrency_options"]["collision_strategy"] == "ENQUEUE", name
        assert float(dep["job_variables"]["env"]["SEMID_FLOW_TIMEOUT_SECONDS"]) > 0, name
        assert "/deploy-time" not in json.dumps(dep), f"{name} captured the deploy-time environment"
        if name != "retokenize/nightly-beauty-k8s":
            assert dep["work_pool_name"] == POOL, name


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
    return _api(server, "POST", f"/deployments/{deployment['id']}/create_flow_run", body)["id"]


def _flow_run(server: PrefectServer, run_id: str) -> dict:
    return _api(server, "GET", f"/flow_runs/{run_id}")


def _wait_state(server: PrefectServer, run_id: str, states: tuple[str, ...], timeout: float) -> dict:
    def reached() -> dict | None:
        fr = _flow_run(server, run_id)
        return fr if fr["state"]["type"] in states else None

    return h.wait_for(reached, timeout=timeout, interval=0.5, what=f"flow run {run_id} to reach {states}")


def _wait_final(server: PrefectServer, run_id: str, worker: Worker, timeout: float = 400) -> dict:
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


@pytest.mark.timeout(1500)
def test_five_nights_and_a_backfill_through_the_deployments(prefect_server: PrefectServer, deployed, tmp_path: Path):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from tasks.export import latest_published
    from tasks.locks import concurrency_limit_name

    server = prefect_server
    catalogs, out = tmp_path / "catalogs", tmp_path / "out"
    live = catalogs / "beauty" / "latest.parquet"
    worker = Worker(server, tmp_path / "worker.log", env={"SEMID_CATALOGS": str(catalogs), "SEMID_OUT": str(out)})
    nightly, backfill = deployed["retokenize/nightly-beauty"], deployed["backfill/backfill"]
    cat = Catalog()
    published: list[tuple[str, dict[str, str]]] = []  # (run id, catalog snapshot) in publish order
    try:
        def night(i: int, *, crash: bool = False) -> dict:
            cat.write(live)
            run_id = SLOTS[i].strftime("%Y%m%dT%H%M%SZ")
            fr_id = _create_run(server, nightly, slot=SLOTS[i], parameters={"config": TINY})
            if crash:  # SIGKILL the night once its embed stage is recorded, then retry the slot
                work = out / "beauty" / "_work" / run_id
                h.wait_for(lambda: len(list(work.rglob("_stage.json"))) >= 2, timeout=400, interval=0.05, what="night 3's embed stage")
                for pid in _flow_run_pids(fr_id):
                    h.kill_tree(pid)
                crashed = _wait_state(server, fr_id, ("CRASHED",), timeout=120)
                assert crashed["name"] == f"beauty/{run_id}" and not (out / "beauty" / run_id / "_SUCCESS").exists()
                # The retry: a new flow run for the same schedule slot (what a re-run of the missed
                # night does), so the same run id and the crashed attempt's work dir.
                fr_id = _create_run(server, nightly, slot=SLOTS[i], parameters={"config": TINY})
            fr = _wait_final(server, fr_id, worker)
            print(f"night {i + 1}: {fr['total_run_time']:.0f}s run time")
            assert fr["name"] == f"beauty/{run_id}", "flow run name = <name>/<run_id>, run id from the schedule slot"
            published.append((run_id, cat.snapshot()))
            return fr

        night(0)
        cat.evolve()
        night(1)

        # Backfill two dated snapshots, given newest first: they run oldest first, each chained to the previous.
        snaps = tmp_path / "snapshots"
        cat.evolve()
        cat.write(snaps / "beauty-2026-11-27.parquet")
        published.append(("2026-11-27", cat.snapshot()))
        cat.evolve()
        cat.write(snaps / "beauty-2026-11-28.parquet")
        published.append(("2026-11-28", cat.snapshot()))
        fr_id = _create_run(server, backfill, parameters={
            "snapshots": [str(snaps / "beauty-2026-11-28.parquet"), str(snaps / "beauty-2026-11-2[0-7].parquet")],
            "out": str(out), "prior_run": "latest", "config": TINY,
        })
        assert _wait_final(server, fr_id, worker)["name"] == "backfill/beauty"
        b1, b2 = (json.loads((out / "beauty" / r / "manifest.json").read_text()) for r in ("2026-11-27", "2026-11-28"))
        assert b1["prior_run"] == str(out / "beauty" / "20261127T030000Z") and b2["prior_run"] == str(out / "beauty" / "2026-11-27")

        cat.evolve()
        night(2, crash=True)
        for i in (3, 4):
            cat.evolve()
            night(i)
    finally:
        worker.stop()

    # The chain: each run's prior is the run published just before it (latest by publish time, not by run id).
    prefixes = [out / "beauty" / r for r, _ in published]
    manifests = [json.loads((p / "manifest.json").read_text()) for p in prefixes]
    assert manifests[0]["prior_run"] is None
    for k in range(1, len(published)):
        assert manifests[k]["prior_run"] == str(prefixes[k - 1]), (published[k][0], manifests[k]["prior_run"])
    assert latest_published(str(out / "beauty"), exclude="") == str(prefixes[-1])

    # Night 3 resumed its work dir after the crash.
    n3 = manifests[[r for r, _ in published].index(SLOTS[2].strftime("%Y%m%dT%H%M%SZ"))]
    assert {"ingest", "embed"} <= set(n3["resumed_stages"]), n3["resumed_stages"]

    owner: dict[str, str] = {}  # every sid ever issued -> the one item it belongs to
    for k, (run_id, snap) in enumerate(published):
        ids = _ids(prefixes[k])
        assert set(ids) == set(snap) and len(set(ids.values())) == len(ids), run_id
        for item, sid in ids.items():
            assert owner.setdefault(sid, item) == item, f"{run_id}: {sid} was issued to {owner[sid]} before, now to {item}"
        if k == 0:
            continue
        prior_snap, prior_ids = published[k - 1][1], _ids(prefixes[k - 1])
        expected = _expected_changes(prior_snap, snap)
        changes = _changes(prefixes[k])
        assert {i: c[2] for i, c in changes.items()} == expected, run_id
        for item, (old, new, status) in changes.items():
            assert old == prior_ids.get(item) and new == ids.get(item), (run_id, item, status, old, new)
            if status == "kept":
                assert new == old, f"{run_id}: unchanged item {item} moved from {old} to {new}"
        counts = {s: list(expected.values()).count(s) for s in ("kept", "new", "changed", "removed")}
        assert counts["kept"] > 100 and min(counts.values()) > 0, counts

    with temporary_settings({PREFECT_API_URL: server.api_url}):
        with get_client(sync_client=True) as client:
            arts = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["semid-beauty"])))
            assert len(arts) == len(published), "one summary artifact per published run"
            last = max(arts, key=lambda a: a.created)
            assert f"beauty/{published[-1][0]}" in last.data and "| kept | new | changed | removed |" in last.data
            assert client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["semid-backfill"])))
            limit = client.read_global_concurrency_limit_by_name(concurrency_limit_name(str(out / "beauty")))
            assert limit.limit == 1 and limit.active_slots == 0


def test_automations_spec_validates_and_is_created_on_the_server(prefect_server: PrefectServer):
    """deploy/automations.yaml, with a real notification block's id filled in, is accepted by the server as written."""
    import yaml
    from prefect.blocks.notifications import CustomWebhookNotificationBlock
    from prefect.client.orchestration import get_client
    from prefect.events.schemas.automations import AutomationCore, Posture
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from tests.integration.conftest import PROJECT_ROOT

    text = (PROJECT_ROOT / "deploy" / "automations.yaml").read_text()
    with temporary_settings({PREFECT_API_URL: prefect_server.api_url}):
        block = CustomWebhookNotificationBlock(name="semid-alerts", url="http://127.0.0.1:9/alert", json_data={"text": "{{subject}}: {{body}}"})
        block_id = block.save("semid-alerts", overwrite=True)
        specs = yaml.safe_load(text.replace("__SEMID_ALERT_BLOCK_ID__", str(block_id)))["automations"]
        automations = [AutomationCore.model_validate(spec) for spec in specs]
        with get_client(sync_client=True) as client:
            for a in automations:
                client.create_automation(a)
            stored = {a.name: a for a in client.read_automations()}
    failed, missing = stored["semid-run-failed"], stored["semid-nightly-beauty-missing"]
    assert failed.trigger.posture == Posture.Reactive
    assert set(failed.trigger.expect) == {"prefect.flow-run.Failed", "prefect.flow-run.Crashed", "prefect.flow-run.TimedOut"}
    assert missing.trigger.posture == Posture.Proactive and missing.trigger.within == dt.timedelta(hours=26)
    assert missing.trigger.expect == {"prefect.flow-run.Completed"}
    assert all(str(a.actions[0].block_document_id) == str(block_id) for a in (failed, missing))


def test_catalog_limit_refuses_a_second_run_and_frees_a_killed_holders_slot_at_once(prefect_server: PrefectServer, tmp_path: Path):
    """With a server, one run per catalog is a Prefect global concurrency limit, valid across processes and hosts."""
    import signal
    import subprocess
    import sys

    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from tasks.locks import RunLocked, catalog_exclusion, concurrency_limit_name
    from tests.integration.conftest import PROJECT_ROOT

    prefix = str(tmp_path / "out" / "shop")
    hold = "import sys, time\nfrom tasks.locks import catalog_exclusion\nwith catalog_exclusion(sys.argv[1]):\n    print('held', flush=True)\n    time.sleep(600)\n"
    holder = subprocess.Popen([sys.executable, "-c", hold, prefix], cwd=PROJECT_ROOT, env=prefect_server.env, stdout=subprocess.PIPE, start_new_session=True)
    try:
        assert holder.stdout.readline().strip() == b"held"
        with temporary_settings({PREFECT_API_URL: prefect_server.api_url}), get_client(sync_client=True) as client:
            limit = client.read_global_concurrency_limit_by_name(concurrency_limit_name(prefix))
            assert (limit.limit, limit.active_slots) == (1, 1)
            with pytest.raises(RunLocked, match=f"another run of {prefix} is in progress"):
                with catalog_exclusion(prefix):
                    pass
            os.killpg(holder.pid, signal.SIGKILL)  # the holder dies without releasing; its lease is still live
            holder.wait(timeout=30)
            with catalog_exclusion(prefix):  # the dead holder's slot is taken back at once, not after the lease
                assert client.read_global_concurrency_limit_by_name(limit.name).active_slots == 1
            assert client.read_global_concurrency_limit_by_name(limit.name).active_slots == 0
    finally:
        if holder.poll() is None:
            os.killpg(holder.pid, signal.SIGKILL)
            holder.wait(timeout=30)
