"""FSDP2 options (mixed precision, CPU offload), reward-model placement per rank, and a reward
service given up on one rank of a torchrun job (gloo, 2 CPU processes).

The 2-process runs use a reward of the completion text (not the demo's renderer, whose score is 0
for a random policy: no gradient, nothing to compare), so every step really updates the weights."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from vlmgrpo import dist
from vlmgrpo.config import load_config
from vlmgrpo.errors import ConfigError

COMMON = [
    "train.steps=2",
    "warmup.steps=0",
    "train.eval_every=0",
    "train.save_every=0",
    "train.log_samples_every=0",
    "train.tensorboard=false",
    "train.threads=1",
    "rollout.prompts_per_step=2",
    "rollout.group_size=4",
    "rollout.max_new_tokens=6",
    "rollout.seed_per_prompt=true",
    "data.kwargs={n: 32, size: 56}",
    "data.eval_kwargs={n: 4, size: 56}",
    "optim.lr=1e-3",
    "grpo.aggregation=dapo",
]

REWARD = '''
import os
import re
import zlib

from vlmgrpo.errors import ServiceError


def reward(rec, ctx, fail_rank=-1, fail_step=-1):
    """A deterministic score of the completion text; on `fail_rank` from `fail_step` on, the
    service is "given up" (what a generator or judge down past its max_down_s raises)."""
    if int(os.environ.get("RANK", "0")) == fail_rank and ctx.step >= fail_step:
        raise ServiceError("service fake down for 5 s; stopping")
    return (zlib.crc32(rec.completion.encode()) % 97) / 97
'''

# runs the trainer under torchrun with fully_shard recording the keyword arguments it receives
RECORDING_TRAIN = """
import json, os, sys

import torch.distributed.fsdp as fsdp_api

from vlmgrpo.config import load_config
from vlmgrpo.trainer import Trainer

seen = []
real = fsdp_api.fully_shard


def recording(module, **kw):
    mp, off = kw.get("mp_policy"), kw.get("offload_policy")
    seen.append({
        "unit": type(module).__name__,
        "param_dtype": str(getattr(mp, "param_dtype", None)),
        "reduce_dtype": str(getattr(mp, "reduce_dtype", None)),
        "offload": type(off).__name__,
        "pin_memory": getattr(off, "pin_memory", None),
    })
    return real(module, **kw)


fsdp_api.fully_shard = recording
cfg = load_config("demo", sys.argv[1:])
Trainer(cfg).fit()
with open(os.path.join(cfg.train.output_dir, f"units-{os.environ['RANK']}.json"), "w") as f:
    json.dump(seen, f)
