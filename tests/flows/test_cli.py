"""The `semid` console script: help for every option, sample generation."""

import subprocess
import sys
from pathlib import Path

import pytest

from flows.cli import _parser, main

SEMID = Path(sys.executable).parent / "semid"


def test_help_documents_every_option():
    parser = _parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert set(sub.choices) == {"run", "sample", "inspect", "similar"}
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
