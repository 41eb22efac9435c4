"""vlmgrpo's Replicate client against responses recorded from Replicate's published API docs.

tests/fixtures/replicate/ holds the examples (sources in its README). Two local servers replay them:
`api` (the fixtures' `https://api.replicate.com`) answers the create and poll requests from a
script, `files` (their `https://replicate.delivery`) serves the output file, so the client sees
the documented bodies with only the hosts changed."""

from __future__ import annotations

import io
import json
import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vlmgrpo.http import parse_retry_after
from vlmgrpo.imagegen.replicate import ReplicateGenerator

FIXTURES = Path(__file__).parent / "fixtures" / "replicate"
FAST = dict(backoff_base=0.001, backoff_cap=0.01, poll_interval=0.01, max_poll_s=30.0)


def _image() -> Image.Image:
    im = Image.new("RGB", (24, 16), (200, 30, 40))
    im.paste((10, 90, 220), (4, 4, 12, 12))
    return im


class _Server:
    """A local HTTP server from a thread; `answer(method, path, headers)` gives (status, headers, body)."""

    def __init__(self, answer):
        self.requests: list[tuple[str, str, dict[str, str], float]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def _go(self, method):
                n = int(self.headers.get("Content-Length") or 0)
                if n:
                    self.rfile.read(n)
                server.requests.append((method, self.path, dict(self.headers), time.monotonic()))
                status, headers, body = answer(method, self.path)
                data = body if isinstance(body, bytes) else json.dumps(body).encode()
                self.send_response(status)
                headers = {"Content-Type": "application/json", **headers}
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):  # noqa: N802
                self._go("GET")

            def do_POST(self):  # noqa: N802
                self._go("POST")

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


class Replay:
    """`api` answers POSTs from `creates` and GETs from `polls` in order (the last one repeats);
    `files` serves `_image()` as a lossless webp."""

    def __init__(self, creates, polls=()):
        self.files = _Server(self._file)
        self.creates, self.polls = list(creates), list(polls)
        self.api = _Server(self._api)

    def fixture(self, name: str, **changes) -> dict:
        """A fixture with its hosts pointed at the local servers, `changes` applied on top."""
        text = (FIXTURES / name).read_text()
        text = text.replace("https://api.replicate.com", self.api.url)
        text = text.replace("https://replicate.delivery", self.files.url)
        return {**json.loads(text), **changes}

    def _api(self, method, path):
        script = self.creates if method == "POST" else self.polls
        item = script.pop(0) if len(script) > 1 else script[0]
        return item(self) if callable(item) else item  # a callable reads fixtures once URLs exist

    def _file(self, method, path):
        buf = io.BytesIO()
        _image().save(buf, format="WEBP", lossless=True)
        return 200, {"Content-Type": "image/webp"}, buf.getvalue()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.api.close()
        self.files.close()

    def api_requests(self, method, prefix="/v1/"):
        return [r for r in self.api.requests if r[0] == method and r[1].startswith(prefix)]


@pytest.fixture
def token(monkeypatch):
    monkeypatch.setenv("REPLICATE_API_TOKEN", "r8_fixture_token")
    return "r8_fixture_token"


def test_starting_prediction_is_polled_to_success_and_its_url_fetched(token):
    processing = lambda r: (200, {}, r.fixture("starting.json", status="processing"))  # noqa: E731
    with Replay(
        creates=[lambda r: (201, {}, r.fixture("starting.json"))],
        polls=[processing, lambda r: (200, {}, r.fixture("succeeded.json"))],
    ) as r:
        gen = ReplicateGenerator(base_url=r.api.url, **FAST)
        (im,) = gen.generate(["a red bar chart"], seeds=[11])
    assert im is not None and np.array_equal(np.asarray(im.convert("RGB")), np.asarray(_image()))
    assert gen.failures == 0
    (create,) = r.api_requests("POST")
    assert create[1] == "/v1/models/black-forest-labs/flux-schnell/predictions"
    assert create[2]["Authorization"] == f"Bearer {token}" and create[2]["Prefer"] == "wait=60"
    polls = r.api_requests("GET")
    assert [p[1] for p in polls] == [
        "/v1/predictions/gm3qorzdhgbfurvjtvhg6dckhu"
    ] * 2  # processing, succeeded
    assert all(p[2]["Authorization"] == f"Bearer {token}" for p in polls)
    (file_get,) = r.files.requests
    assert file_get[1] == "/xezq/gm3qorzdhgbfurvjtvhg6dckhu/out-0.webp"
    assert "Authorization" not in file_get[2]  # the token stays with the API host


def test_failed_prediction_is_recreated_then_skipped(token, caplog):
    with Replay(
        creates=[lambda r: (201, {}, r.fixture("starting.json"))],
        polls=[lambda r: (200, {}, r.fixture("failed.json"))],
    ) as r:
        gen = ReplicateGenerator(base_url=r.api.url, retry_failed=1, **FAST)
        with caplog.at_level(logging.WARNING, logger="vlmgrpo.imagegen.replicate"):
            assert gen.generate(["a red bar chart"], seeds=[11]) == [None]
    assert gen.failures == 1 and len(r.api_requests("POST")) == 2  # created, failed, re-created, failed
    assert "status failed: E1001 - Model Out of Memory" in caplog.text
    assert not r.files.requests


def test_aborted_prediction_is_final_not_polled_on(token):
    """`aborted` (the schema's sixth status) ends the prediction: one poll, not polling until
    max_poll_s."""
    with Replay(
        creates=[lambda r: (201, {}, r.fixture("starting.json"))],
        polls=[lambda r: (200, {}, r.fixture("failed.json", status="aborted", error=None))],
    ) as r:
        gen = ReplicateGenerator(base_url=r.api.url, retry_failed=0, **{**FAST, "max_poll_s": 5.0})
        assert gen.generate(["a chart"], seeds=[1]) == [None]
    assert len(r.api_requests("GET")) == 1


def test_rate_limited_429_waits_for_retry_after(token):
    limited = json.loads((FIXTURES / "rate_limited.json").read_text())
    with Replay(
        creates=[
            (limited["status"], limited["headers"], limited["body"]),
            lambda r: (201, {}, r.fixture("succeeded.json")),  # a `Prefer: wait` create that finished
        ]
    ) as r:
        # Retry-After 30 s, capped by max_retry_after to keep the test short
        gen = ReplicateGenerator(base_url=r.api.url, max_retry_after=0.3, **FAST)
        (im,) = gen.generate(["a red bar chart"], seeds=[11])
    assert im is not None and gen.retries == 1 and not r.api_requests("GET")
    first, second = [t for t in r.api.requests if t[0] == "POST"]
    assert second[3] - first[3] >= 0.29  # waited the (capped) Retry-After, not the 1 ms backoff
    # the full delay, uncapped: the server's 30 s, not the 2 s backoff
    assert ReplicateGenerator().backoff(0, parse_retry_after(limited["headers"]["Retry-After"])) >= 30.0


def test_fixtures_follow_the_schema():
    schema = json.loads((FIXTURES / "prediction_schema.json").read_text())
    for name in ("succeeded.json", "failed.json"):
        pred = json.loads((FIXTURES / name).read_text())
        assert set(schema["required"]) <= set(pred), name
        assert pred["status"] in schema["properties"]["status"]["enum"]
    # the 2023 create example predates `output` / `urls.web` being required: the client copes
    old = json.loads((FIXTURES / "starting.json").read_text())
    assert set(schema["required"]) - set(old) == {"output", "data_removed"}