"""


def _sets(*pairs: str) -> list[str]:
    return [a for p in pairs for a in ("--set", p)]


def _torchrun(*args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *args]


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", **extra}


def _reward_file(tmp_path, fail_rank: int = -1, fail_step: int = -1) -> str:
    path = tmp_path / "svc_reward.py"
    path.write_text(textwrap.dedent(REWARD))
    kw = f"{{fail_rank: {fail_rank}, fail_step: {fail_step}}}"
    return f"rewards=[{{name: '{path}:reward', kwargs: {kw}}}]"


# --------------------------------------------------------------------------- config (no processes)


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("train.fsdp_param_dtype=bf16", "train.fsdp_param_dtype"),
        ("train.fsdp_reduce_dtype=float16", "train.fsdp_reduce_dtype"),
        ("train.fsdp_reduce_dtype=3", "train.fsdp_reduce_dtype"),
        ("train.cpu_offload=maybe", "train.cpu_offload"),
    ],
)
def test_bad_fsdp_values_name_the_key(override, key):
    with pytest.raises(ConfigError, match=rf"^{key}: "):
        load_config("demo", ["train.dist_strategy=fsdp2", override])


@pytest.mark.parametrize("override", ["train.cpu_offload=true", "train.fsdp_param_dtype=bfloat16"])
def test_fsdp_options_with_ddp_are_a_config_error(override):
    key = override.split("=")[0]
    with pytest.raises(ConfigError, match=rf"^{key}: needs train.dist_strategy=fsdp2"):
        load_config("demo", [override])  # dist_strategy defaults to ddp


def test_fsdp_options_build_the_policies():
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy

    cfg = load_config(
        "demo",
        [
            "train.dist_strategy=fsdp2",
            "train.fsdp_param_dtype=bfloat16",
            "train.fsdp_reduce_dtype=float32",
            "train.cpu_offload=true",
        ],
    )
    opts = dist.FsdpOptions.from_train(cfg.train)
    kw = opts.fully_shard_kwargs(torch.device("cpu"))
    assert kw["mp_policy"] == MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    assert isinstance(kw["offload_policy"], CPUOffloadPolicy) and not kw["offload_policy"].pin_memory
    assert dist.FsdpOptions().fully_shard_kwargs(torch.device("cpu")) == {}  # defaults: FSDP2's own
    with pytest.raises(ConfigError, match="train.cpu_offload"):
        dist.wrap(torch.nn.Linear(2, 2), "ddp", dist.DistInfo(0, 2, 0), torch.device("cpu"), opts)
    # one process: nothing is sharded, the options are ignored (with a warning)
    m = torch.nn.Linear(2, 2)
    assert dist.wrap(m, "fsdp2", dist.DistInfo(), torch.device("cpu"), opts) is m


def test_auto_device_is_this_ranks_gpu(monkeypatch):
    from vlmgrpo.dist import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setenv("LOCAL_RANK", "2")
    assert resolve_device("auto") == "cuda:2"
    assert resolve_device("cuda:3") == "cuda:3"  # a dedicated GPU, as given
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)  # one visible GPU per process
    assert resolve_device("auto") == "cuda"
    monkeypatch.delenv("LOCAL_RANK")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    assert resolve_device("auto") == "cuda"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == "cpu"


# --------------------------------------------------------------------------- 2 processes (gloo)


def test_fsdp2_mixed_precision_and_cpu_offload_reach_fully_shard(tiny_vlm_dir, tmp_path):
    """bf16 compute with fp32 reduction and CPU offload on a CPU device: every FSDP2 unit (vision
    tower, decoder layers, leftovers, root) gets both policies, the run updates the weights, and
    both ranks end with the same float32 parameters."""
    script = tmp_path / "train_recording.py"
    script.write_text(textwrap.dedent(RECORDING_TRAIN))
    out, dump = tmp_path / "run", tmp_path / "dump"
    overrides = [
        *COMMON,
        f"model.name_or_path={tiny_vlm_dir}",
        f"train.output_dir={out}",
        "train.dist_strategy=fsdp2",
        "train.fsdp_param_dtype=bfloat16",
        "train.fsdp_reduce_dtype=float32",
        "train.cpu_offload=true",
        _reward_file(tmp_path),
    ]
    cmd = _torchrun(str(script), *overrides)
    r = subprocess.run(
        cmd, capture_output=True, text=True, env=_env(VLMGRPO_DUMP_PARAMS=str(dump)), timeout=600
    )
    assert r.returncode == 0, r.stderr[-3000:]
    for rank in (0, 1):
        units = json.loads((out / f"units-{rank}.json").read_text())
        names = [u["unit"] for u in units]
        assert any(n.endswith("VisionTransformerPretrainedModel") for n in names), names  # its own unit
        assert sum(n.endswith("DecoderLayer") for n in names) == 2
        for u in units:
            assert u["param_dtype"] == "torch.bfloat16" and u["reduce_dtype"] == "torch.float32", u
            assert u["offload"] == "CPUOffloadPolicy" and u["pin_memory"] is False, u
    rank0 = torch.load(dump / "rank-0.pt", weights_only=True)
    rank1 = torch.load(dump / "rank-1.pt", weights_only=True)
    assert rank0.keys() == rank1.keys()
    for k in rank0:
        assert rank0[k].dtype == torch.float32, k  # the sharded (master) parameters stay fp32
        torch.testing.assert_close(rank0[k], rank1[k], rtol=0, atol=0, msg=k)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [1, 2]
    assert all(row["grad_norm"] > 0 for row in rows)  # the weights really moved


def _dead_service_run(tiny_vlm_dir, tmp_path, strategy: str) -> None:
    out = tmp_path / "run"
    cli = ["-m", "vlmgrpo.cli", "train", "--recipe", "demo", "--model", str(tiny_vlm_dir)]
    cli += ["--output-dir", str(out), "--set", f"train.dist_strategy={strategy}"]
    # rank 1's service dies in step 2 (ctx.step 1); train.save_every=0, so ckpt-1 must be written
    # during the abandon, a collective that used to leave rank 0 waiting in the step's all-reduce
    cli += _sets(*COMMON, _reward_file(tmp_path, fail_rank=1, fail_step=1))
    t0 = time.monotonic()
    r = subprocess.run(_torchrun(*cli), capture_output=True, text=True, env=_env(), timeout=300)
    elapsed = time.monotonic() - t0
    assert r.returncode != 0
    # a line may still start with another process's output (the launcher's, a bar): find the messages
    errors = [m.group(0) for m in re.finditer(r"error: .*", r.stderr)]
    tail = "step 2 abandoned, ckpt-1 saved; resume with: vlmgrpo train --recipe"
    assert len(errors) == 2, r.stderr[-3000:]  # one line per rank
    assert any(e.startswith("error: service fake down for 5 s; stopping; ") for e in errors)  # rank 1
    assert any(e.startswith("error: rank 1: service fake down for 5 s; stopping; ") for e in errors)
    assert all(tail in e and e.endswith("--resume") for e in errors)
    assert "[rank0]" not in r.stderr and "[rank1]" not in r.stderr  # no worker traceback
    assert (out / "ckpts" / "ckpt-1" / "COMPLETE").is_file()
    assert [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()] == [1]
    assert elapsed < 120, elapsed  # the launcher's timeout would be 30 min (gloo) / 10 min (NCCL)


def test_dead_service_on_one_rank_stops_all_ranks(tiny_vlm_dir, tmp_path):
    _dead_service_run(tiny_vlm_dir, tmp_path, "ddp")


@pytest.mark.slow
def test_dead_service_on_one_rank_stops_all_ranks_fsdp2(tiny_vlm_dir, tmp_path):
    _dead_service_run(tiny_vlm_dir, tmp_path, "fsdp2")
