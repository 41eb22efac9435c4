"""`vlmgrpo serve-generator` as Replicate's official Python SDK sees it.

The `replicate` package (a test-only dependency) is pointed at a local `GeneratorServer` serving the
offline renderer: `run()`, `predictions.create()` + `wait()`, the async client, `Prefer: wait`
running out, cancel, and the documented error bodies. Every prediction object the server sends is
also checked against the prediction schema of Replicate's OpenAPI document
(tests/fixtures/replicate/prediction_schema.json; source in the README there)."""

from __future__ import annotations

import asyncio
import datetime as dt
import io
import json
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import replicate  # the `dev` extra (make test installs it)
from PIL import Image
from replicate.exceptions import ModelError, ReplicateError

from vlmgrpo.imagegen.render import RenderGenerator
from vlmgrpo.imagegen.server import GeneratorServer, prefer_wait

SCHEMA = json.loads((Path(__file__).parent / "fixtures" / "replicate" / "prediction_schema.json").read_text())
TOKEN = "r8_local_test_token"
PROMPT = "a large blue square in the center"


class Gated(RenderGenerator):
    """The renderer, optionally held at a gate (a model still running) and failing on a word."""

    def __init__(self, fail_on: str = "", **kw):
        super().__init__(**kw)
        self.fail_on = fail_on
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()  # a generate() call has started

    def generate(self, prompts, seeds=None):
        self.entered.set()
        assert self.gate.wait(30), "test never opened the gate"
        out = super().generate(prompts, seeds)
        return [None if self.fail_on and self.fail_on in p else im for p, im in zip(prompts, out)]


class Recording(httpx.BaseTransport, httpx.AsyncBaseTransport):
    """httpx transport (sync and async) that keeps every JSON body the server answered with."""

    def __init__(self):
        self.sync, self.async_ = httpx.HTTPTransport(), httpx.AsyncHTTPTransport()
        self.bodies: list[tuple[str, int, dict]] = []

    def _keep(self, request, resp):
        if resp.headers.get("content-type", "").startswith("application/json"):
            self.bodies.append((request.url.path, resp.status_code, resp.json()))

    def handle_request(self, request):
        resp = self.sync.handle_request(request)
        resp.read()
        self._keep(request, resp)
        return resp

    async def handle_async_request(self, request):
        resp = await self.async_.handle_async_request(request)
        await resp.aread()
        self._keep(request, resp)
        return resp


def _check_schema(pred: dict) -> None:
    """The prediction object against Replicate's OpenAPI `schemas_prediction_response`."""
    missing = [k for k in SCHEMA["required"] if k not in pred]
    assert not missing, f"missing required fields {missing}"
    props = SCHEMA["properties"]
    assert pred["status"] in props["status"]["enum"]
    assert set(props["urls"]["required"]) <= set(pred["urls"])
    assert isinstance(pred["id"], str) and isinstance(pred["model"], str) and isinstance(pred["version"], str)
    assert isinstance(pred["input"], dict) and isinstance(pred["data_removed"], bool)
    assert pred["error"] is None or isinstance(pred["error"], str)
    assert isinstance(pred.get("logs", ""), str) and isinstance(pred.get("metrics", {}), dict)
    for key in ("created_at", "started_at", "completed_at"):  # format: date-time
        if pred.get(key) is not None:
            dt.datetime.fromisoformat(pred[key].replace("Z", "+00:00"))
    assert pred.get("source", "api") in props["source"]["enum"]


@pytest.fixture
def served():
    gen = Gated(fail_on="green")
    with GeneratorServer(gen, batch_size=4, max_wait_s=0.01, token=TOKEN) as server:
        transport = Recording()
        client = replicate.Client(api_token=TOKEN, base_url=server.url, transport=transport)
        client.poll_interval = 0.02
        yield server, client, gen
        for path, code, body in transport.bodies:
            if code < 400:
                _check_schema(body)
            else:  # a problem-details body, what ReplicateError reads
                assert body["status"] == code and body["detail"] and body["title"], (path, body)


def _pixels(im: Image.Image) -> np.ndarray:
    return np.asarray(im.convert("RGB"))


def _want(prompt: str, seed: int) -> np.ndarray:
    return _pixels(RenderGenerator().generate([prompt], [seed])[0])


def test_run_returns_file_outputs_that_read_back_as_the_image(served):
    server, client, _ = served
    out = client.run("black-forest-labs/flux-schnell", input={"prompt": PROMPT, "seed": 3})
    assert isinstance(out, list) and len(out) == 1
    assert isinstance(out[0], replicate.helpers.FileOutput)
    im = Image.open(io.BytesIO(out[0].read()))
    assert im.format == "PNG" and np.array_equal(_pixels(im), _want(PROMPT, 3))


