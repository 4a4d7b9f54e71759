"""Publishing rules that need no Ray: reconcile, finished-run lookup."""

import pytest

from tasks.export import ReconcileError, latest_published, reconcile


def test_reconcile_refuses_lost_rows():
    assert reconcile(input=10, ided=8, quarantined=2) == {"input": 10, "ided": 8, "quarantined": 2}
    with pytest.raises(ReconcileError, match="input 10 != ided 7 \\+ quarantined 2"):
        reconcile(input=10, ided=7, quarantined=2)


def test_latest_published_skips_unfinished_work_and_the_current_run(tmp_path):
    catalog = tmp_path / "shop"
    for run_id, finished in [("20261120T030000Z", True), ("20261121T030000Z", True), ("20261122T030000Z", False), ("_work", False)]:
        (catalog / run_id).mkdir(parents=True)
        if finished:
            (catalog / run_id / "_SUCCESS").write_bytes(b"")
    (catalog / ".lock").write_text("")
    assert latest_published(str(catalog), exclude="20261123T030000Z").endswith("20261121T030000Z")
    assert latest_published(str(catalog), exclude="20261121T030000Z").endswith("20261120T030000Z")
    assert latest_published(str(tmp_path / "nothing"), exclude="x") is None
