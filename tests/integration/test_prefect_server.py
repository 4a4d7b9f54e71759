"""A real Prefect server + process worker running deploy/prefect.yaml, offline.

Starts ``prefect server start`` on a free localhost port (own PREFECT_HOME, own
process group), creates the ``semid-process`` work pool, deploys from
``deploy/prefect.yaml`` with ``prefect --no-prompt deploy``, triggers the
``manual`` deployment on a tiny generated catalog, executes it with
``prefect worker start --run-once`` and checks the flow run and its output
prefix. Also checks that ``deploy --all`` registers the nightly cron.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PROJECT_ROOT = Path(__file__).resolve().parents[2]
PREFECT_FILE = "deploy/prefect.yaml"
BIN = Path(sys.executable).parent
PREFECT = str(BIN / "prefect")
POOL = "semid-process"
UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")

# What the tiny run is given: small enough to finish in well under two minutes on 2 CPUs.
TINY_CONFIG = {
    "fit": {"epochs": 2, "batch_size": 64, "min_code_usage": 0.0},
    "model": {"codebook_size": 16, "n_levels": 2, "hidden_dims": [64, 32], "embed_dim": 16, "kmeans_iters": 3},
    "embed": {"batch_size": 64},
}
N_ITEMS = 200


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _kill_group(proc: subprocess.Popen, timeout: float = 20.0) -> None:
    """Stop a process started with start_new_session=True, and everything in its group."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass
    try:  # children may outlive the leader; take the group down regardless
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass


def _tail(path: Path, n: int = 6000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except FileNotFoundError:
        return "<no log>"


class PrefectServer:
    def __init__(self, home: Path):
        self.home = home
        self.port = _free_port()
        self.api_url = f"http://127.0.0.1:{self.port}/api"
        self.log = home / "server.log"
        env = dict(os.environ)
        env.update(
            PREFECT_HOME=str(home),
            PREFECT_API_URL=self.api_url,
            PREFECT_PROFILES_PATH=str(home / "profiles.toml"),
            DO_NOT_TRACK="1",
            PREFECT_SERVER_ANALYTICS_ENABLED="false",
            RAY_USAGE_STATS_ENABLED="0",
            RAY_AUTH_MODE="disabled",
            HF_HUB_OFFLINE="1",
            TOKENIZERS_PARALLELISM="false",
            # The pull step in deploy/prefect.yaml resolves {{ $SEMID_HOME }} at run time.
            SEMID_HOME=str(PROJECT_ROOT),
            PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        )
        env.pop("PREFECT_API_KEY", None)
        self.env = env
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 120.0) -> None:
        server_env = dict(self.env)
        server_env.pop("PREFECT_API_URL", None)
        with open(self.log, "wb") as fh:
            self.proc = subprocess.Popen(
                [PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(self.port), "--no-ui", "--analytics-off"],
                cwd=self.home,
                env=server_env,
                stdout=fh,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"prefect server exited with {self.proc.returncode}:\n{_tail(self.log)}")
            try:
                with urllib.request.urlopen(f"{self.api_url}/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass
            time.sleep(0.5)
        raise TimeoutError(f"prefect server not healthy after {timeout}s:\n{_tail(self.log)}")

    def stop(self) -> None:
        if self.proc is not None:
            _kill_group(self.proc)

    def cli(
        self, *args: str, timeout: float = 180.0, env: dict | None = None, unset: tuple[str, ...] = (), check: bool = True
    ) -> subprocess.CompletedProcess:
        run_env = {k: v for k, v in {**self.env, **(env or {})}.items() if k not in unset}
        proc = subprocess.run(
            [PREFECT, "--no-prompt", *args],
            cwd=PROJECT_ROOT,
            env=run_env,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"prefect {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
            )
        return proc

    def api_get(self, path: str) -> dict:
        with urllib.request.urlopen(f"{self.api_url}{path}", timeout=10) as r:
            return json.loads(r.read())


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory):
    server = PrefectServer(tmp_path_factory.mktemp("prefect_home"))
    try:
        server.start()
        server.cli("work-pool", "create", POOL, "--type", "process", "--overwrite")
        yield server
    finally:
        server.stop()


def _run_worker_once(server: PrefectServer, log: Path, timeout: float) -> int:
    with open(log, "wb") as fh:
        worker = subprocess.Popen(
            [PREFECT, "worker", "start", "--pool", POOL, "--type", "process", "--run-once"],
            cwd=PROJECT_ROOT,
            env=server.env,
            stdout=fh,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    try:
        return worker.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"worker did not finish within {timeout}s:\n{_tail(log)}")
    finally:
        _kill_group(worker)


