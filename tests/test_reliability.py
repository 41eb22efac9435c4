"""Reliability: retry/backoff and the circuit breaker (`vlmgrpo.http`), a training run against a
fault-injecting Replicate stand-in (timeouts, 429 with Retry-After, 500, truncated bodies, an
outage), a service down past its limit (the step is abandoned, checkpointed, and resuming gives the
uninterrupted parameters), SIGTERM mid-run, non-finite rewards, and keep_last.

The subprocess tests run `python -m vlmgrpo.cli train` on the tiny VLM with tiny steps (1 prompt,
group 2, 2 new tokens); parameters are compared exactly (fp32, CPU, one thread)."""

from __future__ import annotations

import asyncio
import io
import json
import shlex
import signal
import subprocess
import sys
import threading
import time
import uuid
import zlib
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from vlmgrpo.errors import ServiceError, VlmgrpoError
from vlmgrpo.http import (
    CLOSED,
    HALF_OPEN,
    OPEN,
    CircuitBreaker,
    backoff_delay,
    parse_retry_after,
    retry_delays,
)

# --------------------------------------------------------------------------- retry_delays / backoff


def test_retry_delays_grow_exponentially_capped_and_jittered():
    import random

    rng = random.Random(0)
    for _ in range(50):
        d = retry_delays(2.0, 60.0, 8, jitter=0.5, rng=rng)
        assert len(d) == 7  # waits between 8 tries
        for n, x in enumerate(d):
            full = min(60.0, 2.0 * 2**n)
            assert full / 2 <= x <= full
    assert retry_delays(1.0, 10.0, 4, jitter=0.0) == [1.0, 2.0, 4.0]  # no jitter: the plain schedule
    assert retry_delays(1.0, 10.0, 1) == [] and retry_delays(1.0, 10.0, 0) == []
    spread = {round(x, 6) for x in retry_delays(1.0, 1.0, 30, jitter=1.0, rng=rng)}
    assert len(spread) > 20  # full jitter: concurrent clients do not retry in lockstep


def test_backoff_honours_retry_after_within_its_cap():
    assert backoff_delay(0, 0.01, 0.1, retry_after=5.0) == 5.0
    assert backoff_delay(0, 0.01, 0.1, retry_after=1e6, max_retry_after=300.0) == 300.0
    assert backoff_delay(3, 1.0, 4.0, jitter=0.0, retry_after=0.5) == 4.0  # the longer of the two
    assert parse_retry_after("2.5") == 2.5 and parse_retry_after("-3") == 0.0
    assert parse_retry_after("soon") is None and parse_retry_after("") is None


# --------------------------------------------------------------------------- the circuit breaker


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def _breaker(clock, **kw):
    opts = dict(failure_threshold=3, cooldown_s=1.0, max_cooldown_s=4.0, max_down_s=30.0, probe_timeout_s=5.0)
    return CircuitBreaker("svc", clock=clock, **(opts | kw))


def test_breaker_opens_after_threshold_then_probes_once():
    c = FakeClock()
    b = _breaker(c)
    for _ in range(2):
        b.failure()
    assert b.state == CLOSED and b.wait_time() == 0.0
    b.failure()  # third in a row
    assert b.state == OPEN and b.opened == 1
    assert b.wait_time() == pytest.approx(1.0)  # every caller waits out the cool-down
    c.t += 0.5
    assert b.wait_time() == pytest.approx(0.5)
    c.t += 0.5
    assert b.wait_time() == 0.0 and b.state == HALF_OPEN  # this caller is the probe
    assert b.wait_time() > 0  # everyone else waits for the probe's outcome
    b.success()
    assert b.state == CLOSED and b.wait_time() == 0.0 and b.consecutive == 0


def test_breaker_failed_probe_doubles_the_cooldown_up_to_its_cap():
    c = FakeClock()
    b = _breaker(c)
    for _ in range(3):
        b.failure()
    waits = []
    for _ in range(4):
        waits.append(b.wait_time())
        c.t += waits[-1]
        assert b.wait_time() == 0.0  # the probe goes
        b.failure()  # and fails
    assert waits == pytest.approx([1.0, 2.0, 4.0, 4.0])
    assert b.state == OPEN