def test_create_then_wait_polls_to_success(served):
    server, client, gen = served
    gen.gate.clear()  # the "model" is still running when create answers
    pred = client.predictions.create(
        model="black-forest-labs/flux-schnell", input={"prompt": PROMPT, "seed": 5}
    )
    assert pred.status == "starting" and pred.model == "black-forest-labs/flux-schnell"
    assert pred.version == "hidden" and pred.input == {"prompt": PROMPT, "seed": 5}
    assert pred.output is None and pred.urls["get"].endswith(f"/v1/predictions/{pred.id}")
    assert gen.entered.wait(30)
    pred.reload()
    assert pred.status == "processing" and pred.started_at is not None and pred.completed_at is None
    gen.gate.set()
    pred.wait()
    assert pred.status == "succeeded" and pred.error is None and pred.completed_at is not None
    assert pred.metrics["predict_time"] >= 0 and pred.metrics["total_time"] >= pred.metrics["predict_time"]
    data = replicate.helpers.transform_output(pred.output, client)[0].read()
    assert np.array_equal(_pixels(Image.open(io.BytesIO(data))), _want(PROMPT, 5))


def test_version_route(served):
    server, client, _ = served
    pred = client.predictions.create(version="5c7d5dc6dd8bf75c", input={"prompt": PROMPT}, wait=True)
    assert pred.status == "succeeded" and pred.version == "5c7d5dc6dd8bf75c"
    assert pred.model == "vlmgrpo/render"


def test_async_run(served):
    server, client, _ = served

    async def go():
        outs = await asyncio.gather(
            *(client.async_run("owner/model", input={"prompt": PROMPT, "seed": s}) for s in (1, 2))
        )
        return [await o[0].aread() for o in outs]

    for seed, data in zip((1, 2), asyncio.run(go())):
        assert np.array_equal(_pixels(Image.open(io.BytesIO(data))), _want(PROMPT, seed))


def test_prefer_wait_running_out_answers_starting_and_run_still_finishes(served):
    """Past `Prefer: wait=1` the prediction comes back "starting" (as documented), so the SDK's
    `run` polls instead of taking an unfinished prediction for its result."""
    server, client, gen = served
    transport = client._client_kwargs["transport"]
    gen.gate.clear()
    t0 = time.monotonic()
    # models.predictions.create sends `Prefer: wait=1` (predictions.create(model=...) drops `wait`)
    pred = client.models.predictions.create(model="a/b", input={"prompt": PROMPT, "seed": 1}, wait=1)
    assert time.monotonic() - t0 >= 0.9  # the server held the request for the wait
    assert pred.status == "starting" and pred.output is None and pred.started_at is None
    n = len(transport.bodies)
    done: list = []
    t = threading.Thread(
        target=lambda: done.append(client.run("a/b", input={"prompt": PROMPT, "seed": 1}, wait=1)),
        daemon=True,
    )
    t.start()
    # open the gate only once run's own create has come back "starting"
    assert _wait_for(lambda: any(b[2].get("status") == "starting" for b in transport.bodies[n:]))
    gen.gate.set()
    t.join(60)
    assert done and isinstance(done[0][0], replicate.helpers.FileOutput)
    polls = [b for b in transport.bodies[n:] if b[0].startswith("/v1/predictions/")]
    assert polls and polls[-1][2]["status"] == "succeeded"  # run polled to the end


def _wait_for(cond, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.01)
    return False


def test_failed_generation_raises_model_error(served):
    server, client, _ = served
    with pytest.raises(ModelError) as e:
        client.run("a/b", input={"prompt": "a green triangle", "seed": 1})
    assert e.value.prediction.status == "failed" and e.value.prediction.error == "generation failed"


def test_cancel_a_queued_prediction(served):
    server, client, gen = served
    gen.gate.clear()
    first = client.predictions.create(model="a/b", input={"prompt": PROMPT})
    assert gen.entered.wait(30)  # the worker holds `first`; the next one stays queued
    second = client.predictions.create(model="a/b", input={"prompt": PROMPT})
    second.cancel()
    assert second.status == "canceled" and second.output is None
    gen.gate.set()
    first.wait()
    second.wait()  # a terminal state: returns at once
    assert first.status == "succeeded" and second.status == "canceled"


def test_error_bodies_as_the_sdk_reads_them(served):
    server, client, _ = served
    with pytest.raises(ReplicateError) as e:
        replicate.Client(api_token="wrong", base_url=server.url).run("a/b", input={"prompt": PROMPT})
    assert e.value.status == 401 and e.value.title == "Unauthenticated" and e.value.detail
    with pytest.raises(ReplicateError) as e:
        client.predictions.get("no-such-id")
    assert e.value.status == 404 and "no-such-id" in e.value.detail
    for bad, field in (({"seed": 1}, "prompt"), ({"prompt": PROMPT, "seed": "x"}, "seed")):
        with pytest.raises(ReplicateError) as e:
            client.run("a/b", input=bad)
        assert e.value.status == 422 and field in e.value.detail
    r = httpx.post(f"{server.url}/v1/predictions", json={"input": {"prompt": PROMPT}}, headers=_auth())
    assert r.status_code == 422 and "version" in r.json()["detail"]
    r = httpx.post(f"{server.url}/v1/nothing/here", json={}, headers=_auth())
    assert r.status_code == 404 and r.json() == {
        "title": "Not found",
        "detail": r.json()["detail"],
        "status": 404,
    }


def _auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKEN}"}


def test_prefer_header_parsing():
    assert prefer_wait(None) is None and prefer_wait("respond-async") is None
    assert prefer_wait("wait") == 60 and prefer_wait("wait=5") == 5 and prefer_wait("wait=600") == 60
    assert prefer_wait("respond-async, wait=3") == 3 and prefer_wait("wait=0") == 1
