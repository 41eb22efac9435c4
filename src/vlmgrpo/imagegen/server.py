"""Serve a local generator over Replicate's prediction protocol: one reward GPU for all ranks.

Under torchrun every rank that builds a `diffusers` generator holds its own copy of FLUX (34 GB).
Instead, one process on a dedicated GPU runs `vlmgrpo serve-generator` and every rank points its
cycle reward at it with the Replicate client it already has (concurrency, retries, circuit breaker):

    vlmgrpo serve-generator --generator diffusers --kwargs '{"device": "cuda:7"}' --port 8765
    # recipe, on every rank:
    generator: replicate
    generator_kwargs: {base_url: "http://127.0.0.1:8765", token_env: VLMGRPO_SERVER_TOKEN}

Protocol (the subset the client uses): `POST /v1/models/{owner}/{name}/predictions` with
`{"input": {"prompt", "seed", ...}}` answers 201 with the prediction; with `Prefer: wait=N` it
waits up to N s for the image. `GET /v1/predictions/{id}` polls. A finished prediction's output is
`["data:image/png;base64,..."]` (lossless). Only `prompt` and `seed` are read from the input; size
and steps are the served generator's own.

Requests that arrive together are generated together: a worker thread takes up to `batch_size`
queued prompts, waiting at most `max_wait_s` for more after the first, and makes one
`generate(prompts, seeds)` call. With `VLMGRPO_SERVER_TOKEN` set, requests must carry it as a
bearer token (401 otherwise).
"""

from __future__ import annotations

import base64
import io
import json
import logging
import os
import queue
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

log = logging.getLogger(__name__)

TOKEN_ENV = "VLMGRPO_SERVER_TOKEN"


class _Job:
    def __init__(self, prompt: str, seed: int | None) -> None:
        self.id = uuid.uuid4().hex[:16]
        self.prompt, self.seed = prompt, seed
        self.status = "starting"
        self.output: list[str] | None = None
        self.error: str | None = None
        self.done = threading.Event()
        self.finished_at = 0.0


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
            threading.Thread(target=self.httpd.serve_forever, daemon=True),
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
            jobs = self._next_batch()
            if not jobs:
                continue
            for j in jobs:
                j.status = "processing"
            self.batches.append(len(jobs))
            try:
                images = self.generator.generate([j.prompt for j in jobs], [j.seed for j in jobs])
            except Exception as e:  # noqa: BLE001 - report it in each prediction, keep serving
                log.warning("generation of %d prompts failed: %s", len(jobs), e)
                images = [None] * len(jobs)
            for j, im in zip(jobs, images):
                if im is None:
                    j.status, j.error = "failed", "generation failed"
                else:
                    buf = io.BytesIO()
                    im.save(buf, format="PNG")
                    j.output = ["data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()]
                    j.status = "succeeded"
                j.finished_at = time.monotonic()
                j.done.set()
            self._forget_old()

    def _forget_old(self, keep_s: float = 600.0) -> None:
        """Finished predictions stay readable for `keep_s` (clients poll them), then go."""
        now = time.monotonic()
        with self._lock:
            for k in [k for k, j in self.jobs.items() if j.done.is_set() and now - j.finished_at > keep_s]:
                del self.jobs[k]

    # ------------------------------------------------------------------ HTTP
    def _public(self, job: _Job) -> dict[str, Any]:
        return {
            "id": job.id,
            "status": job.status,
            "output": job.output,
            "error": job.error,
            "urls": {"get": f"{self.url}/v1/predictions/{job.id}"},
        }

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
                    self._json(401, {"detail": "missing or wrong bearer token"})
                    return False
                return True

            def do_POST(self) -> None:  # noqa: N802
                if not self._authorised():
                    return
                if not self.path.rstrip("/").endswith("/predictions"):
                    return self._json(404, {"detail": f"no route {self.path}"})
                try:
                    length = int(self.headers.get("Content-Length") or 0)
                    inp = json.loads(self.rfile.read(length) or b"{}").get("input") or {}
                    prompt, seed = str(inp["prompt"]), inp.get("seed")
                    seed = None if seed is None else int(seed)
                except (ValueError, KeyError, TypeError, AttributeError) as e:
                    return self._json(
                        422, {"detail": f"input.prompt (str) and input.seed (int) expected: {e}"}
                    )
                job = _Job(prompt, seed)
                with server._lock:
                    server.jobs[job.id] = job
                server.queue.put(job)
                prefer = self.headers.get("Prefer") or ""
                if prefer.startswith("wait"):
                    wait = float(prefer.partition("=")[2] or 60)
                    job.done.wait(wait)
                return self._json(201, server._public(job))

            def do_GET(self) -> None:  # noqa: N802
                if not self._authorised():
                    return
                job = server.jobs.get(self.path.rstrip("/").rsplit("/", 1)[-1])
                if job is None:
                    return self._json(404, {"detail": "no such prediction"})
                return self._json(200, server._public(job))

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
