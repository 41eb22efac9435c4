"""Rewards loaded by path in `test_reward_deadline.py`: one that never returns on a chosen sample
(stuck in C code, where no signal can interrupt it), one that records extras."""

from __future__ import annotations

import os
import time


def stuck_on_slow(rec, ctx, **kwargs):
    """1.0, except for the sample with id "slow": a huge integer power in C, minutes long."""
    if rec.sample.get("id") == "slow":
        _ = 7 ** (10**10)  # one C call: SIGALRM would only be handled after it returns
    rec.extras["worker_pid"] = os.getpid()
    return 1.0


def sleepy_batch(records, ctx, seconds: float = 60.0):
    time.sleep(seconds)
    return [1.0] * len(records)


sleepy_batch.batched = True


def broken_but_one_slow(rec, ctx, **kwargs):
    """A bug on every sample (a TypeError), but the sample with id "slow" runs out of time first."""
    if rec.sample.get("id") == "slow":
        raise TimeoutError("ran past its 1 s bound and was stopped")
    raise TypeError("unsupported operand type(s) for +: 'int' and 'str'")


def greedy_on_big(rec, ctx, gib: float = 1.0):
    """1.0, except for the sample with id "big": it allocates `gib` GiB and touches every page."""
    if rec.sample.get("id") == "big":
        blob = bytearray(int(gib * 2**30))  # zero-filled: all of it resident, if it is granted
        return float(len(blob) > 0)
    return 1.0


def data_limit(rec, ctx, **kwargs):
    """1.0; the worker's RLIMIT_DATA soft limit during the call goes to `extras`."""
    import resource

    rec.extras["data_limit"] = resource.getrlimit(resource.RLIMIT_DATA)[0]
    rec.extras["worker_pid"] = os.getpid()
    return 1.0
