"""Session-wide fixtures shared by more than one test package."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def prefect_test_api():
    """Prefect's test harness (a temporary database and ephemeral API), started once per session.

    tests/flows (every test) and tests/reliability (the few tests that enter the flow) both need one; they
    share it instead of each starting its own server.
    """
    from prefect.logging.configuration import setup_logging
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        # Prefect binds its console log handler to sys.stderr when logging is first configured,
        # which is otherwise the first flow run: inside a test, that is capsys's stream, closed
        # when the test ends, and every later flow run then fails on logging. Configure it now,
        # against pytest's session-long stream, so tests' capsys sees only the CLI's own output
        # and the flow tests pass in any order.
        setup_logging(incremental=False)
        yield
