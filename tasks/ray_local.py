"""A local Ray cluster that never outlives the process that asked for it, even after SIGKILL.

``ray.init()`` in the driver starts gcs_server and raylet as the driver's children; when
the driver is SIGKILLed, Ray's DashboardAgent, RuntimeEnvAgent and idle workers stay
behind as orphans (on a nightly host they pile up). So a local cluster is started by a
small *keeper* process instead, in a session of its own:

* the keeper (``python -m tasks.ray_local``) calls ``setsid`` (new session), starts Ray
  with ``ray.init(address="local")`` (never joining some other cluster on the host), prints
  the address on one line and then reads its stdin, a pipe whose only writer is the owner;
* when the owner exits, however it exits, the kernel closes that pipe: the keeper
  SIGKILLs every process in its session (Ray's workers start their own process groups
  but stay in the session), then exits;
* a record ``<tmp>/semid-ray/<keeper pid>.json`` names the session and its owner; the next
  ``start()`` on the host kills sessions whose owner is gone (the keeper itself SIGKILLed,
  e.g. by the OOM killer) and removes their records.

Linux ``/proc`` is used to find a session's processes; elsewhere only the keeper's own
process group is killed.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

START_TIMEOUT_S = float(os.environ.get("SEMID_RAY_START_TIMEOUT", "300"))


def records_dir() -> Path:
    return Path(os.environ.get("SEMID_RAY_RECORDS") or os.path.join(tempfile.gettempdir(), "semid-ray"))


# --------------------------------------------------------------------------- processes (Linux /proc)


def _stat(pid: int) -> tuple[int, int, int] | None:
    """(session id, process group, start time in clock ticks) of a live process, or None."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2 :].split()
    if fields[0] == "Z":  # a zombie holds nothing and cannot be killed further
        return None
    return int(fields[3]), int(fields[2]), int(fields[19])


def start_time(pid: int) -> int | None:
    st = _stat(pid)
    return None if st is None else st[2]


def alive(pid: int, started: int | None) -> bool:
    """``pid`` runs and is the same process as recorded (pids are reused)."""
    st = _stat(pid)
    return st is not None and (started is None or st[2] == started)


def session_members(sid: int) -> list[int]:
    """Every live process in session ``sid``."""
    pids = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            st = _stat(int(entry.name))
            if st is not None and st[0] == sid:
                pids.append(int(entry.name))
    return pids


def kill_session(sid: int) -> None:
    """SIGKILL every process of session ``sid`` except the caller; the caller's own is left for last."""
    me = os.getpid()
    if not os.path.isdir("/proc"):  # pragma: no cover - not Linux: the keeper's process group at least
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if sid != os.getpgid(0):
                os.killpg(sid, signal.SIGKILL)
        return
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # a worker may be forking while we kill: look again until none is left
        members = [p for p in session_members(sid) if p != me]
        if not members:
            return
        for pid in members:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.05)


# --------------------------------------------------------------------------- records


def _record_path(keeper_pid: int) -> Path:
    return records_dir() / f"{keeper_pid}.json"


def reap_stale() -> list[int]:
    """Kill the sessions of local clusters whose owner is gone; return their keeper pids."""
    reaped = []
    directory = records_dir()
    if not directory.is_dir():
        return reaped
    for path in directory.glob("*.json"):
        try:
            rec = json.loads(path.read_text())
            sid, owner, owner_start = int(rec["sid"]), int(rec["owner_pid"]), rec.get("owner_start")
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if alive(owner, owner_start):
            continue
        if os.path.isdir("/proc") and session_members(sid):
            kill_session(sid)
            reaped.append(sid)
        with contextlib.suppress(OSError):
            path.unlink()
    return reaped


# --------------------------------------------------------------------------- the owner's side


@dataclass
class LocalRay:
    """A running keeper: ``address`` to pass to ``ray.init``; ``stop()`` ends the cluster."""

    address: str
    process: subprocess.Popen

    @property
    def sid(self) -> int:
        return self.process.pid

    def stop(self, timeout: float = 30.0) -> None:
        """Close the keeper's pipe and wait for it; kill the session if it does not finish in time."""
        with contextlib.suppress(OSError):
            self.process.stdin.close()
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass
        kill_session(self.sid)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=5)
        with contextlib.suppress(OSError):
            self.process.stdout.close()
        with contextlib.suppress(OSError):
            _record_path(self.sid).unlink()


def start(num_cpus: int | None = None) -> LocalRay:
    """Start a local cluster in its own session and return once it accepts drivers."""
    reap_stale()
    cmd = [sys.executable, "-m", "tasks.ray_local"] + ([f"--num-cpus={num_cpus}"] if num_cpus is not None else [])
    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)
    root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    # stderr is inherited: Ray's start-up messages go wherever this process logs (the CLI's log file).
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, start_new_session=True, text=True)
    records_dir().mkdir(parents=True, exist_ok=True)
    record = {"sid": proc.pid, "owner_pid": os.getpid(), "owner_start": start_time(os.getpid()), "created": time.time()}
    _record_path(proc.pid).write_text(json.dumps(record))
    line: list[str] = []
    reader = threading.Thread(target=lambda: line.append(proc.stdout.readline()), daemon=True)
    reader.start()
    reader.join(START_TIMEOUT_S)
    local = LocalRay(address="", process=proc)
    try:
        info = json.loads(line[0]) if line and line[0] else None
    except ValueError:
        info = None
    if not info or "address" not in info:
        local.stop(timeout=5)
        why = f"exited with {proc.returncode}" if proc.returncode is not None else f"gave no address within {START_TIMEOUT_S:.0f}s"
        raise RuntimeError(f"the local Ray cluster did not start ({why}); Ray's messages are in the log")
    local.address = info["address"]
    return local


# --------------------------------------------------------------------------- the keeper


def _keep(num_cpus: int | None) -> None:
    import logging

    import ray

    out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # anything Ray prints goes to stderr (the owner's log); stdout carries the address only
    ctx = ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
    out.write(json.dumps({"address": ctx.address_info["gcs_address"]}) + "\n")
    out.flush()
    try:
        sys.stdin.read()  # returns at EOF: the owner closed the pipe or died
    finally:
        # No graceful ray.shutdown(): the cluster holds nothing worth saving, and a hard
        # kill of the whole session is quick and leaves no process behind. os._exit skips
        # Ray's atexit hook, which would wait on the GCS just killed.
        kill_session(os.getsid(0))
        sys.stderr.flush()
        os._exit(0)


def main(argv: list[str] | None = None) -> None:
    import argparse

    p = argparse.ArgumentParser(prog="python -m tasks.ray_local", description="Keeper of a local Ray cluster (started by semid; not for direct use).")
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs Ray schedules on (default: all)")
    args = p.parse_args(argv)
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda *_: sys.exit(0))  # interrupts the read: clean up as at EOF
    _keep(args.num_cpus)


if __name__ == "__main__":
    main()
