"""Signals, as docs/reliability.md states them: the first SIGINT (or SIGTERM) lets the current step
finish, checkpoints, exits 0 with the resume line; a second signal kills at once; under torchrun a
signal that reaches one rank stops every rank at the same step.

Every wait is on an event (a metrics row written, the handler gone from /proc/PID/status, the
process ending), never on a sleep; pytest-timeout bounds each test. The reward sleeps 1-2 s per
step (`hashed_slow`), so a signal sent right after a step's row lands early in the next step."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

FNS = Path(__file__).parent / "reward_fns_for_tests.py"

pytestmark = pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc (Linux)")


def _args(model_dir, out, steps, sleep, *extra):
    reward = f"rewards=[{{name: '{FNS}:hashed_slow', kwargs: {{sleep: {sleep}}}}}]"
    sets = [
        f"train.steps={steps}", "train.save_every=0", "warmup.steps=0", "train.eval_every=0",
        "train.log_samples_every=0", "train.tensorboard=false", "train.threads=1", "train.device=cpu",
        "rollout.prompts_per_step=2", "rollout.group_size=2", "rollout.max_new_tokens=2",
        "data.kwargs={n: 16, size: 56}", "data.eval_kwargs={n: 4, size: 56}", reward, *extra,
    ]  # fmt: skip
    cli = [
        "-m",
        "vlmgrpo.cli",
        "train",
        "--recipe",
        "demo",
        "--model",
        str(model_dir),
        "--output-dir",
        str(out),
    ]
    return cli + [x for s in sets for x in ("--set", s)]


def _wait_for_rows(p: subprocess.Popen, metrics: Path, n: int) -> None:
    """Until metrics.jsonl has n rows (the process must still be running)."""
    while not (metrics.exists() and len(metrics.read_text().splitlines()) >= n):
        assert p.poll() is None, p.communicate()[1][-3000:]
        time.sleep(0.01)


def _catches(pid: int, sig: int) -> bool:
    """Whether process `pid` has a handler installed for `sig` (SigCgt in /proc/PID/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) >> (sig - 1) & 1)
    raise AssertionError("no SigCgt line")


def _stopped_step(stdout: str) -> int:
    (line,) = [x for x in stdout.splitlines() if x.startswith("stopped at step ")]
    assert "resume with: vlmgrpo train --recipe" in line and line.endswith("--resume")
    return int(line.split()[3].rstrip(";"))


def _steps(out: Path) -> list[int]:
    import json

    return [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()]


def test_sigint_finishes_the_step_checkpoints_and_exits_0(tiny_vlm_dir, tmp_path):
    out = tmp_path / "run"
    p = subprocess.Popen(
        [sys.executable, *_args(tiny_vlm_dir, out, 50, 1.0)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    _wait_for_rows(p, out / "metrics.jsonl", 1)
    p.send_signal(signal.SIGINT)
    stdout, stderr = p.communicate()
    assert p.returncode == 0, stderr[-3000:]
    n = _stopped_step(stdout)
    assert 1 <= n < 50  # the step running when the signal came finished (or step 1 was just done)
    assert _steps(out) == list(range(1, n + 1))
    assert (out / "ckpts" / f"ckpt-{n}" / "COMPLETE").is_file()


def test_second_signal_kills_at_once(tiny_vlm_dir, tmp_path):
    out = tmp_path / "run"
    p = subprocess.Popen(
        [sys.executable, *_args(tiny_vlm_dir, out, 50, 2.0)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    _wait_for_rows(p, out / "metrics.jsonl", 1)
    assert _catches(p.pid, signal.SIGTERM)
    p.send_signal(signal.SIGTERM)
    while _catches(p.pid, signal.SIGTERM):  # the handler ran: the default action is back
        assert p.poll() is None
        time.sleep(0.005)
    p.send_signal(signal.SIGTERM)  # arrives within the 2 s reward of the step in progress
    stdout, _ = p.communicate()
    assert p.returncode == -signal.SIGTERM
    assert "stopped at step" not in stdout
    assert not (out / "ckpts").exists() or not any((out / "ckpts").glob("ckpt-*"))


def _rank_pid(launcher: subprocess.Popen, rank: int) -> int:
    """The pid of the torchrun worker with RANK=rank (a child of the launcher)."""
    while True:
        kids = Path(f"/proc/{launcher.pid}/task/{launcher.pid}/children").read_text().split()
        for k in kids:
            try:
                env = Path(f"/proc/{k}/environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if f"RANK={rank}".encode() in env:
                return int(k)
        assert launcher.poll() is None
        time.sleep(0.01)


def test_sigterm_to_one_rank_under_torchrun_stops_every_rank_at_the_same_step(tiny_vlm_dir, tmp_path):
    """2 gloo processes; SIGTERM reaches rank 1 only. Both ranks finish the same step, the
    checkpoint is written, both ranks end fit() with the same weights, the launcher exits 0."""
    out, dump = tmp_path / "run", tmp_path / "dump"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    cmd += _args(tiny_vlm_dir, out, 50, 1.0, "train.dist_strategy=ddp")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "VLMGRPO_DUMP_PARAMS": str(dump)}
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    _wait_for_rows(p, out / "metrics.jsonl", 1)
    pid = _rank_pid(p, 1)
    assert _catches(pid, signal.SIGTERM)  # fit() installed its handler
    os.kill(pid, signal.SIGTERM)
    stdout, stderr = p.communicate()
    assert p.returncode == 0, stderr[-3000:]
    n = _stopped_step(stdout)  # printed by rank 0, which got no signal
    assert 1 <= n < 50 and _steps(out) == list(range(1, n + 1))
    assert (out / "ckpts" / f"ckpt-{n}" / "COMPLETE").is_file()
    a, b = (torch.load(dump / f"rank-{k}.pt", weights_only=True) for k in (0, 1))
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)


def test_a_stopped_demo_writes_no_summary_and_runs_no_later_seed(tmp_path):
    """`vlmgrpo demo` on Ctrl-C: the trainer checkpoints and says how to resume; the demo then
    stops too (exit 130) instead of summarising, evaluating and reporting a cut run and going on
    to the next seed."""
    out = tmp_path / "demo"
    reward = f"rewards=[{{name: '{FNS}:hashed_slow', kwargs: {{sleep: 1.0}}}}]"
    sets = ["train.steps=50", "warmup.steps=0", "train.eval_every=0", "train.save_every=0",
            "rollout.prompts_per_step=2", "rollout.group_size=2", "rollout.max_new_tokens=2",
            "train.threads=1", reward]  # fmt: skip
    cmd = [sys.executable, "-m", "vlmgrpo.cli", "demo", "--output-dir", str(out), "--seeds", "1,2"]
    p = subprocess.Popen(
        cmd + [x for s in sets for x in ("--set", s)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    _wait_for_rows(p, out / "seed-1" / "metrics.jsonl", 1)
    p.send_signal(signal.SIGINT)
    stdout, stderr = p.communicate()
    assert p.returncode == 130, stderr[-2000:]
    assert "seed 1: stopped by a signal" in stdout and _stopped_step(stdout) >= 1
    assert not (out / "seed-1" / "summary.json").exists() and not (out / "seed-1" / "report.html").exists()
    assert not (out / "seed-2").exists()
