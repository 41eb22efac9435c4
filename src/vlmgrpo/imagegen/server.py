"""Serve a local generator over Replicate's prediction protocol: one reward GPU for all ranks.

Under torchrun every rank that builds a `diffusers` generator holds its own copy of FLUX (34 GB).
Instead, one process on a dedicated GPU runs `vlmgrpo serve-generator` and every rank points its
cycle reward at it with the Replicate client it already has (concurrency, retries, circuit breaker):

    vlmgrpo serve-generator --generator diffusers --kwargs '{"device": "cuda:7"}' --port 8765
    # recipe, on every rank:
    generator: replicate
    generator_kwargs: {base_url: "http://127.0.0.1:8765", token_env: VLMGRPO_SERVER_TOKEN}

Protocol: Replicate's HTTP API as documented (https://replicate.com/docs/reference/http and its
OpenAPI schema, https://api.replicate.com/openapi.json), so that Replicate's own SDK
(`replicate.Client(base_url=...)`: `run`, `async_run`, `predictions.create` + `wait`) and
vlmgrpo's `replicate` generator both work against it:
- `POST /v1/models/{owner}/{name}/predictions` with `{"input": {...}}`, or `POST /v1/predictions`
  with `{"version": ..., "input": {...}}`: 201 with the prediction object. With `Prefer: wait` (or
  `wait=N`, N in 1..60 s, larger values capped at 60) the request is held until the prediction
  finishes; past that time it is returned in the "starting" state, as the documentation says,
  and the client polls.
- `GET /v1/predictions/{id}`: the prediction. `POST /v1/predictions/{id}/cancel`: cancels a
  prediction still queued (one being generated finishes).
- The prediction object has the documented fields: id, model, version, input, output, error,
  logs, status (starting, processing, succeeded, failed, canceled), created_at, started_at,
  completed_at (ISO 8601, UTC), urls (get, cancel, web), metrics (predict_time, total_time once
  finished), data_removed, source.
- Errors are problem-details bodies, `{"title", "detail", "status"}` (what the SDK's
  `ReplicateError` reads): 401 (missing or wrong bearer token), 404 (unknown route or
  prediction), 422 (input not an object, `prompt` not a string, `seed` not an integer, a
  `/v1/predictions` body without `version`).

A finished prediction's output is `["data:image/png;base64,..."]` (lossless). Replicate serves
files as HTTPS URLs; a data URI is what this plain-HTTP server can hand out that the SDK still
turns into a `FileOutput` (it does so for `https:` and `data:` strings only). Only `prompt` and
`seed` are read from the input (the rest is echoed back); size and steps are the served
generator's own. `version` is "hidden" for model-route predictions (the schema's value for
models without versions) and echoes the requested one otherwise.

Requests that arrive together are generated together: a worker thread takes up to `batch_size`
queued prompts, waiting at most `max_wait_s` for more after the first, and makes one
`generate(prompts, seeds)` call. With `VLMGRPO_SERVER_TOKEN` set, requests must carry it as a
bearer token (401 otherwise).
"""

from __future__ import annotations

import base64
import datetime as _dt
import io
import json
import logging
import os
import queue
import re
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

log = logging.getLogger(__name__)

TOKEN_ENV = "VLMGRPO_SERVER_TOKEN"
MAX_WAIT_S = 60  # Replicate's cap on `Prefer: wait=N`
TERMINAL = ("succeeded", "failed", "canceled")
_MODEL_ROUTE = re.compile(r"^/v1/(?:models|deployments)/([^/]+)/([^/]+)/predictions$")
_PREDICTION = re.compile(r"^/v1/predictions/([^/]+)(/cancel)?$")


def _now() -> str:
    """ISO 8601 UTC with microseconds, as Replicate writes its timestamps."""
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def prefer_wait(header: str | None) -> float | None:
    """Seconds to hold a create request for `Prefer: wait` / `wait=N` (capped at 60); None for no
    (or another) preference, which RFC 7240 says a server ignores."""
    for pref in (header or "").split(","):
        name, _, value = pref.strip().partition("=")
        if name.strip().lower() != "wait":
            continue
        try:
            return float(min(MAX_WAIT_S, max(1, int(value)))) if value.strip() else float(MAX_WAIT_S)
        except ValueError:
            return float(MAX_WAIT_S)
    return None


