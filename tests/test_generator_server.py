"""`vlmgrpo serve-generator`: one generator served to every rank over Replicate's protocol, talked to
by the real Replicate client (httpx) over local HTTP."""

from __future__ import annotations

import subprocess
import sys
import time

import numpy as np
import pytest

from vlmgrpo.imagegen.render import RenderGenerator
from vlmgrpo.imagegen.replicate import ReplicateGenerator
from vlmgrpo.imagegen.server import GeneratorServer

PROMPTS = [
    "a small red circle at the top left",
    "a large blue square in the center",
    "a green triangle at the bottom right",
    "a yellow circle in the middle",
    "a purple square at the top",
    "a red triangle on the left",
]


class Counting(RenderGenerator):
    def __init__(self, fail_on: str = "", **kw):
        super().__init__(**kw)
        self.fail_on = fail_on

    def generate(self, prompts, seeds=None):
        time.sleep(0.05)
        out = super().generate(prompts, seeds)
        return [None if self.fail_on and self.fail_on in p else im for p, im in zip(prompts, out)]


def _client(url, monkeypatch, **kw):
    monkeypatch.setenv("VLMGRPO_SERVER_TOKEN", "s3cret")
    fast = dict(
        backoff_base=0.001, backoff_cap=0.01, poll_interval=0.02, max_tries=2, retry_failed=0, wait=30
    )
    return ReplicateGenerator(base_url=url, token_env="VLMGRPO_SERVER_TOKEN", **{**fast, **kw})


def test_served_images_equal_local_ones_and_requests_are_batched(monkeypatch):
    with GeneratorServer(Counting(), batch_size=8, max_wait_s=0.3, token="s3cret") as server:
        got = _client(server.url, monkeypatch).generate(PROMPTS, seeds=list(range(6)))
        batches = list(server.batches)
    want = RenderGenerator().generate(PROMPTS, seeds=list(range(6)))
    for a, b in zip(got, want):
        assert a is not None and np.array_equal(np.asarray(a.convert("RGB")), np.asarray(b.convert("RGB")))
    assert sum(batches) == 6 and len(batches) < 6  # concurrent requests shared generate() calls


def test_failed_generation_is_a_failed_prediction_and_a_skipped_sample(monkeypatch):
    with GeneratorServer(Counting(fail_on="green"), token="s3cret") as server:
        gen = _client(server.url, monkeypatch)
        out = gen.generate(PROMPTS[:3], seeds=[1, 2, 3])
    assert out[0] is not None and out[2] is None and gen.failures == 1


def test_wrong_token_is_refused(monkeypatch):
    from vlmgrpo.errors import ServiceError

    with GeneratorServer(Counting(), token="other") as server, pytest.raises(ServiceError, match="rejected"):
        _client(server.url, monkeypatch).generate(PROMPTS[:1], seeds=[1])


def test_polling_without_prefer_wait(monkeypatch):
    with GeneratorServer(Counting(), token="s3cret") as server:
        out = _client(server.url, monkeypatch, wait=0).generate(PROMPTS[:2], seeds=[1, 2])
    assert all(im is not None for im in out)


def test_cli_serves_until_interrupted(tmp_path):
    proc = subprocess.Popen(
        [sys.executable, "-m", "vlmgrpo.cli", "serve-generator", "--generator", "render", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        line = proc.stdout.readline()
        assert line.startswith("serving render at http://127.0.0.1:"), line
    finally:
        proc.send_signal(2)
        assert proc.wait(timeout=20) in (0, 130)  # 130: the CLI's exit status for Ctrl-C


def test_cli_bad_kwargs_is_one_line():
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "vlmgrpo.cli",
            "serve-generator",
            "--generator",
            "render",
            "--kwargs",
            "{oops",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode != 0 and "--kwargs: not JSON" in r.stderr and "Traceback" not in r.stderr
