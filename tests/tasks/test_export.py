"""Publishing rules that need no Ray: reconcile (finished-run lookup: tests/tasks/test_chain.py)."""

import pytest

from tasks.export import ReconcileError, reconcile


def test_reconcile_refuses_lost_rows():
    assert reconcile(input=10, ided=8, quarantined=2) == {"input": 10, "ided": 8, "quarantined": 2}
    with pytest.raises(ReconcileError, match="input 10 != ided 7 \\+ quarantined 2"):
        reconcile(input=10, ided=7, quarantined=2)

