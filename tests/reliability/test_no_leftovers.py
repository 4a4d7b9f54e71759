"""No leftovers: a local Ray cluster started by ``semid`` never outlives it, SIGKILL included.

Before, a SIGKILLed ``semid run`` left its Ray's DashboardAgent, RuntimeEnvAgent and
idle workers running as orphans (STACK.md); on a nightly host they pile up.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from tasks import ray_local
from tests.reliability import helpers as h

pytestmark = [pytest.mark.reliability, pytest.mark.slow, pytest.mark.skipif(not os.path.isdir("/proc"), reason="needs Linux /proc")]

RAY_NAMES = ("raylet", "gcs_server", "ray::DashboardAgent", "ray::RuntimeEnvAgent")


def ray_processes(root_pid: int) -> dict[int, tuple[str, int | None]]:
    """Ray's processes below ``root_pid``: pid -> (command line, start time)."""
    return {pid: (args, ray_local.start_time(pid)) for pid, args in h.descendants(root_pid) if "ray::" in args or any(n in args for n in RAY_NAMES)}


def cluster_with_a_worker(root_pid: int) -> dict[int, tuple[str, int | None]] | None:
    procs = ray_processes(root_pid)
    names = " ".join(args for args, _ in procs.values())
    workers = [a for a, _ in procs.values() if a.startswith("ray::") and a not in ("ray::DashboardAgent", "ray::RuntimeEnvAgent")]
    return procs if all(n in names for n in RAY_NAMES) and workers else None


def still_running(procs: dict[int, tuple[str, int | None]]) -> list[str]:
    return [f"{pid} {args[:80]}" for pid, (args, started) in procs.items() if ray_local.alive(pid, started)]


def test_sigkill_of_semid_run_leaves_no_ray_process(tmp_path):
    catalog = h.make_catalog(tmp_path / "shop.csv")
    config = h.write_config(tmp_path / "tiny.json")
    run = h.start_run(tmp_path, catalog=catalog, out=tmp_path / "out", run_id="killed", config=config)
    try:
        seen: list[str] = []

        def ready():
            procs = cluster_with_a_worker(run.pid)
            seen[:] = [args[:60] for args, _ in ray_processes(run.pid).values()]
            return procs

        try:
            procs = h.wait_for(ready, timeout=300, interval=0.2, what="Ray with a worker", run=run)
        except AssertionError as e:
            raise AssertionError(f"{e}\nlast seen Ray processes: {seen}") from None
        keeper = {p for p, (args, _) in procs.items() if "raylet" in args}
        sessions = {os.getsid(p) for p in keeper}
        os.kill(run.pid, signal.SIGKILL)  # the semid process alone, as `kill -9 PID` does
        run.proc.wait(timeout=30)
        h.wait_for(lambda: not still_running(procs), timeout=60, interval=0.2, what="Ray's processes to exit after the SIGKILL")
        left = lambda: [f"{p} {cmdline(p)[:80]}" for sid in sessions for p in ray_local.session_members(sid)]  # noqa: E731
        try:
            h.wait_for(lambda: not left(), timeout=30, interval=0.2, what="the Ray session to be empty")
        except AssertionError as e:
            raise AssertionError(f"{e}: {left()}") from None
    finally:
        h.kill_tree(run.pid)


OWNER = textwrap.dedent("""
    import sys, time
    from tasks import ray_local
    local = ray_local.start(num_cpus=1)
    print(local.sid, flush=True)
    time.sleep(600)
""")


def cmdline(pid: int) -> str:
    try:
        return open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def test_next_start_reaps_a_cluster_whose_keeper_could_not_clean_up(tmp_path, monkeypatch):
    """Owner and keeper both gone without cleaning (keeper frozen, then everything SIGKILLed): the next start reaps it."""
    monkeypatch.setenv("SEMID_RAY_RECORDS", str(tmp_path / "records"))
    owner = subprocess.Popen([sys.executable, "-c", OWNER], cwd=h.ROOT, env={**os.environ, **h.QUIET_ENV}, stdout=subprocess.PIPE, text=True, start_new_session=True)
    sid = None
    try:
        sid = int(owner.stdout.readline())
        os.kill(sid, signal.SIGSTOP)  # the keeper cannot react to its owner's death
        os.killpg(owner.pid, signal.SIGKILL)
        owner.wait(timeout=30)
        left = " ".join(cmdline(p) for p in ray_local.session_members(sid))
        assert "raylet" in left and "gcs_server" in left, f"the frozen keeper's cluster is still there: {left[:300]}"
        assert ray_local.reap_stale() == [sid]
        h.wait_for(lambda: not ray_local.session_members(sid), timeout=30, what="the reaped session to be empty")
        assert not list((tmp_path / "records").glob("*.json")), "the record is removed"
    finally:
        owner.kill()
        if sid is not None:
            ray_local.kill_session(sid)