@pytest.mark.timeout(900)
def test_manual_deployment_runs_to_completion(prefect_server: PrefectServer, tmp_path: Path):
    from tasks.sample_catalog import write_sample_catalog

    server = prefect_server
    catalog = tmp_path / "catalog.csv"
    write_sample_catalog(out_path=str(catalog), n=N_ITEMS, seed=0)
    out = tmp_path / "out"

    # SEMID_HOME unset while deploying: the pull step keeps "{{ $SEMID_HOME }}" and the
    # flow-run process resolves it from the worker's environment (server.env sets it).
    deployed = server.cli("deploy", "--name", "manual", "--prefect-file", PREFECT_FILE, unset=("SEMID_HOME",))
    assert "retokenize/manual" in deployed.stdout, deployed.stdout
    manual = json.loads(server.cli("deployment", "inspect", "retokenize/manual", "--output", "json").stdout)
    assert manual["pull_steps"] == [
        {"prefect.deployments.steps.set_working_directory": {"directory": "{{ $SEMID_HOME }}"}}
    ]

    params = {
        "catalog": str(catalog),
        "out": str(out),
        "name": "it",
        "run_id": "r1",
        "config": TINY_CONFIG,
    }
    created = server.cli("deployment", "run", "retokenize/manual", "--params", json.dumps(params))
    ids = UUID_RE.findall(created.stdout)
    assert ids, created.stdout
    flow_run_id = ids[-1]

    t0 = time.monotonic()
    worker_log = tmp_path / "worker.log"
    rc = _run_worker_once(server, worker_log, timeout=780)
    elapsed = time.monotonic() - t0
    print(f"worker --run-once: rc={rc}, {elapsed:.1f}s")

    inspected = json.loads(server.cli("flow-run", "inspect", flow_run_id, "--output", "json").stdout)
    state = inspected.get("state") or {}
    assert state.get("type") == "COMPLETED", (
        f"flow run {flow_run_id} ended {state.get('type')} ({state.get('message')}) "
        f"after {elapsed:.0f}s, worker rc={rc}:\n{_tail(worker_log, 12000)}"
    )
    assert inspected["parameters"]["run_id"] == "r1"

    prefix = out / "it" / "r1"
    if not (prefix / "_SUCCESS").exists():  # prefix layout is the flow's business; find the one finished run
        done = sorted(out.rglob("_SUCCESS"))
        assert len(done) == 1, f"expected one finished prefix under {out}, found {done}"
        prefix = done[0].parent
    assert (prefix / "_SUCCESS").is_file()
    parts = sorted((prefix / "semantic_ids").glob("*.parquet"))
    assert parts, f"no semantic_ids/*.parquet under {prefix}"

    import pyarrow.parquet as pq

    table = pq.read_table([str(p) for p in parts]) if len(parts) > 1 else pq.read_table(parts[0])
    sids = table.column("sid").to_pylist()
    assert 0 < len(sids) <= N_ITEMS
    assert len(set(sids)) == len(sids), "semantic IDs must be unique"
    manifest = prefix / "manifest.json"
    if manifest.exists():
        counts = json.loads(manifest.read_text()).get("counts", {})
        if counts:
            assert counts.get("input") == N_ITEMS
            assert counts.get("ided") == len(sids)


def test_deploy_all_registers_nightly_cron(prefect_server: PrefectServer, tmp_path: Path):
    server = prefect_server
    extra_env = {
        "SEMID_NIGHTLY_CATALOG": str(tmp_path / "live_catalog.parquet"),
        "SEMID_OUT": str(tmp_path / "out"),
    }
    deployed = server.cli("deploy", "--all", "--prefect-file", PREFECT_FILE, env=extra_env)
    for name in ("nightly", "backfill", "manual"):
        assert f"retokenize/{name}" in deployed.stdout, deployed.stdout

    text = server.cli("deployment", "inspect", "retokenize/nightly").stdout
    assert "0 3 * * *" in text, text

    nightly = json.loads(server.cli("deployment", "inspect", "retokenize/nightly", "--output", "json").stdout)
    crons = [(s["schedule"].get("cron"), s["schedule"].get("timezone"), s.get("active")) for s in nightly["schedules"]]
    assert crons == [("0 3 * * *", "UTC", True)], crons
    assert nightly["work_pool_name"] == POOL
    assert nightly["entrypoint"] == "flows/retokenize.py:retokenize"
    # Prefect 3.8 backs a deployment concurrency limit with a global concurrency limit
    assert (nightly.get("global_concurrency_limit") or {}).get("limit") == 1 or nightly.get("concurrency_limit") == 1
    assert (nightly.get("concurrency_options") or {}).get("collision_strategy") == "ENQUEUE"
    # deploy-time env templating filled the nightly parameters
    assert nightly["parameters"] == {"catalog": extra_env["SEMID_NIGHTLY_CATALOG"], "out": extra_env["SEMID_OUT"], "prior_run": "latest"}
    # SEMID_HOME set while deploying: the checkout path is baked into the pull step
    assert nightly["pull_steps"] == [
        {"prefect.deployments.steps.set_working_directory": {"directory": str(PROJECT_ROOT)}}
    ]

    for name in ("backfill", "manual"):
        dep = json.loads(server.cli("deployment", "inspect", f"retokenize/{name}", "--output", "json").stdout)
        assert dep["schedules"] == [], (name, dep["schedules"])
        assert dep["work_pool_name"] == POOL
