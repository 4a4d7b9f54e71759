"""Shared machinery for the reliability tests: flow runs in subprocesses, process trees, outputs.

Each flow run here is a real ``semid run`` (the CLI) in its own process group
and session, with its own ephemeral Prefect API (``PREFECT_HOME`` in a temp
dir) and its own local Ray cluster. Tests observe it from outside (files
appearing, process names) and kill it with real signals. Nothing in the
product code knows about these tests.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import csv

import pyarrow.parquet as pq

from flows.cli import QUIET_ENV as CLI_QUIET_ENV

ROOT = Path(__file__).resolve().parents[2]
PYTHON = sys.executable

# TINY (tests/flows/conftest.py) with the embedder pinned to CPU, so a resumed
# embed stage is recognised without starting Ray for a GPU probe.
TINY = {
    "embed": {"batch_size": 64, "device": "cpu"},
    "model": {"hidden_dims": [128, 64], "codebook_size": 16, "n_levels": 3},
    "fit": {"epochs": 4, "batch_size": 64, "early_stop_patience": 0, "warmup_steps": 5},
}
N_ITEMS = 300
CATALOG_SEED = 7
SECRET = "reliability-secret-Zq9xV2"  # the AWS secret handed to every S3 run; must never be printed or stored

QUIET_ENV = {**CLI_QUIET_ENV, "PYTHONUNBUFFERED": "1"}


# --------------------------------------------------------------------------- catalogs and configs

FIELDS = ["item_id", "title", "brand", "categories", "description", "price"]


def write_catalog(path: Path, rows: list[dict], bad: bool = True) -> int:
    """A CSV catalog; ``bad`` adds the four rows tests/flows quarantines (2 empty ids, empty text, duplicate id)."""
    rows = list(rows)
    if bad:
        rows += [
            {**rows[0], "item_id": ""},
            {**rows[1], "item_id": "   "},
            {"item_id": "BLANK1", "title": "", "brand": "", "categories": "", "description": "", "price": "1"},
            {**rows[2], "title": rows[2]["title"] + " (duplicate)"},
        ]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS)
        w.writeheader()
        w.writerows(rows)
    return len(rows)



def catalog_rows(n: int = N_ITEMS, seed: int = CATALOG_SEED) -> list[dict]:
    from tasks.sample_catalog import generate_rows

    return generate_rows(n=n, seed=seed)


def make_catalog(path: Path, *, shuffle_seed: int | None = None, rows: list[dict] | None = None, bad: bool = True) -> Path:
    """The standard reliability catalog (N_ITEMS good rows + 4 bad ones), optionally in another row order."""
    rows = list(rows if rows is not None else catalog_rows())
    rows = list(rows)
    if shuffle_seed is None:
        write_catalog(path, rows, bad=bad)
        return path
    # shuffle after the bad rows are added, so they move too
    write_catalog(path, rows, bad=bad)
    lines = path.read_text().splitlines(keepends=True)
    header, body = lines[0], lines[1:]
    random.Random(shuffle_seed).shuffle(body)
    path.write_text(header + "".join(body))
    return path


def write_config(path: Path, **overrides: dict) -> Path:
    cfg = json.loads(json.dumps(TINY))
    for section, values in overrides.items():
        if isinstance(values, dict):
            cfg.setdefault(section, {}).update(values)
        else:
            cfg[section] = values
    path.write_text(json.dumps(cfg))
    return path


# --------------------------------------------------------------------------- running the flow


@dataclass
class Run:
    proc: subprocess.Popen
    log: Path
    started: float

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait(self, timeout: float = 300) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            kill_tree(self.pid)
            self.proc.wait(timeout=30)
            raise AssertionError(f"flow run did not finish in {timeout}s; log tail:\n{self.tail()}") from None

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def tail(self, n: int = 60) -> str:
        return "\n".join(self.output().splitlines()[-n:])


@functools.lru_cache(maxsize=1)
def prefect_api_url() -> str:
    """One ``prefect server`` (own PREFECT_HOME, own process group) shared by every run of the session.

    Each flow run could start its own ephemeral API instead, but that costs ~10 s
    a run on 2 CPUs; the runs only need *a* Prefect API, and the server also
    keeps the task-run history (retries) of runs that were killed.
    """
    import atexit
    import urllib.request

    home = Path(tempfile.mkdtemp(prefix="semid-reliability-prefect-"))
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(QUIET_ENV)
    env["PREFECT_HOME"] = str(home)
    log = open(home / "server.log", "wb")
    proc = subprocess.Popen(
        [str(Path(PYTHON).with_name("prefect")), "server", "start", "--host", "127.0.0.1", "--port", str(port), "--no-ui", "--analytics-off"],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )

    def stop() -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(Exception):
            proc.wait(timeout=10)

    atexit.register(stop)
    url = f"http://127.0.0.1:{port}/api"

    def healthy() -> bool:
        if proc.poll() is not None:
            raise AssertionError("prefect server exited: " + (home / "server.log").read_text(errors="replace")[-3000:])
        try:
            return urllib.request.urlopen(f"{url}/health", timeout=2).status == 200
        except Exception:  # noqa: BLE001
            return False

    wait_for(healthy, timeout=120, interval=0.3, what="the prefect server")
    return url


def subprocess_env(home: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "AWS_", "RAY_ADDRESS"))}
    env.update(QUIET_ENV)
    env["PREFECT_HOME"] = str(home)
    env["PREFECT_API_URL"] = prefect_api_url()
    env["PREFECT_LOGGING_LEVEL"] = "INFO"
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra or {})
    return env


def start_run(
    tmp: Path,
    *,
    catalog: str | Path,
    out: str | Path,
    run_id: str,
    name: str = "shop",
    config: Path | None = None,
    sets: list[str] | None = None,
    env: dict[str, str] | None = None,
    tag: str | None = None,
    extra_args: list[str] | None = None,
) -> Run:
    """Start ``semid run`` in a new session (its own process group); stdout+stderr go to a log file."""
    tag = tag or run_id
    home = tmp / f"prefect-{tag}"
    home.mkdir(parents=True, exist_ok=True)
    log = tmp / f"run-{tag}.log"
    cmd = [PYTHON, "-m", "flows.cli", "run", "--catalog", str(catalog), "--out", str(out), "--name", name, "--run-id", run_id]
    if config is not None:
        cmd += ["--config", str(config)]
    for s in sets or []:
        cmd += ["--set", s]
    cmd += extra_args or []
    fh = open(log, "wb")
    proc = subprocess.Popen(cmd, cwd=ROOT, env=subprocess_env(home, env), stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    fh.close()
    return Run(proc=proc, log=log, started=time.monotonic())


def run_flow(tmp: Path, *, timeout: float = 300, **kwargs) -> tuple[int, str]:
    """Run ``semid run`` to the end and make sure nothing it started outlives it."""
    run = start_run(tmp, **kwargs)
    try:
        code = run.wait(timeout)
    finally:
        kill_tree(run.pid)
    return code, run.output()


# --------------------------------------------------------------------------- processes


def _ps() -> list[tuple[int, int, int, str]]:
    """(pid, ppid, pgid, cmdline) of every process."""
    out = subprocess.run(["ps", "-ww", "-eo", "pid=,ppid=,pgid=,args="], capture_output=True, text=True, check=True).stdout
    rows = []
    for line in out.splitlines():
        parts = line.split(None, 3)
        if len(parts) == 4:
            rows.append((int(parts[0]), int(parts[1]), int(parts[2]), parts[3]))
    return rows


def descendants(root_pid: int) -> list[tuple[int, str]]:
    """Every process below ``root_pid`` (children, grandchildren, ...) with its command line.

    Processes in ``root_pid``'s process group count too: Ray's raylet can be
    re-parented once its parent exits, but it keeps the group.
    """
    rows = _ps()
    children: dict[int, list[int]] = {}
    for pid, ppid, _, _ in rows:
        children.setdefault(ppid, []).append(pid)
    found: set[int] = set()
    stack = [root_pid]
    while stack:
        p = stack.pop()
        for c in children.get(p, []):
            if c not in found:
                found.add(c)
                stack.append(c)
    found |= {pid for pid, _, pgid, _ in rows if pgid == root_pid and pid != root_pid}
    cmd = {pid: args for pid, _, _, args in rows}
    return sorted((p, cmd[p]) for p in found if p in cmd)


def find_procs(root_pid: int, *needles: str) -> list[int]:
    return [pid for pid, args in descendants(root_pid) if any(n in args for n in needles)]


def kill_tree(root_pid: int) -> None:
    """SIGKILL a run's process group and anything it left behind (Ray's raylet/gcs/workers)."""
    leftovers = [pid for pid, _ in descendants(root_pid)]
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(root_pid, signal.SIGKILL)
    for pid in leftovers:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


def wait_for(predicate: Callable[[], object], *, timeout: float, interval: float = 0.05, what: str = "condition", run: Run | None = None):
    """Poll until ``predicate()`` is truthy; fail with the run's log when the run ends or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if run is not None and run.proc.poll() is not None:
            value = predicate()
            if value:
                return value
            raise AssertionError(f"run exited ({run.proc.returncode}) before {what}; log tail:\n{run.tail()}")
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}" + (f"; log tail:\n{run.tail()}" if run else ""))


