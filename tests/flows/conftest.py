import os

import pytest

os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

# A tiny but complete configuration: every stage runs for real, in well under a minute.
TINY = {
    "embed": {"batch_size": 64},
    "model": {"hidden_dims": [128, 64], "codebook_size": 16, "n_levels": 3},
    "fit": {"epochs": 4, "batch_size": 64, "early_stop_patience": 0, "warmup_steps": 5},
}


@pytest.fixture(scope="session", autouse=True)
def prefect_harness(tmp_path_factory):
    """Prefect's test harness: a temporary database and ephemeral API for the session."""
    from prefect.testing.utilities import prefect_test_harness

    from prefect.logging.configuration import setup_logging

    with prefect_test_harness(server_startup_timeout=120):
        # Prefect binds its console handler to the stream of the first flow run; inside a test with capsys that
        # stream closes when the test ends and every later flow run fails on logging. Bind it to pytest's
        # session stream now, so the flow tests pass in any order (as tests/reliability/conftest.py does).
        setup_logging(incremental=False)
        yield
