"""The per-call time bound on rewards (`vlmgrpo.rewards.deadline`, `rewards[].timeout_s`): a reward
stuck in C code on one sample is stopped at its bound, in the main thread and in a worker thread
(the trainer's `rollout.overlap`) alike; that sample is skipped and counted, the warning names its
id, the other samples keep their scores, and the run goes on."""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from vlmgrpo.rewards import RewardContext, RewardRecord, RewardSpec, compute_rewards, deadline

HERE = Path(__file__).resolve().parent
STUCK = f"{HERE / 'slow_rewards_for_tests.py'}:stuck_on_slow"
SLEEPY = f"{HERE / 'slow_rewards_for_tests.py'}:sleepy_batch"


def _records(ids):
    return [RewardRecord("p", "c", [], {"id": i}, group=0, index=k) for k, i in enumerate(ids)]


def _in_thread(fn):
    out: list = []
    t = threading.Thread(target=lambda: out.append(fn()))
    t.start()
    t.join(120)
    assert not t.is_alive()
    return out[0]


@pytest.mark.parametrize("where", ["main_thread", "worker_thread"])
def test_a_stuck_sample_is_skipped_at_the_bound_and_the_rest_are_scored(where, caplog):
    recs = _records(["a", "slow", "b"])
    spec = RewardSpec(STUCK, timeout_s=1.0)
    deadline.call(os.getpid, timeout_s=60)  # a warm worker: start-up is not what is measured here

    def run():
        t0 = time.monotonic()
        return compute_rewards(recs, [spec], RewardContext()), time.monotonic() - t0

    with caplog.at_level(logging.WARNING, logger="vlmgrpo.rewards.base"):
        res, elapsed = run() if where == "main_thread" else _in_thread(run)
    vals = res.per_reward["stuck_on_slow"]
    assert vals[0] == 1.0 and np.isnan(vals[1]) and vals[2] == 1.0
    assert res.failed["stuck_on_slow"] == 1
    assert np.isnan(res.total[1]) and res.metrics()["reward/skipped"] == 1.0
    # 1 s bound + replacing the killed worker (start-up); the stuck call alone would take minutes
    assert elapsed < 30, elapsed
    slow_lines = [r.getMessage() for r in caplog.records if "slow" in r.getMessage()]
    assert len(slow_lines) == 1 and "1 s bound" in slow_lines[0], slow_lines
    # the reward ran in worker processes, and what it put in extras came back
    assert recs[0].extras["worker_pid"] != os.getpid()
    assert recs[2].extras["worker_pid"] != recs[0].extras["worker_pid"]  # the stuck worker was replaced


def test_a_batched_reward_past_its_bound_skips_the_batch():
    recs = _records(["a", "b"])
    t0 = time.monotonic()
    res = compute_rewards(recs, [RewardSpec(SLEEPY, kwargs={"seconds": 60}, timeout_s=1.0)], RewardContext())
    assert time.monotonic() - t0 < 30
    assert np.isnan(res.per_reward["sleepy_batch"]).all() and res.failed["sleepy_batch"] == 2


def test_zero_runs_in_process_and_pure_graders_declare_a_bound():
    from vlmgrpo.rewards import resolve_reward

    recs = _records(["a"])
    compute_rewards(recs, [RewardSpec(STUCK, timeout_s=0)], RewardContext())
    assert recs[0].extras["worker_pid"] == os.getpid()  # 0: no worker, no bound
    for name in ("geometry_accuracy", "geometry_format", "area_correctness", "xml_format"):
        assert deadline.default_timeout(resolve_reward(name).fn) > 0, name
    for name in ("geometry_blind", "img2code", "cycle"):  # policy / sandbox / services: in-process
        assert deadline.default_timeout(resolve_reward(name).fn) == 0, name


def test_exceptions_in_the_worker_keep_their_type():
    with pytest.raises(ZeroDivisionError):
        deadline.call(divmod, 1, 0, timeout_s=30)
    with pytest.raises(deadline.DeadlineExceeded):
        deadline.call(time.sleep, 30, timeout_s=0.5)


def test_a_script_without_a_main_guard_can_use_bounded_rewards(tmp_path):
    """Regression: multiprocessing's spawn re-imported the caller's __main__, so a plain script
    calling compute_rewards at top level failed every sample ("bootstrapping phase")."""
    import subprocess
    import sys

    script = tmp_path / "score.py"
    script.write_text(
        "from vlmgrpo.rewards import RewardContext, RewardRecord, RewardSpec, compute_rewards\n"
        "rec = RewardRecord('p', '<answer>2\\\\sqrt{3}</answer>', [], {'id': 'x', 'answer': '\\\\sqrt{12}'})\n"
        "res = compute_rewards([rec], [RewardSpec('geometry_accuracy')], RewardContext())\n"
        "print('SCORE', res.per_reward['geometry_accuracy'][0], res.failed['geometry_accuracy'])\n"
    )
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert "SCORE 1.0 0" in out.stdout, out.stderr[-2000:]