# --------------------------------------------------------------------------- outputs


def success_markers(root: Path) -> list[Path]:
    return sorted(root.rglob("_SUCCESS"))


def read_ids(prefix: Path):
    """The published semantic_ids table, decoded (all parts, in file order)."""
    return pq.read_table(prefix / "semantic_ids").select(["item_id", "codes", "sid", "text_hash"])


def ids_bytes(prefix: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((prefix / "semantic_ids").glob("*.parquet"))}


def read_json(path: Path, drop: tuple[str, ...] = ()) -> dict:
    data = json.loads(path.read_text())
    return {k: v for k, v in data.items() if k not in drop}


def manifest(prefix: Path) -> dict:
    return json.loads((prefix / "manifest.json").read_text())


# --------------------------------------------------------------------------- the reference run (shared)


@dataclass(frozen=True)
class Reference:
    catalog: Path
    config: Path
    prefix: Path
    ids_hash: str
    log: str
    shuffled_catalog: Path
    shuffled_prefix: Path
    """The same catalog with its rows shuffled, run side by side with the reference (for test_determinism)."""


@functools.lru_cache(maxsize=1)
def reference_run() -> Reference:
    """One uninterrupted run of the standard catalog and config, shared by every test in the session.

    Its twin on the shuffled catalog runs at the same time (own output root, own
    embedding cache): two runs side by side cost less wall time than one after the other.
    """
    tmp = Path(tempfile.mkdtemp(prefix="semid-reliability-ref-"))
    catalog = make_catalog(tmp / "shop.csv")
    shuffled = make_catalog(tmp / "shop-shuffled.csv", shuffle_seed=123)
    config = write_config(tmp / "tiny.json")
    runs = {
        "ref": start_run(tmp, catalog=catalog, out=tmp / "out", run_id="ref", config=config),
        "shuffled": start_run(tmp, catalog=shuffled, out=tmp / "out-shuffled", run_id="shuffled", config=config),
    }
    try:
        codes = {k: r.wait(timeout=400) for k, r in runs.items()}
    finally:
        for r in runs.values():
            kill_tree(r.pid)
    for k, code in codes.items():
        assert code == 0, f"{k} run failed ({code}):\n{runs[k].tail()}"
    prefix = tmp / "out" / "shop" / "ref"
    return Reference(
        catalog=catalog, config=config, prefix=prefix, ids_hash=manifest(prefix)["ids_hash"], log=runs["ref"].output(),
        shuffled_catalog=shuffled, shuffled_prefix=tmp / "out-shuffled" / "shop" / "shuffled",
    )


# --------------------------------------------------------------------------- a moto server we can stop


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def moto_server_process(tmp: Path) -> Iterator[tuple[str, subprocess.Popen]]:
    """A ``moto_server`` subprocess on 127.0.0.1 that the test may stop at any moment."""
    port = free_port()
    exe = Path(PYTHON).with_name("moto_server")
    log = open(tmp / f"moto-{port}.log", "wb")
    proc = subprocess.Popen([str(exe), "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    endpoint = f"http://127.0.0.1:{port}"
    try:
        import urllib.request

        def up() -> bool:
            try:
                urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1).read()
                return True
            except Exception:  # noqa: BLE001
                return False

        wait_for(up, timeout=30, interval=0.2, what="moto_server to listen")
        yield endpoint, proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        log.close()


def s3_env(endpoint: str) -> dict[str, str]:
    return {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": SECRET,
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": endpoint,
    }


def s3_client(endpoint: str):
    import boto3

    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="testing", aws_secret_access_key=SECRET)


def s3_keys(endpoint: str, bucket: str) -> list[str]:
    client = s3_client(endpoint)
    keys: list[str] = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        keys += [o["Key"] for o in page.get("Contents", [])]
    return keys
