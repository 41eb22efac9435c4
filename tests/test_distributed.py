"""Training across processes on PyTorch's distributed engine (gloo, 2 CPU processes).

A 2-process DDP or FSDP2 run must end with the same parameters on both ranks, equal (fp32) to a
one-process run over the same global batch; `rollout.seed_per_prompt` makes the sampled
completions independent of the world size so the comparison is exact. A 2-process run resumes in
one process, and the processes shut down cleanly."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

# a reward of the completion text: a random tiny policy gets distinct rewards within a group, so the
# gradients are not zero and the runs really update (the demo's pixel reward is 0 for all of them)
HASH_REWARD = f"rewards=[{{name: '{Path(__file__).parent / 'reward_fns_for_tests.py'}:hashed_slow'}}]"

COMMON = [
    "--set",
    HASH_REWARD,
    "--set",
    "train.steps=2",
    "--set",
    "warmup.steps=0",
    "--set",
    "train.eval_every=0",
    "--set",
    "train.save_every=1",
    "--set",
    "train.log_samples_every=0",
    "--set",
    "train.tensorboard=false",
    "--set",
    "rollout.prompts_per_step=2",
    "--set",
    "rollout.group_size=4",
    "--set",
    "rollout.max_new_tokens=6",
    "--set",
    "rollout.seed_per_prompt=true",
    "--set",
    "data.kwargs={n: 32, size: 56}",
    "--set",
    "data.eval_kwargs={n: 4, size: 56}",
    "--set",
    "train.threads=1",
    "--set",
    "optim.lr=1e-3",
    "--set",
    "grpo.aggregation=dapo",
]


def _run(model_dir, out, nproc, *extra, dump=None, resume=()):
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
        *COMMON,
        *extra,
        *resume,
    ]
    if nproc > 1:
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={nproc}",
            *cli,
        ]
    else:
        cmd = [sys.executable, *cli]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if dump:
        env["VLMGRPO_DUMP_PARAMS"] = str(dump)
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


def _grad_norms(run: Path) -> list[float]:
    return [json.loads(x)["grad_norm"] for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]


def _load(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def _assert_same(a, b, atol=1e-6):
    assert a.keys() == b.keys()
    for k in a:
        # a key bias shifts every attention logit of a query equally: its true gradient is 0, and
        # AdamW turns the float noise in it (summed in another order over 2 ranks) into steps of
        # ~lr; measured 1.6e-6 apart after 2 steps, every other tensor within 1e-6
        tol = max(atol, 1e-5) if atol and k.endswith("k_proj.bias") else atol
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=tol, msg=k)


@pytest.fixture(scope="module")
def single_run(tiny_vlm_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("single")
    _run(tiny_vlm_dir, out / "run", 1, dump=out / "dump")
    return out


@pytest.mark.parametrize("strategy", ["ddp", "fsdp2"])
def test_two_processes_equal_one_process(strategy, tiny_vlm_dir, single_run, tmp_path):
    r = _run(
        tiny_vlm_dir, tmp_path / "run", 2, "--set", f"train.dist_strategy={strategy}", dump=tmp_path / "dump"
    )
    assert "Traceback" not in r.stderr and "abort" not in r.stderr.lower()
    rank0, rank1 = _load(tmp_path / "dump" / "rank-0.pt"), _load(tmp_path / "dump" / "rank-1.pt")
    _assert_same(rank0, rank1, atol=0)  # identical on both ranks
    _assert_same(rank0, _load(single_run / "dump" / "rank-0.pt"))  # equal to the 1-process run
    rows = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert len(rows) == 2  # rank 0 alone writes
    assert min(_grad_norms(single_run / "run")) > 0 and min(_grad_norms(tmp_path / "run")) > 0  # real updates


@pytest.fixture(scope="module")
def tied_vlm_dir(tiny_vlm_dir, tmp_path_factory):
    """The tiny Qwen2.5-VL with its LM head tied to the input embeddings, as Qwen2.5-VL-3B has
    (tie_word_embeddings: true): one parameter owned by two modules."""
    from transformers import AutoModelForImageTextToText

    out = tmp_path_factory.mktemp("tied")
    base = AutoModelForImageTextToText.from_pretrained(tiny_vlm_dir)
    cfg = base.config
    cfg.tie_word_embeddings = True
    cfg.get_text_config().tie_word_embeddings = True
    model = type(base)(cfg)
    model.load_state_dict(base.state_dict(), strict=False)
    model.tie_weights()
    assert model.lm_head.weight is model.get_input_embeddings().weight
    model.save_pretrained(out)
    for f in Path(tiny_vlm_dir).iterdir():  # tokenizer, processor, chat template
        if not (out / f.name).exists():
            shutil.copy(f, out / f.name)
    return out


def test_fsdp2_with_tied_embeddings_equals_one_process(tied_vlm_dir, tmp_path):
    """fully_shard refused the tied embedding/LM-head weight when the two modules became two units
    ("shared with a parameter already managed by another FSDP group"): they now share one unit."""
    _run(tied_vlm_dir, tmp_path / "one", 1, dump=tmp_path / "dump1")
    _run(tied_vlm_dir, tmp_path / "two", 2, "--set", "train.dist_strategy=fsdp2", dump=tmp_path / "dump2")
    rank0, rank1 = _load(tmp_path / "dump2" / "rank-0.pt"), _load(tmp_path / "dump2" / "rank-1.pt")
    _assert_same(rank0, rank1, atol=0)
    _assert_same(rank0, _load(tmp_path / "dump1" / "rank-0.pt"))
    assert min(_grad_norms(tmp_path / "two")) > 0


def test_two_process_run_resumes_in_one_process(tiny_vlm_dir, tmp_path):
    _run(tiny_vlm_dir, tmp_path / "run", 2, dump=tmp_path / "dump2")
    shutil.rmtree(tmp_path / "run" / "ckpts" / "ckpt-2")
    _run(tiny_vlm_dir, tmp_path / "run", 1, dump=tmp_path / "dump1", resume=("--resume",))
    _assert_same(_load(tmp_path / "dump2" / "rank-0.pt"), _load(tmp_path / "dump1" / "rank-0.pt"))
    steps = [line.split(",")[0] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(steps) == 2


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp2"])
def test_clean_shutdown_in_ten_runs(strategy, tiny_vlm_dir, tmp_path):
    for i in range(10):
        r = _run(
            tiny_vlm_dir,
            tmp_path / f"run{i}",
            2,
            "--set",
            f"train.dist_strategy={strategy}",
            "--set",
            "train.steps=1",
        )
        assert "abort" not in r.stderr.lower() and "Traceback" not in r.stderr


def test_fsdp2_run_saves_and_resumes_under_fsdp2(tiny_vlm_dir, tmp_path):
    """A 2-process FSDP2 run checkpoints every step (full weights + full optimizer state gathered
    from the shards); with its last checkpoint removed, a 2-process FSDP2 resume from ckpt-1 ends
    with the uninterrupted run's weights, exactly (same world size, same reduction order)."""
    fsdp = ("--set", "train.dist_strategy=fsdp2")
    _run(tiny_vlm_dir, tmp_path / "run", 2, *fsdp, dump=tmp_path / "full")
    assert min(_grad_norms(tmp_path / "run")) > 0  # both steps trained
    state = torch.load(tmp_path / "run" / "ckpts" / "ckpt-1" / "trainer_state.pt", weights_only=False)
    assert state["optimizer_format"] == "full" and state["optimizer"]["state"]  # the moments were saved
    shutil.rmtree(tmp_path / "run" / "ckpts" / "ckpt-2")
    row1 = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0]
    _run(tiny_vlm_dir, tmp_path / "run", 2, *fsdp, dump=tmp_path / "resumed", resume=("--resume",))
    # it resumed (step 1's row, timings included, is the first run's), not started over
    assert (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0] == row1
    full = _load(tmp_path / "full" / "rank-0.pt")
    _assert_same(full, _load(tmp_path / "resumed" / "rank-0.pt"), atol=0)
    _assert_same(full, _load(tmp_path / "resumed" / "rank-1.pt"), atol=0)
    assert [json.loads(x)["step"] for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()] == [
        1,
        2,
    ]
