"""deploy/ on a real Prefect server: what ``prefect deploy --all`` registers, the automations, the per-catalog limit."""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path

import pytest

from tests.integration.conftest import POOL, PrefectServer

pytestmark = [pytest.mark.integration]


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
    gc = deployed["gc/gc-beauty"]
    assert gc["entrypoint"] == "flows.gc.gc" and gc["parameters"] == {"out": "${SEMID_OUT}", "name": "beauty", "keep": 14}
    assert [(s["schedule"]["cron"], s["active"]) for s in gc["schedules"]] == [("0 5 * * 0", True)]
    for name, dep in deployed.items():
        assert dep["version"] == "0.1.0", name
        assert (dep.get("global_concurrency_limit") or {}).get("limit") in (1, 2), f"{name} has no concurrency limit"
        assert dep["concurrency_options"]["collision_strategy"] == "ENQUEUE", name
        assert float(dep["job_variables"]["env"]["SEMID_FLOW_TIMEOUT_SECONDS"]) > 0, name
        assert "/deploy-time" not in json.dumps(dep), f"{name} captured the deploy-time environment"
        if name != "retokenize/nightly-beauty-k8s":
            assert dep["work_pool_name"] == POOL, name


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