def test_breaker_success_resets_the_count():
    c = FakeClock()
    b = _breaker(c)
    for _ in range(10):  # failures interleaved with successes never open it
        b.failure()
        b.failure()
        b.success()
    assert b.state == CLOSED and b.opened == 0 and b.down_for == 0.0


def test_breaker_retry_after_pauses_every_caller():
    c = FakeClock()
    b = _breaker(c)
    b.failure(retry_after=7.0)  # one 429: below the threshold, but the server asked everyone to wait
    assert b.state == CLOSED and b.wait_time() == pytest.approx(7.0)
    c.t += 7.0
    assert b.wait_time() == 0.0


def test_breaker_gives_up_after_max_down_s_with_one_line():
    c = FakeClock()
    b = _breaker(c, max_down_s=30.0)
    b.failure()
    for _ in range(7):
        c.t += 4.0
        b.failure()  # 28 s of failures: still trying
    c.t += 4.0
    with pytest.raises(ServiceError) as e:
        b.failure()
    msg = str(e.value)
    assert msg.startswith("service svc down for 32 s; stopping") and "\n" not in msg
    with pytest.raises(ServiceError, match="service svc down"):  # every later caller is told at once
        b.wait_time()
    b.reset()
    assert b.wait_time() == 0.0 and b.state == CLOSED


def test_breaker_idle_gap_is_not_downtime():
    """Two failures an hour apart with nothing asked in between (two evaluations) are no outage."""
    c = FakeClock()
    b = _breaker(c, max_down_s=30.0)
    b.failure()
    c.t += 3600.0
    b.failure()  # no ServiceError
    assert b.down_for == 0.0


def test_breaker_probe_that_never_reports_frees_the_slot():
    c = FakeClock()
    b = _breaker(c, probe_timeout_s=5.0)
    for _ in range(3):
        b.failure()
    c.t += 1.0
    assert b.wait_time() == 0.0  # probe 1 goes, then its task is cancelled: it never reports
    assert b.wait_time() > 0
    c.t += 5.0
    assert b.wait_time() == 0.0  # a second probe may go


def test_breaker_pauses_concurrent_callers_instead_of_spinning():
    """16 asyncio workers against a service that is down for 0.3 s: while it is open only probes
    reach it, and every worker succeeds once it is back, with few requests spent."""
    b = CircuitBreaker("svc", failure_threshold=3, cooldown_s=0.05, max_cooldown_s=0.1, max_down_s=10)
    t_up = time.monotonic() + 0.3
    sent = Counter()

    async def request() -> bool:
        sent["total"] += 1
        await asyncio.sleep(0.005)
        return time.monotonic() >= t_up

    async def worker() -> int:
        for tries in range(1, 100):
            await b.wait()
            if await request():
                b.success()
                return tries
            b.failure()
            await asyncio.sleep(0.001)  # a tiny backoff: without the breaker this would spin
        return -1

    async def main():
        return await asyncio.gather(*(worker() for _ in range(16)))

    tries = asyncio.run(main())
    assert all(t > 0 for t in tries)
    assert sent["total"] < 16 + 25, sent  # the first wave, then about one probe per cool-down
    assert b.opened >= 1 and b.state == CLOSED and b.waited_s > 0


# --------------------------------------------------------------------------- a fault-injecting Replicate


def _image_bytes(seed: int, size: int = 32) -> bytes:
    buf = io.BytesIO()
    h = zlib.crc32(str(seed).encode()) % 200
    Image.new("RGB", (size, size), (h, 255 - h, 90)).save(buf, format="PNG")
    return buf.getvalue()