class _Job:
    def __init__(self, prompt: str, seed: int | None, model: str, version: str, inp: dict[str, Any]) -> None:
        self.id = uuid.uuid4().hex[:26]
        self.prompt, self.seed = prompt, seed
        self.model, self.version, self.input = model, version, inp
        self.status = "starting"
        self.output: list[str] | None = None
        self.error: str | None = None
        self.logs = ""
        self.created_at, self.started_at, self.completed_at = _now(), None, None
        self._t_created, self._t_started = time.monotonic(), 0.0
        self.metrics: dict[str, float] = {}
        self.done = threading.Event()
        self.finished_at = 0.0

    def start(self) -> None:
        self.status, self.started_at, self._t_started = "processing", _now(), time.monotonic()

    def finish(self, status: str, output: list[str] | None = None, error: str | None = None) -> None:
        t = time.monotonic()
        self.output, self.error, self.completed_at = output, error, _now()
        if self._t_started:
            self.metrics["predict_time"] = round(t - self._t_started, 6)
        self.metrics["total_time"] = round(t - self._t_created, 6)
        self.status = status  # last: a reader that sees a terminal status sees its output
        self.finished_at = t
        self.done.set()


class GeneratorServer:
    """`generator` (anything with `generate(prompts, seeds)`) behind HTTP; see the module docstring."""

    def __init__(
        self,
        generator: Any,
        host: str = "127.0.0.1",
        port: int = 0,
        batch_size: int = 16,
        max_wait_s: float = 0.05,
        token: str | None = None,
    ) -> None:
        self.generator = generator
        self.batch_size, self.max_wait_s = max(1, int(batch_size)), float(max_wait_s)
        self.token = token if token is not None else os.environ.get(TOKEN_ENV, "")
        self.jobs: dict[str, _Job] = {}
        self.queue: queue.Queue[_Job] = queue.Queue()
        self.batches: list[int] = []  # sizes of the generate() calls made (tests, logs)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.httpd = ThreadingHTTPServer((host, port), self._handler())
        self.httpd.daemon_threads = True
        self.url = f"http://{host}:{self.httpd.server_address[1]}"
        self._threads = [
            # a short poll interval: close() returns within 0.1 s
            threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True),
            threading.Thread(target=self._work, daemon=True),
        ]

    # ------------------------------------------------------------------ generation
    def _next_batch(self) -> list[_Job]:
        try:
            first = self.queue.get(timeout=0.2)
        except queue.Empty:
            return []
        jobs, deadline = [first], time.monotonic() + self.max_wait_s
        while len(jobs) < self.batch_size:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                jobs.append(self.queue.get(timeout=left))
            except queue.Empty:
                break
        return jobs

    def _work(self) -> None:
        while not self._stop.is_set():
            batch = self._next_batch()
            with self._lock:  # a prediction canceled while queued is not generated
                jobs = [j for j in batch if j.status == "starting"]
                for j in jobs:
                    j.start()
            if not jobs:
                continue
            self.batches.append(len(jobs))
            try:
                images = self.generator.generate([j.prompt for j in jobs], [j.seed for j in jobs])
            except Exception as e:  # noqa: BLE001 - report it in each prediction, keep serving
                log.warning("generation of %d prompts failed: %s", len(jobs), e)
                images = [None] * len(jobs)
            for j, im in zip(jobs, images):
                if im is None:
                    j.logs = "the generator returned no image for this prompt\n"
                    j.finish("failed", error="generation failed")
                else:
                    buf = io.BytesIO()
                    im.save(buf, format="PNG")
                    j.finish(
                        "succeeded", ["data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()]
                    )
            self._forget_old()

    def _forget_old(self, keep_s: float = 600.0) -> None:
        """Finished predictions stay readable for `keep_s` (clients poll them), then go."""
        now = time.monotonic()
        with self._lock:
            for k in [k for k, j in self.jobs.items() if j.done.is_set() and now - j.finished_at > keep_s]:
                del self.jobs[k]

    def cancel(self, job: _Job) -> None:
        """Cancel a queued prediction; one already generating (or finished) is left as it is."""
        with self._lock:
            if job.status == "starting":
                job.finish("canceled")

    # ------------------------------------------------------------------ HTTP
    def public(self, job: _Job, waited_out: bool = False) -> dict[str, Any]:
        """The prediction object. `waited_out`: a `Prefer: wait` request whose time ran out gets the
        "starting" state, as Replicate documents (its SDK then polls; a "processing" answer to a
        blocking request would be taken as final)."""
        get = f"{self.url}/v1/predictions/{job.id}"
        status = job.status
        done = status in TERMINAL
        if waited_out and not done:
            status = "starting"
        return {
            "id": job.id,
            "model": job.model,
            "version": job.version,
            "input": job.input,
            "logs": job.logs,
            "output": job.output if done else None,
            "data_removed": False,
            "error": job.error,
            "status": status,
            "source": "api",
            "created_at": job.created_at,
            "started_at": job.started_at if status != "starting" else None,
            "completed_at": job.completed_at if done else None,
            "urls": {"get": get, "cancel": f"{get}/cancel", "web": get},
            "metrics": dict(job.metrics) if done else {},
        }

    def _create(self, path: str, body: Any) -> tuple[int, dict[str, Any]] | _Job:
        """A queued job for a create request, or the (status, problem) to answer instead."""
        m = _MODEL_ROUTE.match(path)
        if not isinstance(body, dict):
            return _problem(422, "Invalid request body", "the request body must be a JSON object")
        if m:
            model, version = f"{m.group(1)}/{m.group(2)}", "hidden"
        else:
            version = body.get("version")
            if not isinstance(version, str) or not version:
                return _problem(422, "Input validation failed", "- version: version is required")
            owner_name, _, version_id = version.rpartition(":")  # "owner/name:id" or "id"
            model, version = (
                owner_name or f"vlmgrpo/{getattr(self.generator, 'name', 'generator')}",
                version_id,
            )
        inp = body.get("input")
        if not isinstance(inp, dict):
            return _problem(
                422, "Input validation failed", "- input: input is required and must be an object"
            )
        prompt, seed = inp.get("prompt"), inp.get("seed")
        if not isinstance(prompt, str):
            return _problem(422, "Input validation failed", "- input.prompt: a string is required")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            return _problem(422, "Input validation failed", "- input.seed: must be an integer")
        job = _Job(prompt, seed, model, version, inp)
        with self._lock:
            self.jobs[job.id] = job
        self.queue.put(job)
        return job

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a: Any) -> None:
                pass

            def _json(self, code: int, obj: Any) -> None:
                body = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _authorised(self) -> bool:
                if server.token and self.headers.get("Authorization") != f"Bearer {server.token}":
                    self._json(
                        *_problem(401, "Unauthenticated", "You did not pass a valid authentication token")
                    )
                    return False
                return True

            def _path(self) -> str:
                return urlsplit(self.path).path.rstrip("/")

            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""  # read it even when refusing
                if not self._authorised():
                    return
                path = self._path()
                m = _PREDICTION.match(path)
                if m and m.group(2):
                    job = server.jobs.get(m.group(1))
                    if job is None:
                        return self._json(*_problem(404, "Not found", f"no prediction {m.group(1)}"))
                    server.cancel(job)
                    return self._json(200, server.public(job))
                if not (_MODEL_ROUTE.match(path) or path == "/v1/predictions"):
                    return self._json(*_problem(404, "Not found", f"no route POST {path}"))
                try:
                    body = json.loads(raw or b"{}")
                except ValueError as e:
                    return self._json(*_problem(422, "Invalid request body", f"not JSON: {e}"))
                job = server._create(path, body)
                if not isinstance(job, _Job):
                    return self._json(*job)
                wait = prefer_wait(self.headers.get("Prefer"))
                if wait is not None:
                    job.done.wait(wait)
                return self._json(201, server.public(job, waited_out=wait is not None))

            def do_GET(self) -> None:  # noqa: N802
                if not self._authorised():
                    return
                path = self._path()
                m = _PREDICTION.match(path)
                job = server.jobs.get(m.group(1)) if m and not m.group(2) else None
                if job is None:
                    return self._json(*_problem(404, "Not found", f"no prediction at {path}"))
                return self._json(200, server.public(job))

        return Handler

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> GeneratorServer:
        for t in self._threads:
            t.start()
        return self

    def close(self) -> None:
        self._stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self) -> GeneratorServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _problem(status: int, title: str, detail: str) -> tuple[int, dict[str, Any]]:
    """An error answer: HTTP status and a problem-details body (RFC 7807), as Replicate sends."""
    return status, {"title": title, "detail": detail, "status": status}
