"""Rewards loaded by path (`tests/reward_fns_for_tests.py:fn`) in the trainer tests."""

from __future__ import annotations

import json
import time
import zlib

from vlmgrpo.rewards.base import batched


def completion_value(text: str) -> float:
    """A deterministic reward of the completion text alone."""
    return (zlib.crc32(text.encode()) % 97) / 97


@batched
def hashed_slow(records, ctx, sleep: float = 0.0, log_path: str = ""):
    """`completion_value` of each record, after sleeping `sleep` s (a slow remote reward); each call
    is logged (step, phase, sample ids, start/end time) to `log_path`."""
    t0 = time.time()
    time.sleep(sleep)
    if log_path:
        row = {"step": ctx.step, "phase": ctx.phase, "ids": [r.sample.get("id") for r in records]}
        with open(log_path, "a") as f:
            f.write(json.dumps({**row, "start": t0, "end": time.time()}) + "\n")
    return [completion_value(r.completion) for r in records]


@batched
def asks_policy(records, ctx):
    """A reward that queries the policy (as Vision-SR1's blind pass does)."""
    ctx.policy.generate([[{"role": "user", "content": "hi"}]])
    return [0.0 for _ in records]
