"""The `semid` console script: help for every option, sample generation, --version, --json, validate."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from flows.cli import _parser, main

SEMID = Path(sys.executable).parent / "semid"


def test_help_documents_every_option():
    parser = _parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert set(sub.choices) == {"run", "validate", "backfill", "gc", "sample", "inspect", "similar", "evaluate"}
    for name, subparser in sub.choices.items():
        for action in subparser._actions:
            if action.dest != "help":
                assert action.help, f"semid {name}: option {action.option_strings or action.dest} has no help"


@pytest.mark.skipif(not SEMID.exists(), reason="console script not installed (pip install -e .)")
def test_console_script_runs():
    out = subprocess.run([str(SEMID), "run", "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "--catalog" in out.stdout and "--set" in out.stdout


def test_sample_writes_a_catalog(tmp_path, capsys):
    path = tmp_path / "c.csv"
    assert main(["sample", "--out", str(path), "--n", "50", "--seed", "3"]) == 0
    assert "wrote 50 items" in capsys.readouterr().out
    lines = path.read_text().splitlines()
    assert lines[0].startswith("item_id,") and len(lines) == 51


def test_inspect_of_an_unfinished_prefix_is_a_clear_error(tmp_path, capsys):
    assert main(["inspect", str(tmp_path / "nothing")]) == 2
    assert "not a finished run" in capsys.readouterr().err


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    out = capsys.readouterr().out.strip()
    assert out.startswith("semid ") and out.split()[1][0].isdigit(), out


def test_json_output_parses(tmp_path, capsys):
    path = tmp_path / "c.csv"
    assert main(["sample", "--out", str(path), "--n", "20", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"out": str(path), "items": 20, "seed": 0}
    assert main(["inspect", str(tmp_path / "nothing"), "--json"]) == 2
    captured = capsys.readouterr()
    error = json.loads(captured.out)["error"]
    assert error["exit_code"] == 2 and "not a finished run" in error["message"]
    assert len(captured.err.strip().splitlines()) == 1 and captured.err.startswith("semid: ")


def test_validate_checks_columns_and_capacity_without_starting_ray(tmp_path, capsys):
    import ray

    catalog = tmp_path / "shop.csv"
    assert main(["sample", "--out", str(catalog), "--n", "40"]) == 0
    capsys.readouterr()

    assert main(["validate", "--catalog", str(catalog), "--out", str(tmp_path / "out"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] and report["counts"]["valid"] == 40
    assert [c["check"] for c in report["checks"]] == ["config", "catalog", "capacity", "out"]

    assert main(["validate", "--catalog", str(catalog), "--id-column", "sku"]) == 2
    captured = capsys.readouterr()
    assert "FAIL  catalog" in captured.out and "'sku' not found" in captured.out
    assert captured.err.strip().splitlines() == [captured.err.strip()] and "validation failed: catalog" in captured.err

    assert main(["validate", "--catalog", str(catalog), "--set", "model.codebook_size=2", "--set", "model.n_levels=2", "--json"]) == 2
    report = json.loads(capsys.readouterr().out)
    capacity = next(c for c in report["checks"] if c["check"] == "capacity")
    assert not report["ok"] and not capacity["ok"] and "40 IDs are needed" in capacity["detail"] and "2**3 = 8" in capacity["detail"]

    assert main(["validate", "--catalog", str(catalog), "--prior-run", str(tmp_path / "no-such-run")]) == 2
    assert "FAIL  prior" in capsys.readouterr().out
    assert not ray.is_initialized(), "validate never starts Ray"
    assert not (tmp_path / "out").exists(), "validate writes nothing"
