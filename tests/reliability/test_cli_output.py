"""What a user sees on the terminal: a run stays short, bad input is one line, --json parses.

The run checked is the session's reference run (``helpers.reference_run``: a real
``semid run`` process on the tiny catalog and config, shared with the fault and
determinism tests), so the line budget costs no extra flow run. Only a real process
has file descriptors for Ray's and Prefect's output to escape through, and that is
what the CLI must keep off the terminal.
"""

from __future__ import annotations

import json

import pytest

from flows.cli import main
from tests.reliability import helpers as h

pytestmark = [pytest.mark.reliability, pytest.mark.slow]

LINE_BUDGET = 30  # `make demo`: sample + run + inspect, on the terminal
QUALITY_WARNING = "WARNING    the learned IDs "  # less coherent than, or fewer prefixes than, residual k-means
STAGES = ("ingest", "embed", "fit", "assign", "export")


def test_demo_output_stays_within_the_line_budget_and_logs_go_to_the_file(tmp_path, capsys):
    reference = h.reference_run()
    run_lines = reference.log.splitlines()
    assert main(["sample", "--out", str(tmp_path / "c.csv"), "--n", "20"]) == 0
    assert main(["inspect", str(reference.prefix), "--codes", "2", "--per-code", "3"]) == 0  # as `make demo` calls it
    captured = capsys.readouterr()
    terminal = captured.out.splitlines() + captured.err.splitlines() + run_lines
    text = "\n".join(terminal)
    assert len(terminal) <= LINE_BUDGET, f"{len(terminal)} lines:\n{text}"
    # semid's own quality warning (IDs less coherent or with fewer prefixes than residual k-means, issue 8) is product output, not log noise
    noise = "\n".join(line for line in terminal if not line.startswith(QUALITY_WARNING))
    assert not any(word in noise for word in ("Traceback", "WARNING", "Warning", "INFO", "(pid=", "Prefect")), text
    for stage in STAGES:  # one progress line per stage
        assert sum(line.startswith(f"  {stage} ") for line in run_lines) == 1, text
    log = reference.prefix.parent / "_logs" / "ref.log"
    assert f"log: {log}" in reference.log and "semantic IDs:" in reference.log
    written = log.read_text(errors="replace")
    assert "Beginning flow run" in written and "[semid-progress]" in written, "Prefect's and Ray's output went to the log"

    again = h.start_run(tmp_path, catalog=reference.catalog, out=reference.prefix.parent.parent, run_id="ref", config=reference.config, extra_args=["--json"])
    assert again.wait(timeout=300) == 0, again.output()
    result = json.loads(again.output().splitlines()[0])  # published already: the result as JSON, without running anything
    assert result["skipped"] is True and result["counts"] == h.manifest(reference.prefix)["counts"] and result["log_file"] == str(log)


def test_bad_input_is_one_line_without_traceback_and_the_traceback_is_in_the_log(tmp_path):
    (tmp_path / "bad.csv").write_text("sku,title\n1,a\n2,b\n")
    run = h.start_run(tmp_path, catalog=tmp_path / "bad.csv", out=tmp_path / "out", name="bad", run_id="r1", extra_args=["--json"])
    try:
        assert run.wait(timeout=300) == 2, run.output()
    finally:
        h.kill_tree(run.pid)
    lines = run.output().splitlines()
    errors = [line for line in lines if line.startswith("semid:")]
    assert len(lines) == 2 and len(errors) == 1, lines  # the JSON document and the one readable line
    assert errors[0].startswith("semid: IngestError: id column 'item_id' not found") and "Traceback" not in run.output()
    error = json.loads(next(line for line in lines if line.startswith("{")))["error"]
    assert error["exit_code"] == 2 and error["type"] == "IngestError"
    log = tmp_path / "out" / "bad" / "_logs" / "r1.log"
    assert error["log_file"] == str(log) and "Traceback" in log.read_text()