def test_a_reward_broken_on_every_sample_stops_even_when_one_sample_timed_out():
    """Time-outs are skipped, never a stop; but a reward that raises on every sample that did not
    time out is a bug: one slow sample must not hide it (before: any time-out in the batch did)."""
    from vlmgrpo.rewards.base import RewardError

    spec = RewardSpec(f"{HERE / 'slow_rewards_for_tests.py'}:broken_but_one_slow", timeout_s=0)
    with pytest.raises(RewardError, match="failed on all 3 samples.*TypeError"):
        compute_rewards(_records(["a", "slow", "b"]), [spec], RewardContext())
    res = compute_rewards(_records(["slow", "slow"]), [spec], RewardContext())  # only time-outs
    assert res.failed["broken_but_one_slow"] == 2


GREEDY = f"{HERE / 'slow_rewards_for_tests.py'}:greedy_on_big"
LIMIT = f"{HERE / 'slow_rewards_for_tests.py'}:data_limit"


def test_a_sample_past_its_memory_bound_is_skipped_and_the_rest_are_scored(caplog):
    """A reward that allocates without bound took the trainer's host down: its worker had no memory
    limit. Now each call runs under `max_memory_gb` (RLIMIT_DATA); the sample that allocates 1 GiB
    past a 0.5 GiB bound is skipped and counted like a time-out, the others keep their scores."""
    spec = RewardSpec(GREEDY, timeout_s=60.0, max_memory_gb=0.5)
    with caplog.at_level(logging.WARNING, logger="vlmgrpo.rewards.base"):
        res = compute_rewards(_records(["a", "big", "b"]), [spec], RewardContext())
    vals = res.per_reward["greedy_on_big"]
    assert vals[0] == 1.0 and np.isnan(vals[1]) and vals[2] == 1.0
    assert res.failed["greedy_on_big"] == 1
    (line,) = [r.getMessage() for r in caplog.records if "big" in r.getMessage()]
    assert "0.5 GiB memory bound" in line and "MemoryError" in line, line
    # over the bound on every sample: skipped and counted, not the "broken reward" stop
    res = compute_rewards(_records(["big", "big"]), [spec], RewardContext())
    assert res.failed["greedy_on_big"] == 2
    # the same allocation under a larger bound is granted
    res = compute_rewards(
        _records(["big"]), [RewardSpec(GREEDY, timeout_s=60.0, max_memory_gb=4)], RewardContext()
    )
    assert res.per_reward["greedy_on_big"][0] == 1.0


def test_the_memory_bound_has_a_default_applies_per_call_and_needs_a_worker():
    import resource

    from vlmgrpo.config import RewardEntry
    from vlmgrpo.errors import ConfigError
    from vlmgrpo.rewards.trl_compat import specs_from_entries

    recs = _records(["a"])
    compute_rewards(recs, [RewardSpec(LIMIT, timeout_s=60.0)], RewardContext())
    assert recs[0].extras["data_limit"] == int(deadline.DEFAULT_MEMORY_GB * 2**30)
    compute_rewards(recs, [RewardSpec(LIMIT, timeout_s=60.0, max_memory_gb=0)], RewardContext())
    assert recs[0].extras["data_limit"] == resource.getrlimit(resource.RLIMIT_DATA)[0]  # 0: none
    # a plain `deadline.call` (the graders' own) has none, and a worker keeps none after a call
    assert deadline.call(resource.getrlimit, resource.RLIMIT_DATA, timeout_s=30) == resource.getrlimit(
        resource.RLIMIT_DATA
    )
    # in-process (timeout_s 0): a memory bound cannot apply there, so asking for one is an error
    with pytest.raises(ConfigError, match=r"rewards\[0\]\.max_memory_gb: .* runs in the trainer's process"):
        compute_rewards(recs, [RewardSpec(LIMIT, timeout_s=0, max_memory_gb=2)], RewardContext())
    with pytest.raises(ConfigError, match=r"rewards\[1\]\.max_memory_gb: .*img2code runs in the trainer's"):
        specs_from_entries([RewardEntry(name="length"), RewardEntry(name="img2code", max_memory_gb=2)])
    from vlmgrpo.config import load_config

    with pytest.raises(ConfigError, match=r"rewards\[0\]\.max_memory_gb: must be >= 0"):
        load_config("area-tiny", ["rewards[0].max_memory_gb=-1"])
