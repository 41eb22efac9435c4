"""Soak: 2,000 tiny GRPO steps killed and resumed again and again end with exactly the parameters and
metrics of the same run left alone.

Each life of the run starts `vlmgrpo train ... --resume` in a subprocess and ends in one of four
ways, picked at random: SIGKILL at a random moment once it is training (mid-step, mid-checkpoint,
mid-metrics-line: wherever it lands), SIGKILL from inside a checkpoint write (VLMGRPO_FAULT, at
`after-weights` or `before-marker`), SIGTERM (finish the step, checkpoint, exit 0), or reaching the
last step. The uninterrupted reference runs alongside. Steps are tiny: 1 prompt, group 2, 2 new
tokens, one CPU thread, fp32.

Not in the default test run (marker `soak`): `pytest -m soak tests/test_soak.py`. Knobs (environment):
VLMGRPO_SOAK_STEPS (2000), VLMGRPO_SOAK_SAVE_EVERY (25), VLMGRPO_SOAK_KEEP_LAST (3),
VLMGRPO_SOAK_KILL_WINDOW_S (15: a kill lands up to this long after training resumed),
VLMGRPO_SOAK_SEED (0), VLMGRPO_SOAK_REPORT (a file for the per-life log, JSON).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

pytestmark = pytest.mark.soak

STEPS = int(os.environ.get("VLMGRPO_SOAK_STEPS", "2000"))
SAVE_EVERY = int(os.environ.get("VLMGRPO_SOAK_SAVE_EVERY", "25"))
KEEP_LAST = int(os.environ.get("VLMGRPO_SOAK_KEEP_LAST", "3"))
KILL_WINDOW_S = float(os.environ.get("VLMGRPO_SOAK_KILL_WINDOW_S", "15"))
SEED = int(os.environ.get("VLMGRPO_SOAK_SEED", "0"))
MAX_LIVES = 400


def _cmd(model_dir: Path, out: Path, *extra: str) -> list[str]:
    sets = [
        f"train.steps={STEPS}", f"train.save_every={SAVE_EVERY}", f"train.keep_last={KEEP_LAST}",
        "train.eval_every=0", "train.log_samples_every=0", "train.tensorboard=false", "train.threads=1",
        "train.seed=5", "train.device=cpu", "warmup.steps=0", "rollout.prompts_per_step=1", "rollout.group_size=2",
        "rollout.max_new_tokens=2", "data.kwargs={n: 256, size: 56}", "data.eval_kwargs={n: 4, size: 56}",
    ]  # fmt: skip
    args = [sys.executable, "-m", "vlmgrpo.cli", "train", "--recipe", "demo", "--model", str(model_dir)]
    args += ["--output-dir", str(out)]
    for s in sets:
        args += ["--set", s]
    return args + list(extra)


def _last_row(metrics: Path) -> dict:
    """The last whole line (a torn line is skipped)."""
    try:
        lines = metrics.read_text().splitlines()
    except FileNotFoundError:
        return {}
    for line in reversed(lines):
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and "step" in row:
            return row
    return {}


def _last_step(metrics: Path) -> int:
    return int(_last_row(metrics).get("step", -1))


def _latest_ckpt(root: Path) -> int:
    steps = [int(p.name.split("-")[1]) for p in root.glob("ckpt-*") if (p / "COMPLETE").is_file()]
    return max(steps, default=0)


def _rows(out: Path) -> list[dict]:
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.startswith(("time", "tokens/s"))} for r in rows]


def test_soak_killed_and_resumed_run_ends_with_the_uninterrupted_parameters(tiny_vlm_dir, tmp_path):
    rng = random.Random(SEED)
    ref_out, out = tmp_path / "ref", tmp_path / "run"
    t0 = time.monotonic()
    ref = subprocess.Popen(
        _cmd(tiny_vlm_dir, ref_out), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    lives: list[dict] = []
    finished = False
    for _ in range(MAX_LIVES):
        start_ckpt = _latest_ckpt(out / "ckpts")
        mode = rng.choice(["kill", "kill", "kill", "fault", "term"])
        env = dict(os.environ)
        if mode == "fault":
            k = rng.randint(1, 3)
            at = min(STEPS, (start_ckpt // SAVE_EVERY + k) * SAVE_EVERY)
            env["VLMGRPO_FAULT"] = f"{rng.choice(['after-weights', 'before-marker'])}:{at}"
        launched = time.time()
        p = subprocess.Popen(
            _cmd(tiny_vlm_dir, out, "--resume"),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        delay = None
        if mode in ("kill", "term"):
            # wait until this life has logged a step (rows carry their wall time), then strike at a
            # random moment: mid-step, mid-checkpoint, mid-line
            while p.poll() is None and _last_row(out / "metrics.jsonl").get("time", 0) <= launched:
                time.sleep(0.01)
            delay = rng.uniform(0, KILL_WINDOW_S)
            deadline = time.monotonic() + delay
            while p.poll() is None and time.monotonic() < deadline:
                time.sleep(0.01)
            if p.poll() is None:
                p.send_signal(signal.SIGKILL if mode == "kill" else signal.SIGTERM)
        stdout, stderr = p.communicate(timeout=900)
        life = {
            "mode": mode,
            "fault": env.get("VLMGRPO_FAULT"),
            "delay_s": None if delay is None else round(delay, 2),
            "rc": p.returncode,
            "from_ckpt": start_ckpt,
            "last_row": _last_step(out / "metrics.jsonl"),
            "ckpt_after": _latest_ckpt(out / "ckpts"),
        }
        lives.append(life)
        # a SIGTERM in the last instant, after the handlers are given back, ends it the default way
        late_term = mode == "term" and p.returncode == -signal.SIGTERM and life["ckpt_after"] == STEPS
        assert p.returncode in (0, -signal.SIGKILL) or late_term, (life, stderr[-3000:])
        if mode == "fault" and p.returncode == -signal.SIGKILL:
            assert (out / "ckpts" / f".tmp-ckpt-{env['VLMGRPO_FAULT'].split(':')[1]}").is_dir()
        if mode == "term" and p.returncode == 0 and life["ckpt_after"] < STEPS:
            assert f"stopped at step {life['ckpt_after']}; resume with: " in stdout, stdout[-2000:]
        if (
            p.returncode in (0, -signal.SIGTERM)
            and life["ckpt_after"] == STEPS
            and "stopped at" not in stdout
        ):
            finished = True
            break
    report = os.environ.get("VLMGRPO_SOAK_REPORT")
    if report:
        Path(report).write_text(
            json.dumps({"steps": STEPS, "seconds": time.monotonic() - t0, "lives": lives})
        )
    assert finished, lives[-5:]
    _, ref_err = ref.communicate(timeout=3600)
    assert ref.returncode == 0, ref_err[-3000:]

    a = load_file(str(ref_out / "ckpts" / f"ckpt-{STEPS}" / "model.safetensors"))
    b = load_file(str(out / "ckpts" / f"ckpt-{STEPS}" / "model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)
    rows = _rows(out)
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))  # none missing, none twice
    assert rows == _rows(ref_out)
    kills = sum(1 for life in lives if life["rc"] == -signal.SIGKILL)
    assert kills >= min(5, STEPS // (4 * SAVE_EVERY)), lives  # the run really was killed, many times
    kept = sorted(int(p.name.split("-")[1]) for p in (out / "ckpts").glob("ckpt-*"))
    assert len(kept) == KEEP_LAST and kept[-1] == STEPS  # keep_last held through every kill