class FaultyReplicate:
    """Replicate's prediction protocol on 127.0.0.1 with faults chosen by the sample's index in its
    reward batch (`index = input.seed % 1009`, the cycle reward's seeding):

        0  every create request hangs past the client's timeout        -> skipped
        1  the first create answers 429 with Retry-After 0.1           -> scored
        2  every create answers 500                                    -> skipped
        3  the image is a truncated PNG (complete HTTP body)           -> skipped
        4  the first image download breaks off mid-body                -> scored
        5  the first create answers with a truncated JSON body         -> scored
        6+ no fault                                                    -> scored

    "First" is per seed, so a second run against the same stub meets the same faults. `down = True`
    answers 503 to every create (an outage); `faults=False` leaves out the faults above (a healthy
    service until it goes down). `counts[(kind, index)]` counts requests.
    """

    SKIPPED = {0, 2, 3}

    def __init__(self, faults: bool = True) -> None:
        self.faults = faults
        self.down = False
        self.counts: Counter = Counter()
        self.preds: dict[str, dict[str, Any]] = {}
        self.lock = threading.Lock()
        self.stop = threading.Event()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a: Any) -> None:
                pass

            def send(self, code: int, body: bytes, length: int | None = None, headers: dict | None = None):
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body) if length is None else length))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)
                self.wfile.flush()

            def do_POST(self) -> None:  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"null")
                seed = int(body["input"]["seed"])
                i = seed % 1009
                with stub.lock:
                    stub.counts[("create", i)] += 1
                    stub.counts[("create-seed", seed)] += 1
                    n = stub.counts[("create-seed", seed)]
                if stub.down:
                    return self.send(503, b'{"detail": "down"}')
                if not stub.faults:
                    i = 1009  # no fault
                if i == 0:
                    stub.stop.wait()  # until the stub closes: longer than any client timeout, however loaded
                    self.close_connection = True
                    return None
                if i == 1 and n == 1:
                    return self.send(429, b'{"detail": "slow down"}', headers={"Retry-After": "0.1"})
                if i == 2:
                    return self.send(500, b'{"detail": "boom"}')
                if i == 5 and n == 1:
                    return self.send(201, b'{"id": "x", "status": "star')
                pid = uuid.uuid4().hex[:10]
                with stub.lock:
                    stub.preds[pid] = {"seed": seed, "polls": 0}
                url = f"{stub.url}/v1/predictions/{pid}"
                pred = {"id": pid, "status": "starting", "urls": {"get": url, "cancel": url + "/cancel"}}
                return self.send(201, json.dumps(pred).encode())

            def do_GET(self) -> None:  # noqa: N802
                pid = self.path.rstrip("/").split("/")[-1].split(".")[0]
                with stub.lock:
                    pred = stub.preds.get(pid)
                if pred is None:
                    return self.send(404, b'{"detail": "not found"}')
                i = pred["seed"] % 1009 if stub.faults else 1009
                if self.path.startswith("/files/"):
                    with stub.lock:
                        stub.counts[("file", i)] += 1
                        stub.counts[("file-seed", pred["seed"])] += 1
                        n = stub.counts[("file-seed", pred["seed"])]
                    data = _image_bytes(pred["seed"])
                    if i == 3:
                        return self.send(200, data[: len(data) // 2])
                    if i == 4 and n == 1:  # promise the whole image, send half, hang up
                        self.close_connection = True
                        return self.send(200, data[: len(data) // 2], length=len(data))
                    return self.send(200, data)
                pred["polls"] += 1
                done = {"status": "succeeded", "output": [f"{stub.url}/files/{pid}.png"]}
                out = {"id": pid, **(done if pred["polls"] > 1 else {"status": "processing"})}
                out["urls"] = {"get": f"{stub.url}/v1/predictions/{pid}"}
                return self.send(200, json.dumps(out).encode())

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FaultyReplicate:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop.set()
        self.server.shutdown()
        self.server.server_close()


GEN_FAST = {
    "request_timeout": 0.4,
    "max_tries": 2,
    "retry_failed": 1,
    "backoff_base": 0.005,
    "backoff_cap": 0.05,
    "breaker_cooldown_s": 0.02,
    "poll_interval": 0.01,
    "wait": 0,
    "concurrency": 8,
}


@pytest.fixture
def token(monkeypatch):
    monkeypatch.setenv("REPLICATE_API_TOKEN", "r8_test_token")


@pytest.fixture(autouse=True)
def _fresh_generators():
    """Generators (and their breakers) are cached per process: each test starts with new ones."""
    from vlmgrpo.imagegen import GENERATORS

    GENERATORS.clear_instances()
    yield
    GENERATORS.clear_instances()


def test_replicate_client_against_the_faults(token):
    from vlmgrpo.imagegen.replicate import ReplicateGenerator

    with FaultyReplicate() as stub:
        # 1 s, not GEN_FAST's 0.4 s: a healthy answer on a loaded machine must not time out here
        gen = ReplicateGenerator(base_url=stub.url, **{**GEN_FAST, "request_timeout": 1.0})
        base = 64 * 1009
        images = gen.generate([f"prompt {i}" for i in range(8)], seeds=[base + i for i in range(8)])
    assert [i for i, im in enumerate(images) if im is None] == sorted(FaultyReplicate.SKIPPED)
    assert gen.failures == 3
    # faults on every request: exactly 2 tries x 2 attempts; one-time faults: at least one retry (a
    # slow machine may add a timeout-retry, never remove one)
    assert stub.counts[("create", 0)] == 4 and stub.counts[("create", 2)] == 4
    assert stub.counts[("create", 1)] >= 2 and stub.counts[("create", 5)] >= 2
    assert stub.counts[("file", 3)] == 2 and stub.counts[("file", 4)] >= 2


@pytest.mark.timeout(60)
def test_replicate_down_past_max_down_s_raises_one_line(token):
    """Nothing listens on the port: connection refused, again and again, then a ServiceError."""
    import socket

    from vlmgrpo.imagegen.replicate import ReplicateGenerator

    # a port held bound (never closed and reused) but not listening: every connect is refused
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        gen = ReplicateGenerator(
            base_url=f"http://127.0.0.1:{port}", max_down_s=0.5, **{**GEN_FAST, "max_tries": 1000}
        )
        with pytest.raises(ServiceError) as e:
            gen.generate(["a", "b", "c"], seeds=[1, 2, 3])
    # gave up on max_down_s, long before 1000 tries (a retry loop would hit the 60 s timeout)
    assert str(e.value).startswith("service replicate down for ") and "stopping" in str(e.value)
    assert gen.breaker.opened >= 1


def test_llm_judge_down_past_max_down_s_raises_one_line(tmp_path):
    import socket

    from vlmgrpo.judges import JudgeItem
    from vlmgrpo.judges.llm import LLMJudge

    with socket.socket() as s:  # held bound, not listening: connections are refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        judge = LLMJudge(
            base_url=f"http://127.0.0.1:{port}/v1", api_key="sk-test", max_attempts=1000, backoff_s=0.01,
            max_backoff_s=0.05, max_down_s=0.5, timeout_s=0.5,
        )  # fmt: skip
        with pytest.raises(ServiceError, match=r"^service llm-judge down for \d+ s; stopping"):
            judge.grade([JudgeItem("q?", "42", "42", id=str(i)) for i in range(4)])


# --------------------------------------------------------------------------- training against the faults


def _cfg(model_dir, out, stub_url, *extra):
    from vlmgrpo.config import load_config

    gen_kw = json.dumps({"base_url": stub_url, **GEN_FAST})
    reward = (
        "rewards=[{name: cycle, label: similarity, kwargs: {generator: replicate, "
        f"generator_kwargs: {gen_kw}, embedder: pixel, mapping: raw, resize: 32}}}}]"
    )
    return load_config(
        "demo",
        [
            f"model.name_or_path={model_dir}",
            f"train.output_dir={out}",
            "train.steps=4",
            "train.seed=1",
            "train.eval_every=0",
            "train.save_every=1",
            "train.log_samples_every=0",
            "train.tensorboard=false",
            "train.threads=1",
            "train.device=cpu",
            "warmup.steps=0",
            "data.kwargs={n: 16, size: 56}",
            "data.eval_kwargs={n: 4, size: 56}",
            "rollout.prompts_per_step=2",
            "rollout.group_size=4",
            "rollout.max_new_tokens=4",
            reward,
            *extra,
        ],
    )


def _rows(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_training_run_against_a_faulty_generator(tiny_vlm_dir, tmp_path, token):
    """Timeouts, 429 + Retry-After, 500, truncated bodies on every step and a full outage on step 3:
    the run finishes, each step skips exactly the samples whose image never came (not scored 0), and
    the outage step skips its update with a warning."""
    from vlmgrpo.imagegen import get_generator
    from vlmgrpo.trainer import Trainer

    with FaultyReplicate() as stub:
        cfg = _cfg(tiny_vlm_dir, tmp_path / "run", stub.url)
        tr = Trainer(cfg)
        step = tr.train_step

        def faulty_step():
            stub.down = tr.step == 2  # the third step meets an outage
            return step()

        tr.train_step = faulty_step
        tr.fit()
        gen = get_generator("replicate", cfg.rewards[0].kwargs["generator_kwargs"])
    rows = _rows(tmp_path / "run")
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    for r in rows:
        outage = r["step"] == 3
        assert r["reward/skipped"] == (8 if outage else len(FaultyReplicate.SKIPPED)), r
        assert r["reward/similarity/failed"] == 0  # a missing image skips its sample; nothing raised
        assert ("update/skipped_rewards" in r) == outage
        assert ("grad_norm" in r) == (not outage)
        if not outage:  # the mean is over the samples that got an image
            assert r["reward/similarity/mean"] is not None
    assert gen.failures == 3 * 3 + 8
    assert gen.breaker.opened >= 1 and gen.breaker.state == CLOSED
    assert all((tmp_path / "run" / "ckpts" / f"ckpt-{s}" / "COMPLETE").is_file() for s in (1, 2, 3, 4))


def _model_params(ckpt_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(ckpt_dir / "model.safetensors"))


def _assert_same_params(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)


def test_service_down_past_its_limit_abandons_the_step_and_resumes_exactly(tiny_vlm_dir, tmp_path, token):
    """The generator is down from step 2 on: after max_down_s the trainer rewinds the half-done
    step, checkpoints step 1, stops with one line; resumed once the service is back, the run ends
    with the parameters and metrics of a run that never saw the outage."""
    from vlmgrpo.trainer import Trainer

    extra = ("train.save_every=0", "train.steps=3")
    with FaultyReplicate(faults=False) as stub:
        Trainer(_cfg(tiny_vlm_dir, tmp_path / "ref", stub.url, *extra)).fit()
        ref_rows = _rows(tmp_path / "ref")

        from vlmgrpo.imagegen import GENERATORS

        GENERATORS.clear_instances()
        cfg = _cfg(tiny_vlm_dir, tmp_path / "run", stub.url, *extra)
        cfg.rewards[0].kwargs["generator_kwargs"].update(max_down_s=0.5, max_tries=1000)
        tr = Trainer(cfg)
        step = tr.train_step

        def failing_step():
            stub.down = tr.step >= 1
            return step()

        tr.train_step = failing_step
        with pytest.raises(ServiceError) as e:
            tr.fit()
        msg = str(e.value)
        assert "\n" not in msg and msg.startswith("service replicate down for ")
        assert "step 2 abandoned, ckpt-1 saved; resume with: vlmgrpo train --recipe" in msg
        assert msg.endswith("--resume")
        assert [r["step"] for r in _rows(tmp_path / "run")] == [1]
        assert (tmp_path / "run" / "ckpts" / "ckpt-1" / "COMPLETE").is_file()

        stub.down = False
        GENERATORS.clear_instances()  # a new process in real life: a new generator, a closed breaker
        Trainer(_cfg(tiny_vlm_dir, tmp_path / "run", stub.url, *extra), resume="latest").fit()
    _assert_same_params(
        _model_params(tmp_path / "ref" / "ckpts" / "ckpt-3"),
        _model_params(tmp_path / "run" / "ckpts" / "ckpt-3"),
    )
    rows = _rows(tmp_path / "run")
    assert [r["step"] for r in rows] == [1, 2, 3]
    strip = lambda r: {k: v for k, v in r.items() if not k.startswith(("time", "tokens/s"))}  # noqa: E731
    assert [strip(r) for r in rows] == [strip(r) for r in ref_rows]


# --------------------------------------------------------------------------- subprocess runs: signals


TINY = [
    "--set", "warmup.steps=0", "--set", "train.eval_every=0", "--set", "train.log_samples_every=0",
    "--set", "rollout.prompts_per_step=1", "--set", "rollout.group_size=2", "--set", "rollout.max_new_tokens=2",
    "--set", "data.kwargs={n: 64, size: 56}", "--set", "data.eval_kwargs={n: 4, size: 56}",
    "--set", "train.tensorboard=false", "--set", "train.threads=1", "--set", "train.seed=3",
    "--set", "train.device=cpu",
    # a reward with spread in every group, so the weights move and "resumes exactly" can fail (the
    # demo's pixel reward is 0 for a random policy: no gradient)
    "--set", f"rewards=[{{name: '{Path(__file__).parent / 'reward_fns_for_tests.py'}:hashed_slow'}}]",
]  # fmt: skip


def _train_cmd(model_dir, out, steps, *extra):
    return [
        sys.executable, "-m", "vlmgrpo.cli", "train", "--recipe", "demo", "--model", str(model_dir),
        "--output-dir", str(out), "--set", f"train.steps={steps}", *TINY, *extra,
    ]  # fmt: skip


def _metric_steps(out: Path) -> list[int]:
    return [r["step"] for r in _rows(out)]


def _strip(rows):
    return [{k: v for k, v in r.items() if not k.startswith(("time", "tokens/s"))} for r in rows]


@pytest.fixture(scope="module")
def reference_run(tiny_vlm_dir, tmp_path_factory):
    """An uninterrupted 40-step tiny run, saved every 5 steps."""
    out = tmp_path_factory.mktemp("ref") / "run"
    r = subprocess.run(
        _train_cmd(tiny_vlm_dir, out, 40, "--set", "train.save_every=5"),
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    assert all(row["grad_norm"] > 0 for row in _rows(out))  # it trained
    _assert_moved(_model_params(out / "ckpts" / "ckpt-5"), _model_params(out / "ckpts" / "ckpt-40"))
    return out


def _assert_moved(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert sum(not torch.equal(a[k], b[k]) for k in a) > 0.9 * len(a)


def test_sigterm_checkpoints_says_how_to_resume_and_resumes_exactly(tiny_vlm_dir, tmp_path, reference_run):
    out = tmp_path / "run"
    p = subprocess.Popen(
        _train_cmd(tiny_vlm_dir, out, 40, "--set", "train.save_every=5"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 300
    metrics = out / "metrics.jsonl"
    while time.monotonic() < deadline and p.poll() is None:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 3:
            break
        time.sleep(0.02)
    p.send_signal(signal.SIGTERM)
    stdout, stderr = p.communicate(timeout=300)
    assert p.returncode == 0, stderr[-3000:]
    (line,) = [x for x in stdout.splitlines() if x.startswith("stopped at step ")]
    stopped = int(line.split()[3].rstrip(";"))
    assert 3 <= stopped < 40
    assert (out / "ckpts" / f"ckpt-{stopped}" / "COMPLETE").is_file()  # the step finished, then saved
    assert _metric_steps(out) == list(range(1, stopped + 1))

    # the printed command, run as printed (with this interpreter for `vlmgrpo`)
    cmd = shlex.split(line.split("resume with: ", 1)[1])
    assert cmd[:2] == ["vlmgrpo", "train"] and cmd[-1] == "--resume"
    r = subprocess.run(
        [sys.executable, "-m", "vlmgrpo.cli", *cmd[1:]], capture_output=True, text=True, timeout=600
    )
    assert r.returncode == 0, r.stderr[-3000:]
    _assert_same_params(
        _model_params(reference_run / "ckpts" / "ckpt-40"), _model_params(out / "ckpts" / "ckpt-40")
    )
    assert _strip(_rows(out)) == _strip(_rows(reference_run))


# --------------------------------------------------------------------------- numerics and keep_last


def _inf_reward_file(tmp_path: Path) -> Path:
    f = tmp_path / "spiky.py"
    f.write_text(
        "import math\n"
        "def spiky(rec, ctx):\n"
        "    # step index 1 once, then every step from index 4: a non-finite reward -> NaN advantages\n"
        "    if ctx.phase == 'train' and (ctx.step == 1 or ctx.step >= 4):\n"
        "        return math.inf\n"
        "    return float(len(rec.completion))\n"
    )
    return f


def test_nonfinite_updates_are_skipped_counted_then_stop_with_last_checkpoint_intact(tiny_vlm_dir, tmp_path):
    from vlmgrpo.config import load_config
    from vlmgrpo.trainer import Trainer

    f = _inf_reward_file(tmp_path)
    out = tmp_path / "run"
    cfg = load_config(
        "demo",
        [f"model.name_or_path={tiny_vlm_dir}", f"train.output_dir={out}", "train.steps=10",
         "train.save_every=1", "train.keep_last=2", "train.max_nonfinite=3", "train.eval_every=0",
         "train.log_samples_every=0", "train.tensorboard=false", "warmup.steps=0", "train.threads=1",
         "data.kwargs={n: 16, size: 56}", "data.eval_kwargs={n: 4, size: 56}", "rollout.prompts_per_step=1",
         "rollout.group_size=2", "rollout.max_new_tokens=4", f"rewards=[{{name: '{f}:spiky', label: spiky}}]"],
    )  # fmt: skip
    tr = Trainer(cfg)
    with pytest.raises(VlmgrpoError) as e:
        tr.fit()
    msg = str(e.value)
    assert msg.startswith("3 updates with a non-finite loss or gradient; stopping") and "\n" not in msg
    assert "last good checkpoint is untouched" in msg
    rows = _rows(out)
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5]  # step 6 raised before it was logged
    assert [r.get("update/skipped_nonfinite", 0) for r in rows] == [0, 1, 0, 0, 1]
    assert "grad_norm" in rows[0] and "grad_norm" not in rows[1]
    # keep_last=2: only the two newest complete checkpoints, nothing half-written
    ckpts = sorted(p.name for p in (out / "ckpts").iterdir())
    assert ckpts == ["ckpt-4", "ckpt-5"]
    last = _model_params(out / "ckpts" / "ckpt-5")
    assert all(torch.isfinite(v).all() for v in last.values())
    _assert_same_params(last, _model_params(out / "ckpts" / "ckpt-4"))  # step 5's update was dropped


def test_resume_without_any_checkpoint_starts_over_without_duplicate_rows(tiny_vlm_dir, tmp_path):
    """Killed before its first checkpoint: --resume warns, starts from step 0, and the killed
    attempt's rows move aside instead of repeating steps."""
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.jsonl").write_text('{"step": 1, "phase": "grpo"}\n{"step": 2, "phase": "grpo"}\n{"st')
    (out / "ckpts" / ".tmp-ckpt-5").mkdir(parents=True)  # a torn write
    r = subprocess.run(
        [*_train_cmd(tiny_vlm_dir, out, 3, "--set", "train.save_every=0"), "--resume"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    assert "no complete checkpoint" in r.stderr and "interrupted" in r.stderr
    assert _metric_steps(out) == [1, 2, 3]
    assert (out / "metrics.prev.jsonl").is_file()
