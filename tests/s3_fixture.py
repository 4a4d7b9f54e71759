"""A reusable moto S3 fixture: ``from tests.s3_fixture import moto_s3  # noqa``.

One ``ThreadedMotoServer`` on 127.0.0.1 (a free port) is started lazily per
test process and stopped at exit. Each test that uses ``moto_s3`` gets a fresh
moto state (reset through moto's API), the standard AWS environment pointed at
the server (so s3fs, boto3 and ``tasks.storage.polars_storage_options`` all
find it), and an empty bucket ``test-bucket``. The fixture yields the endpoint URL.
"""

from __future__ import annotations

import atexit
import logging
import threading
import urllib.request

import pytest

BUCKET = "test-bucket"

_lock = threading.Lock()
_endpoint: str | None = None


def _start_server() -> str:
    global _endpoint
    with _lock:
        if _endpoint is None:
            from moto.server import ThreadedMotoServer

            logging.getLogger("werkzeug").setLevel(logging.ERROR)
            server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
            server.start()
            host, port = server.get_host_and_port()
            _endpoint = f"http://{host}:{port}"
            atexit.register(server.stop)
    return _endpoint


@pytest.fixture
def moto_s3(monkeypatch: pytest.MonkeyPatch):
    """Yield the endpoint URL of a clean moto S3 with bucket ``test-bucket``."""
    pytest.importorskip("moto.server", reason="moto[server] is not installed")
    boto3 = pytest.importorskip("boto3")
    endpoint = _start_server()
    # Fresh state for every test.
    urllib.request.urlopen(urllib.request.Request(f"{endpoint}/moto-api/reset", method="POST"), timeout=10).read()
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3", "AWS_REGION"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    client.create_bucket(Bucket=BUCKET)
    yield endpoint
