"""Crash safety: a process killed in the middle of a checkpoint write resumes from the last complete
checkpoint and ends with the uninterrupted run's parameters and metrics (fp32, CPU)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

# a reward of the completion text with spread in every group: the weights really move (the demo's
# pixel reward is 0 for a random policy, which would make "same parameters" hold trivially)
REWARD = f"rewards=[{{name: '{Path(__file__).parent / 'reward_fns_for_tests.py'}:hashed_slow'}}]"


def _train(model_dir, out, *extra, env=None):
    args = [
        sys.executable,
        "-m",
        "vlmgrpo.cli",
        "train",
        "--recipe",
        "demo",
        "--model",
        str(model_dir),
        "--output-dir",
        str(out),
        "--set",
        "train.steps=4",
        "--set",
        "train.save_every=2",
        "--set",
        "warmup.steps=0",
        "--set",
        "train.eval_every=2",
        "--set",
        "eval.num_items=4",
        "--set",
        "rollout.prompts_per_step=2",
        "--set",
        "rollout.group_size=4",
        "--set",
        "rollout.max_new_tokens=8",
        "--set",
        "data.kwargs={n: 64, size: 56}",
        "--set",
        "data.eval_kwargs={n: 8, size: 56}",
        "--set",
        "train.tensorboard=false",
        "--set",
        "train.threads=1",
        "--set",
        REWARD,
        *extra,
    ]
    return subprocess.run(
        args, capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=300
    )


def _metrics(out):
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    for r in rows:
        r.pop("time", None)
        for k in list(r):
            if k.startswith(("time/", "tokens/s")):
                r.pop(k)
    return rows


@pytest.fixture(scope="module")
def reference(tiny_vlm_dir, tmp_path_factory):
    """The uninterrupted 4-step run; it trained (grad_norm > 0, ckpt-4's weights differ from ckpt-2's)."""
    out = tmp_path_factory.mktemp("ref") / "ref"
    ref = _train(tiny_vlm_dir, out)
    assert ref.returncode == 0, ref.stderr[-2000:]
    assert all(r["grad_norm"] > 0 for r in _metrics(out) if "grad_norm" in r)
    a = load_file(str(out / "ckpts" / "ckpt-2" / "model.safetensors"))
    b = load_file(str(out / "ckpts" / "ckpt-4" / "model.safetensors"))
    assert sum(not torch.equal(a[k], b[k]) for k in a) > 0.9 * len(a)
    return out


@pytest.mark.parametrize("stage", ["after-weights", "before-marker"])  # every checkpoint.fault_hook stage
def test_sigkill_during_checkpoint_write_then_resume_matches_uninterrupted(
    tiny_vlm_dir, tmp_path, reference, stage
):
    crashed = _train(tiny_vlm_dir, tmp_path / "run", env={"VLMGRPO_FAULT": f"{stage}:4"})
    assert crashed.returncode == -9  # SIGKILL while writing ckpt-4
    ckpts = tmp_path / "run" / "ckpts"
    assert (ckpts / "ckpt-2" / "COMPLETE").is_file()
    assert (ckpts / ".tmp-ckpt-4").is_dir() and not (ckpts / "ckpt-4").exists()
    assert (ckpts / ".tmp-ckpt-4" / "trainer_state.pt").exists() == (stage == "before-marker")

    resumed = _train(tiny_vlm_dir, tmp_path / "run", "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "interrupted" in resumed.stderr  # the torn write is reported, never loaded

    a = load_file(str(reference / "ckpts" / "ckpt-4" / "model.safetensors"))
    b = load_file(str(ckpts / "ckpt-4" / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
    ra, rb = _metrics(reference), _metrics(tmp_path / "run")
    assert [r["step"] for r in rb] == [0, 1, 2, 3, 4]  # no duplicated or missing steps
    assert ra == rb


def test_resume_from_named_checkpoint(tiny_vlm_dir, tmp_path, reference):
    shutil.copytree(reference, tmp_path / "run")  # a finished run, resumed again from ckpt-2
    r = _train(tiny_vlm_dir, tmp_path / "run", "--resume-from", "ckpt-2")
    assert r.returncode == 0, r.stderr[-2000:]
    assert [x["step"] for x in _metrics(tmp_path / "run")] == [0, 1, 2, 3, 4]
    bad = _train(tiny_vlm_dir, tmp_path / "run", "--resume-from", "ckpt-3")
    assert bad.returncode == 2 and "not a complete checkpoint" in bad.stderr.strip().splitlines()[-1]
