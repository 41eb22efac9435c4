"""Test helpers for the cycle reward at real scale: tiny reward models built once per session, a
CharXiv-shaped folder, and a local stand-in for Replicate's HTTP prediction API.

The model builders themselves live in `vlmgrpo.models.tiny_reward_models` (users can build the
same tiny models for smoke runs); here they are only cached per test session.
"""

from __future__ import annotations

import io
import json
import random
import threading
import time
import uuid
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

_BUILT: dict[str, Path] = {}


def tiny_model_dir(kind: str, tmp_path_factory: Any) -> Path:
    """Folder of a tiny `flux` / `dinov2` / `clip`, built on first use in this test session."""
    if kind not in _BUILT:
        from vlmgrpo.models import tiny_reward_models as trm

        _BUILT[kind] = trm.BUILDERS[kind](tmp_path_factory.mktemp(f"tiny-{kind}"))
    return _BUILT[kind]


# --------------------------------------------------------------------------- CharXiv-shaped data


def chart_image(figure_id: int, size: tuple[int, int] = (96, 72)) -> Image.Image:
    """A small deterministic 'chart': axes and a few bars whose heights depend on the id."""
    rng = random.Random(figure_id)
    img = Image.new("RGB", size, "white")
    d = ImageDraw.Draw(img)
    w, h = size
    d.line([(8, 4), (8, h - 8), (w - 4, h - 8)], fill="black", width=1)
    for k in range(4):
        top = rng.randint(10, h - 14)
        x = 14 + k * (w - 20) // 4
        d.rectangle([x, top, x + (w - 20) // 5, h - 9], fill=rng.choice(["red", "blue", "green", "orange"]))
    return img


def make_charxiv(
    root: Path,
    n: int = 120,
    layout: str = "repo",
    with_images: bool = True,
    skip_images: tuple[int, ...] = (),
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Write a CharXiv-shaped copy with `n` figures (ids 0, 2, 4, ...) into `root`, in the real
    schema: `descriptive_val.json` {id: {figure_id, num_subplots, subplot_loc, qids, answers}} and
    `reasoning_val.json` {id: {figure_id, query, answer, inst_category, qa_source}}.
    layout "repo": JSON under data/, images under images/; "flat": everything in root."""
    json_dir = root / "data" if layout == "repo" else root
    img_dir = root / "images" if layout == "repo" else root
    json_dir.mkdir(parents=True, exist_ok=True)
    img_dir.mkdir(parents=True, exist_ok=True)
    descriptive, reasoning = {}, {}
    for k in range(n):
        fid = 2 * k
        rng = random.Random(fid)
        descriptive[str(fid)] = {
            "figure_id": fid,
            "num_subplots": 1,
            "subplot_loc": [0, 0] if k % 5 else "the top left subplot",
            "qids": rng.sample(range(1, 20), 4),
            "answers": [f"answer {fid}.{j}" for j in range(4)],
        }
        reasoning[str(fid)] = {
            "figure_id": fid,
            "query": f"What is the tallest bar in chart {fid}?",
            "answer": str(rng.randint(1, 9)),
            "inst_category": 1 + k % 4,
            "qa_source": 1 + k % 3,
        }
        if with_images and fid not in skip_images:
            chart_image(fid).save(img_dir / f"{fid}.jpg", quality=90)
    (json_dir / "descriptive_val.json").write_text(json.dumps(descriptive))
    (json_dir / "reasoning_val.json").write_text(json.dumps(reasoning))
    return descriptive, reasoning


# --------------------------------------------------------------------------- Replicate stand-in


class ReplicateStub:
    """Replicate's prediction protocol on 127.0.0.1, in a thread.

    POST /v1/models/{owner}/{name}/predictions -> 201 {id, status "starting", urls {get, cancel}}
    (or the finished prediction with `Prefer: wait`); GET /v1/predictions/{id} -> "processing" for
    `polls_before_done` polls, then "succeeded" with output [URL of a webp]; GET /files/{id}.webp
    -> the image (a solid colour derived from the prompt, `size` px). Knobs: `fail_codes` = HTTP
    statuses returned (with `Retry-After`) to the first create requests; `hang` = never answer a
    create request; `create_delay` = seconds every create request sleeps before answering; `fail_status` = end predictions with this status. `requests` records
    (method, path, headers, JSON body, time); `events` the order of create starts and ends.
    """

    def __init__(
        self,
        fail_codes: tuple[int, ...] = (),
        retry_after: str | None = None,
        hang: bool = False,
        polls_before_done: int = 1,
        fail_status: str | None = None,
        size: int = 64,
        honour_wait: bool = False,
        create_delay: float = 0.0,
    ) -> None:
        self.fail_codes = list(fail_codes)
        self.create_delay = create_delay  # seconds each create request takes (a slow model)
        self.retry_after = retry_after
        self.hang = hang
        self.polls_before_done = polls_before_done
        self.fail_status = fail_status
        self.size = size
        self.honour_wait = honour_wait
        self.requests: list[tuple[str, str, dict[str, str], Any, float]] = []
        self.predictions: dict[str, dict[str, Any]] = {}
        # "start" / "end" of each create's work (after any fault), in the order they happened:
        # concurrency shows as starts before the first end, with no clock involved
        self.events: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a: Any) -> None:  # quiet
                pass

            def _send(
                self, code: int, body: bytes, ctype: str, headers: dict[str, str] | None = None
            ) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

            def _json(self, code: int, obj: Any, headers: dict[str, str] | None = None) -> None:
                self._send(code, json.dumps(obj).encode(), "application/json", headers)

            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"null")
                stub._record("POST", self.path, dict(self.headers), body)
                if self.path.endswith("/cancel"):
                    return self._json(200, {"status": "canceled"})
                if stub.hang:
                    stub._stop.wait(30)  # never answers within any test's timeout
                    return None
                with stub._lock:
                    code = stub.fail_codes.pop(0) if stub.fail_codes else None
                if code is not None:
                    headers = {"Retry-After": stub.retry_after} if stub.retry_after is not None else {}
                    return self._json(code, {"detail": f"stub error {code}"}, headers)
                with stub._lock:
                    stub.events.append("start")
                if stub.create_delay:
                    stub._stop.wait(stub.create_delay)
                with stub._lock:
                    stub.events.append("end")
                pid = uuid.uuid4().hex[:12]
                pred = {
                    "id": pid,
                    "status": "starting",
                    "input": body["input"],
                    "output": None,
                    "error": None,
                    "polls": 0,
                    "urls": {
                        "get": f"{stub.url}/v1/predictions/{pid}",
                        "cancel": f"{stub.url}/v1/predictions/{pid}/cancel",
                    },
                }
                with stub._lock:
                    stub.predictions[pid] = pred
                if stub.honour_wait and "wait" in (self.headers.get("Prefer") or ""):
                    stub._finish(pred)
                    return self._json(201, stub._public(pred))
                return self._json(201, stub._public(pred))

            def do_GET(self) -> None:  # noqa: N802
                stub._record("GET", self.path, dict(self.headers), None)
                if self.path.startswith("/files/"):
                    pid = self.path.split("/")[-1].split(".")[0]
                    return self._send(200, stub._image_bytes(pid), "image/webp")
                pid = self.path.rstrip("/").split("/")[-1]
                with stub._lock:
                    pred = stub.predictions.get(pid)
                    if pred is None:
                        return self._json(404, {"detail": "not found"})
                    pred["polls"] += 1
                    if pred["polls"] > stub.polls_before_done:
                        stub._finish(pred)
                    else:
                        pred["status"] = "processing"
                return self._json(200, stub._public(pred))

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    # -- helpers used by the handler
    def _record(self, method: str, path: str, headers: dict[str, str], body: Any) -> None:
        with self._lock:
            self.requests.append((method, path, headers, body, time.monotonic()))

    def _finish(self, pred: dict[str, Any]) -> None:
        if self.fail_status:
            pred["status"], pred["error"] = self.fail_status, "stub failure"
        else:
            pred["status"], pred["output"] = "succeeded", [f"{self.url}/files/{pred['id']}.webp"]

    @staticmethod
    def _public(pred: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in pred.items() if k != "polls"}

    def _image_bytes(self, pid: str) -> bytes:
        pred = self.predictions[pid]
        h = zlib.crc32(pred["input"]["prompt"].encode()) % 200
        buf = io.BytesIO()
        Image.new("RGB", (self.size, self.size), (h, 255 - h, 100)).save(buf, format="WEBP", quality=80)
        return buf.getvalue()

    def creates(self) -> list[tuple[str, str, dict[str, str], Any, float]]:
        return [r for r in self.requests if r[0] == "POST" and r[1].endswith("/predictions")]

    def __enter__(self) -> ReplicateStub:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self.server.shutdown()
        self.server.server_close()
