"""A real Prefect server (and workers) on 127.0.0.1 for the integration tests, offline.

``prefect_server`` (one per test session) is the session's ``prefect server start`` on a
free localhost port with its own PREFECT_HOME and process group (tests/reliability/helpers.py
``prefect_api_url``, shared with the reliability runs), and creates
the ``semid-process`` work pool that deploy/prefect.yaml targets; ``deployed``
deploys deploy/prefect.yaml on it as shipped (``prefect deploy --all``).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[2]
PREFECT_FILE = "deploy/prefect.yaml"
BIN = Path(sys.executable).parent
PREFECT = str(BIN / "prefect")
POOL = "semid-process"


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

    def attach(self, api_url: str) -> None:
        """Use a server that is already running (its owner stops it) instead of starting one."""
        self.api_url = api_url
        self.env["PREFECT_API_URL"] = api_url

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


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory):
    """The session's one real ``prefect server`` (tests/reliability/helpers.py starts it on first use and stops it at
    exit; the reliability runs use it too), with this package's own PREFECT_HOME for the CLI and the work pool."""
    from tests.reliability.helpers import prefect_api_url

    server = PrefectServer(tmp_path_factory.mktemp("prefect_home"))
    try:
        server.attach(prefect_api_url())
        server.cli("work-pool", "create", POOL, "--type", "process", "--overwrite")
        yield server
    finally:
        server.stop()


class Worker:
    """``prefect worker start`` on the semid-process pool, polling every second, in its own process group."""

    def __init__(self, server: PrefectServer, log: Path, env: dict[str, str] | None = None):
        self.log = log
        run_env = {**server.env, "PREFECT_WORKER_QUERY_SECONDS": "1", "PREFECT_WORKER_PREFETCH_SECONDS": "1", **(env or {})}
        with open(log, "wb") as fh:
            self.proc = subprocess.Popen(
                [PREFECT, "worker", "start", "--pool", POOL, "--type", "process"],
                cwd=PROJECT_ROOT, env=run_env, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            )

    def stop(self) -> None:
        _kill_group(self.proc)

    def tail(self, n: int = 12000) -> str:
        return _tail(self.log, n)


def api(server: PrefectServer, method: str, path: str, body: dict | None = None) -> dict | list | None:
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


@pytest.fixture(scope="session")
def deployed(prefect_server: PrefectServer) -> dict[str, dict]:
    """deploy/prefect.yaml as shipped, with both work pools present (the kubernetes one has no worker here)."""
    api(prefect_server, "POST", "/work_pools/", {"name": "semid-kubernetes", "type": "kubernetes"})
    # Deploy-time values that must NOT end up in the deployments (they are read when a run starts).
    prefect_server.cli("deploy", "--all", "--prefect-file", PREFECT_FILE, env={"SEMID_OUT": "/deploy-time", "SEMID_CATALOGS": "/deploy-time"})
    out = {}
    for name in ("retokenize/nightly-beauty", "retokenize/nightly-beauty-k8s", "backfill/backfill", "retokenize/manual", "gc/gc-beauty"):
        out[name] = api(prefect_server, "GET", f"/deployments/name/{name}")
    return out


