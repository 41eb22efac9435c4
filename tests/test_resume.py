"""Crash safety: a process killed in the middle of a checkpoint write resumes from the last complete
checkpoint and ends with the uninterrupted run's parameters and metrics (fp32, CPU)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import torch
from safetensors.torch import load_file


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


def test_sigkill_during_checkpoint_write_then_resume_matches_uninterrupted(tiny_vlm_dir, tmp_path):
    ref = _train(tiny_vlm_dir, tmp_path / "ref")
    assert ref.returncode == 0, ref.stderr[-2000:]

    crashed = _train(tiny_vlm_dir, tmp_path / "run", env={"VLMGRPO_FAULT": "before-marker:4"})
    assert crashed.returncode == -9  # SIGKILL while writing ckpt-4
    ckpts = tmp_path / "run" / "ckpts"
    assert (ckpts / "ckpt-2" / "COMPLETE").is_file()
    assert (ckpts / ".tmp-ckpt-4").is_dir() and not (ckpts / "ckpt-4").exists()

    resumed = _train(tiny_vlm_dir, tmp_path / "run", "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "interrupted" in resumed.stderr  # the torn write is reported, never loaded

    a = load_file(str(tmp_path / "ref" / "ckpts" / "ckpt-4" / "model.safetensors"))
    b = load_file(str(ckpts / "ckpt-4" / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
    ra, rb = _metrics(tmp_path / "ref"), _metrics(tmp_path / "run")
    assert [r["step"] for r in rb] == [0, 1, 2, 3, 4]  # no duplicated or missing steps
    assert ra == rb


def test_resume_from_named_checkpoint(tiny_vlm_dir, tmp_path):
    assert _train(tiny_vlm_dir, tmp_path / "run").returncode == 0
    r = _train(tiny_vlm_dir, tmp_path / "run", "--resume-from", "ckpt-2")
    assert r.returncode == 0, r.stderr[-2000:]
    assert [x["step"] for x in _metrics(tmp_path / "run")] == [0, 1, 2, 3, 4]
    bad = _train(tiny_vlm_dir, tmp_path / "run", "--resume-from", "ckpt-3")
    assert bad.returncode == 2 and "not a complete checkpoint" in bad.stderr.strip().splitlines()[-1]
