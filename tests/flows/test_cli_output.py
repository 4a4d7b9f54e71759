"""What a user sees on the terminal: the demo stays short, bad input is one line, --json parses.

Real ``semid`` processes (not in-process calls): only a real process has file
descriptors for Ray's and Prefect's output to escape through, and that is what
the CLI must keep off the terminal.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from flows.cli import QUIET_ENV
from tests.flows.conftest import TINY

SEMID = Path(sys.executable).parent / "semid"
LINE_BUDGET = 30  # the whole demo (sample + run + inspect) on the terminal
STAGES = ("ingest", "embed", "fit", "assign", "export")

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not SEMID.exists(), reason="console script not installed (pip install -e .)")]


def semid(cwd: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "RAY_ADDRESS"))}
    env.update(QUIET_ENV)
    env["PREFECT_HOME"] = str(cwd / "prefect-home")
    return subprocess.run([str(SEMID), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def test_demo_output_stays_within_the_line_budget_and_logs_go_to_the_file(tmp_path):
    (tmp_path / "tiny.json").write_text(json.dumps(TINY))
    run = ["run", "--catalog", "catalog.csv", "--out", "out", "--name", "demo", "--run-id", "demo", "--config", "tiny.json"]
    log = tmp_path / "out" / "demo" / "_logs" / "demo.log"
    terminal = []
    for args in (["sample", "--out", "catalog.csv", "--n", "300"], run, ["inspect", "out/demo/demo", "--codes", "2", "--per-code", "3"]):
        p = semid(tmp_path, *args)
        tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
        assert p.returncode == 0, f"semid {args[0]}: {p.stdout}{p.stderr}\nlog tail:\n{tail}"
        terminal += (p.stdout + p.stderr).splitlines()
    text = "\n".join(terminal)
    assert len(terminal) <= LINE_BUDGET, f"{len(terminal)} lines:\n{text}"
    assert not any(word in text for word in ("Traceback", "WARNING", "Warning", "(pid=", "Prefect")), text
    for stage in STAGES:  # one progress line per stage
        assert sum(line.startswith(f"  {stage} ") for line in terminal) == 1, text
    assert f"log: {log.resolve()}" in text and "semantic IDs:" in text
    written = log.read_text(errors="replace")
    assert "Beginning flow run" in written and "[semid-progress]" in written, "Prefect's and Ray's output went to the log"

    again = semid(tmp_path, *run, "--json")  # published already: the result, as JSON, without running anything
    assert again.returncode == 0, again.stderr
    result = json.loads(again.stdout)
    assert result["skipped"] is True and result["counts"]["ided"] == 300 and result["log_file"] == str(log.resolve())


def test_bad_input_is_one_line_without_traceback_and_the_traceback_is_in_the_log(tmp_path):
    (tmp_path / "bad.csv").write_text("sku,title\n1,a\n2,b\n")
    p = semid(tmp_path, "run", "--catalog", "bad.csv", "--out", "out", "--run-id", "r1", "--json")
    assert p.returncode == 2, p.stdout + p.stderr
    assert len(p.stderr.strip().splitlines()) == 1 and p.stderr.startswith("semid: IngestError: id column 'item_id' not found"), p.stderr
    assert "Traceback" not in p.stdout + p.stderr
    error = json.loads(p.stdout)["error"]
    assert error["exit_code"] == 2 and error["type"] == "IngestError"
    log = Path(error["log_file"])
    assert log == (tmp_path / "out" / "bad" / "_logs" / "r1.log").resolve() and "Traceback" in log.read_text()
