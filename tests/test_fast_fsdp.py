"""FSDP2 through the fast engine (rollout/fast.py `gathered`): 2 gloo processes on CPU, a tiny
policy sharded as the trainer shards it. Each rank's tokens and log-probs equal one process's
(unsharded) engine on the same prompts and seed, and the weights are sharded again afterwards."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve().parent


@pytest.mark.parametrize("lora", [False, pytest.param(True, marks=pytest.mark.slow)])  # ~20 s each
def test_fsdp2_rollout_equals_one_process(lora, tiny_vlm_dir, tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    cmd += [str(HERE / "fsdp_rollout_worker.py"), str(tiny_vlm_dir), str(tmp_path)]
    cmd += ["--lora"] if lora else []
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
    }
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]

    sys.path.insert(0, str(HERE))
    from fsdp_rollout_worker import rollouts, setup

    model, proc = setup(str(tiny_vlm_dir), lora)
    for rank in (0, 1):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        assert got["fused"] and got["lora"] == lora and got["resharded"]
        want = rollouts(model, proc, rank, synced=False)
        for k in ("greedy_ids", "sampled_ids"):
            assert torch.equal(got[k], want[k]), (rank, k)
        for k in ("greedy_logps", "sampled_logps"):
            assert (got[k] - want[k]).abs().max() < 1e-5, (rank, k)
