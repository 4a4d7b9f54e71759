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
def prefect_harness(prefect_test_api):
    """Prefect's test harness: a temporary database and ephemeral API for the session (tests/conftest.py,
    shared with tests/reliability)."""
    yield


@pytest.fixture(scope="module")
def one_ray():
    """One local Ray for a module's runs (each flow run reuses it instead of starting its own); module-scoped, so a
    module that asks for it pays one Ray start and the others keep starting their own."""
    from tasks.ray_runtime import ray_session

    with ray_session():
        yield
