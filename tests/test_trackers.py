"""Weights & Biases through the real `wandb` package in offline mode: the run's local files hold
the step metrics and a completions table; a missing package is one line at start-up."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

from vlmgrpo.config import load_config
from vlmgrpo.errors import ConfigError
from vlmgrpo.trainer import Trainer

wandb = pytest.importorskip("wandb")


def _cfg(model_dir, out, *extra):
    return load_config(
        "demo",
        [
            f"model.name_or_path={model_dir}",
            f"train.output_dir={out}",
            "train.steps=2",
            "train.eval_every=0",
            "train.save_every=0",
            "train.tensorboard=false",
            "train.wandb=true",
            "train.log_samples_every=1",
            "warmup.steps=0",
            "data.kwargs={n: 8, size: 56}",
            "data.eval_kwargs={n: 4, size: 56}",
            "rollout.prompts_per_step=1",
            "rollout.group_size=2",
            "rollout.max_new_tokens=6",
            "optim.grad_accum=1",
            *extra,
        ],
    )


def _records(path):
    """The protobuf records of a .wandb transaction log: a 7-byte header (":W&B", magic, version),
    then LevelDB-style blocks of 32 KiB holding chunks (crc32, length, type: 1 full, 2 first,
    3 middle, 4 last) that never straddle a block."""
    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, chunks, out = 7, b"", []
    while pos + 7 <= len(data):
        left = 32768 - pos % 32768
        if left < 7:  # block trailer padding
            pos += left
            continue
        length, kind = int.from_bytes(data[pos + 4 : pos + 6], "little"), data[pos + 6]
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        chunks = chunk if kind in (1, 2) else chunks + chunk
        if kind in (1, 4):
            out.append(chunks)
    return out


def _run_log(run_dir):
    """(history rows, artifact records) of an offline run, from its .wandb transaction log."""
    from wandb.proto import wandb_internal_pb2

    (log_file,) = run_dir.glob("run-*.wandb")
    deadline = time.time() + 60
    while True:  # wandb's service process may still be writing the log's end after finish()
        recs = []
        for data in _records(log_file):
            rec = wandb_internal_pb2.Record()
            rec.ParseFromString(data)
            recs.append(rec)
        if any(r.WhichOneof("record_type") == "exit" for r in recs) or time.time() > deadline:
            break
        time.sleep(0.2)
    history = [
        {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in r.history.item}
        for r in recs
        if r.WhichOneof("record_type") == "history"
    ]
    return history, [r.artifact for r in recs if r.WhichOneof("record_type") == "artifact"]


def test_wandb_offline_run_holds_step_metrics_and_a_completions_table(tiny_vlm_dir, tmp_path, monkeypatch):
    _offline_wandb(tmp_path, monkeypatch)
    # a 2-step warm start first: its rows count steps from 1 again, on their own W&B axis
    Trainer(_cfg(tiny_vlm_dir, tmp_path / "run", "warmup.steps=2", "warmup.batch_size=2")).fit()
    (run_dir,) = (tmp_path / "wandb-dir" / "wandb").glob("offline-run-*")
    rows, artifacts = _run_log(run_dir)
    steps = [r for r in rows if "reward/mean" in r]
    assert [r["train/step"] for r in steps] == [1, 2]
    warm = [r for r in rows if "warmup/step" in r]  # the warm start's rows, on their own step axis
    assert [r["warmup/step"] for r in warm] == [1, 2] and "warmup/loss" in warm[0]
    assert not any("reward/mean" in r for r in warm)
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    metrics = [m for m in metrics if m["phase"] == "grpo"]
    for got, want in zip(steps, metrics):
        assert got["reward/mean"] == pytest.approx(want["reward/mean"])
        assert got["loss"] == pytest.approx(want["loss"])
    # the completions table of each logged step: a run-table artifact holding the table and images
    tabled = [r for r in rows if "completions/_type" in r]
    assert [(r["train/step"], r["completions/_type"]) for r in tabled] == [
        (1, "table-file"),
        (2, "table-file"),
    ]
    tables = [a for a in artifacts if a.type == "run_table"]
    assert len(tables) == 2
    files = {c.path: c.local_path for c in tables[-1].manifest.contents}
    assert any(p.startswith("media/images/") and p.endswith(".png") for p in files), sorted(files)
    table = json.loads(Path(files["completions.table.json"]).read_text())
    assert table["columns"][:4] == ["step", "prompt", "image", "completion"]
    assert {"similarity", "similarity/raw", "reward", "advantage"} <= set(table["columns"])
    assert len(table["data"]) == 2 and table["data"][0][2]["_type"] == "image-file"
    assert table["data"][0][0] == 2 and table["data"][0][1] == "Describe this image."


def _offline_wandb(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    for var, sub in (("WANDB_DIR", "wandb-dir"), ("WANDB_DATA_DIR", "data"), ("WANDB_CACHE_DIR", "cache")):
        (tmp_path / sub).mkdir()
        monkeypatch.setenv(var, str(tmp_path / sub))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.setenv("WANDB_SILENT", "true")


def test_numpy_and_torch_scalars_reach_wandb_and_non_finite_ones_do_not(tmp_path, monkeypatch):
    """The tracker takes numbers by the same rule as the run log (`vlmgrpo/numeric.py`): a numpy
    or one-element torch value is a number, NaN/inf and strings are left out."""
    import numpy as np
    import torch

    from vlmgrpo.trackers import WandbTracker

    _offline_wandb(tmp_path, monkeypatch)
    tracker = WandbTracker(load_config("demo", [f"train.output_dir={tmp_path / 'run'}"]), tmp_path)
    row = {"step": 1, "time": 0.0, "phase": "grpo", "a": np.float32(0.5), "b": torch.tensor([2.0])}
    tracker.log(1, {**row, "c": 3, "nan": float("nan"), "inf": np.float64("inf")})
    tracker.close()
    (run_dir,) = (tmp_path / "wandb-dir" / "wandb").glob("offline-run-*")
    rows, _ = _run_log(run_dir)
    (logged,) = [r for r in rows if "train/step" in r]
    assert {k: v for k, v in logged.items() if not k.startswith("_")} == {
        "a": 0.5,
        "b": 2.0,
        "c": 3,
        "train/step": 1,
    }


def test_missing_wandb_is_one_line_at_start_up(tiny_vlm_dir, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)
    with pytest.raises(ConfigError, match=r"train\.wandb .*wandb package is not installed"):
        Trainer(_cfg(tiny_vlm_dir, tmp_path / "run"))
    assert not (tmp_path / "run").exists()  # nothing started
    from vlmgrpo import GRPOConfig

    assert GRPOConfig(report_to="wandb").to_config(n_rows=4).train.wandb is True
    with pytest.raises(ConfigError, match=r"report_to='mlflow'"):
        GRPOConfig(report_to=["mlflow"]).to_config(n_rows=4)


def test_wandb_without_a_key_is_one_line(tmp_path):
    """`train.wandb: true` with no API key (and no WANDB_MODE=offline) stopped with W&B's traceback.
    In a fresh process: W&B keeps its settings per process, and other tests here run it offline."""
    import os
    import subprocess

    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(HOME=str(tmp_path), NETRC=str(tmp_path / "no-netrc"), WANDB_CONFIG_DIR=str(tmp_path / "cfg"),
               PYTHONPATH=str(Path(__file__).resolve().parents[1] / "src"))  # fmt: skip
    code = (
        "import sys; from vlmgrpo.config import load_config; from vlmgrpo.trackers import WandbTracker\n"
        "from vlmgrpo.errors import ConfigError\n"
        "try: WandbTracker(load_config('area-tiny', ['train.wandb=true']), sys.argv[1])\n"
        "except ConfigError as e: print(e); sys.exit(2)\n"
    )
    r = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)], env=env, capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 2, r.stderr[-2000:]
    line = r.stdout.strip()
    assert (
        line.startswith("train.wandb (report_to='wandb'): W&B did not start (")
        and "WANDB_MODE=offline" in line
    )
    assert "\n" not in line
    assert not (tmp_path / "wandb_run_id").exists()  # a later run does not take it for its W&B run
