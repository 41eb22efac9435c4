"""`accelerate launch --config_file cfg.yaml -m vlmgrpo.cli train ...`: the accelerate config's
settings that vlmgrpo has an equivalent for are applied, the ones it cannot honour stop the run with
one line, the rest are named (vlmgrpo.dist.accelerate_settings; docs/scaling.md).

The environments in the unit tests are the variables accelerate 1.x exports to the processes it
launches (accelerate/utils/launch.py, prepare_multi_gpu_env / prepare_simple_launcher_cmd_env);
the last test runs the real `accelerate launch` with a config file: 2 CPU processes, gloo."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from vlmgrpo.config import load_config
from vlmgrpo.dist import accelerate_overrides, accelerate_settings
from vlmgrpo.errors import ConfigError

# what `accelerate launch` exports for `distributed_type: FSDP`, `mixed_precision: bf16`,
# `fsdp_version: 2`, `fsdp_offload_params: true` (recorded from accelerate 1.16 on this machine)
FSDP_ENV = {
    "ACCELERATE_DYNAMO_BACKEND": "NO",
    "ACCELERATE_MIXED_PRECISION": "bf16",
    "ACCELERATE_USE_FSDP": "true",
    "FSDP_ACTIVATION_CHECKPOINTING": "false",
    "FSDP_AUTO_WRAP_POLICY": "TRANSFORMER_BASED_WRAP",
    "FSDP_CPU_RAM_EFFICIENT_LOADING": "true",
    "FSDP_OFFLOAD_PARAMS": "true",
    "FSDP_RESHARD_AFTER_FORWARD": "true",
    "FSDP_SHARDING_STRATEGY": "FULL_SHARD",
    "FSDP_STATE_DICT_TYPE": "FULL_STATE_DICT",
    "FSDP_VERSION": "2",
    "LOCAL_RANK": "0",
    "MASTER_ADDR": "127.0.0.1",
    "MASTER_PORT": "29500",
    "RANK": "0",
    "WORLD_SIZE": "2",
}
DDP_ENV = {
    "ACCELERATE_DYNAMO_BACKEND": "NO",
    "ACCELERATE_MIXED_PRECISION": "no",
    "MASTER_ADDR": "127.0.0.1",
    "RANK": "1",
    "WORLD_SIZE": "2",
}


def test_not_under_accelerate_changes_nothing():
    assert accelerate_settings({"RANK": "0", "WORLD_SIZE": "2"}) == ([], [])


def test_fsdp_config_is_applied_and_the_rest_named():
    sets, unused = accelerate_settings(FSDP_ENV)
    assert sets == ["train.fsdp_param_dtype=bfloat16", "train.dist_strategy=fsdp2", "train.cpu_offload=true"]
    assert "fsdp_auto_wrap_policy" in unused and "fsdp_state_dict_type" in unused
    cfg = load_config("demo", sets)  # the overrides are valid config
    assert cfg.train.dist_strategy == "fsdp2" and cfg.train.fsdp_param_dtype == "bfloat16"
    assert cfg.train.cpu_offload is True


def test_multi_gpu_config_is_ddp():
    assert accelerate_settings(DDP_ENV) == (["train.dist_strategy=ddp"], [])
    assert accelerate_settings({**DDP_ENV, "ACCELERATE_USE_CPU": "True"})[0][-1] == "train.device=cpu"


@pytest.mark.parametrize(
    "change,named",
    [
        ({"ACCELERATE_MIXED_PRECISION": "fp16"}, "mixed_precision fp16"),
        ({"ACCELERATE_MIXED_PRECISION": "fp8"}, "mixed_precision fp8"),
        ({"ACCELERATE_USE_FSDP": "false"}, "mixed_precision bf16 without FSDP"),
        ({"ACCELERATE_DYNAMO_BACKEND": "INDUCTOR"}, "dynamo_backend INDUCTOR"),
        ({"FSDP_ACTIVATION_CHECKPOINTING": "true"}, "fsdp_activation_checkpointing"),
        ({"FSDP_RESHARD_AFTER_FORWARD": "false"}, "fsdp_reshard_after_forward false"),
        ({"FSDP_SHARDING_STRATEGY": "HYBRID_SHARD"}, "fsdp_sharding_strategy HYBRID_SHARD"),
        ({"ACCELERATE_USE_DEEPSPEED": "true"}, "distributed_type DEEPSPEED"),
        ({"WORLD_SIZE": None}, "num_processes > 1 without torchrun"),
    ],
)
def test_settings_vlmgrpo_cannot_honour_stop_with_one_line(change, named):
    env = {k: v for k, v in {**FSDP_ENV, **change}.items() if v is not None}
    with pytest.raises(ConfigError) as e:
        accelerate_settings(env)
    msg = str(e.value)
    assert msg.startswith("accelerate config: vlmgrpo cannot honour ") and named in msg and "\n" not in msg
    assert "set " in msg  # says what to set instead


def test_every_refusal_is_named_at_once():
    env = {**FSDP_ENV, "ACCELERATE_MIXED_PRECISION": "fp16", "ACCELERATE_DYNAMO_BACKEND": "INDUCTOR"}
    with pytest.raises(ConfigError, match="dynamo_backend INDUCTOR.*; mixed_precision fp16"):
        accelerate_settings(env)


def test_note_printed_on_rank_zero_only(capsys):
    assert accelerate_overrides(FSDP_ENV)[1] == "train.dist_strategy=fsdp2"
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "applied train.fsdp_param_dtype=bfloat16" in err
    assert "not used" in err and "fsdp_auto_wrap_policy" in err
    accelerate_overrides({**FSDP_ENV, "RANK": "1"})
    assert capsys.readouterr().err == ""


COMMON = [
    "train.steps=1",
    "warmup.steps=0",
    "train.eval_every=0",
    "train.save_every=0",
    "train.log_samples_every=0",
    "train.tensorboard=false",
    "train.threads=1",
    "rollout.prompts_per_step=2",
    "rollout.group_size=2",
    "rollout.max_new_tokens=4",
    "data.kwargs={n: 8, size: 56}",
    "data.eval_kwargs={n: 2, size: 56}",
]


def _launch(tmp_path: Path, model_dir: Path, config: dict, *sets: str) -> subprocess.CompletedProcess:
    cfg_file = tmp_path / "accelerate.yaml"
    cfg_file.write_text(yaml.safe_dump(config))
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(cfg_file),
        "--main_process_port",
        "0",  # torchrun picks a free port
        "-m",
        "vlmgrpo.cli",
        "train",
        "--recipe",
        "demo",
        "--model",
        str(model_dir),
        "--output-dir",
        str(tmp_path / "run"),
    ]
    for s in [*COMMON, *sets]:
        cmd += ["--set", s]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)


FSDP_CONFIG = {
    "compute_environment": "LOCAL_MACHINE",
    "distributed_type": "FSDP",
    "mixed_precision": "bf16",
    "num_machines": 1,
    "num_processes": 2,
    "use_cpu": False,
    "fsdp_config": {"fsdp_version": 2, "fsdp_offload_params": True, "fsdp_reshard_after_forward": True},
}


def test_accelerate_launch_with_a_config_file(tiny_vlm_dir, tmp_path):
    """Two processes from a real `accelerate launch --config_file`: FSDP, bf16 and offload reach
    the run's config; the user's --set still wins (fp32 reduction, which gloo needs on CPU)."""
    r = _launch(tmp_path, tiny_vlm_dir, FSDP_CONFIG, "train.fsdp_reduce_dtype=float32")
    assert r.returncode == 0, r.stderr[-3000:]
    notes = [line for line in r.stderr.splitlines() if line.startswith("accelerate config:")]
    assert (
        len(notes) == 1 and "applied train.fsdp_param_dtype=bfloat16, train.dist_strategy=fsdp2" in notes[0]
    )
    resolved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["train"]
    assert resolved["dist_strategy"] == "fsdp2" and resolved["fsdp_param_dtype"] == "bfloat16"
    assert resolved["cpu_offload"] is True and resolved["fsdp_reduce_dtype"] == "float32"
    assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == 1  # rank 0 wrote step 1


@pytest.mark.slow  # 13 s of two processes importing torch; the unit tests above cover the refusals
def test_accelerate_launch_refuses_fp16_with_one_line(tiny_vlm_dir, tmp_path):
    r = _launch(tmp_path, tiny_vlm_dir, {**FSDP_CONFIG, "mixed_precision": "fp16"})
    assert r.returncode != 0
    lines = [line for line in r.stderr.splitlines() if "accelerate config: vlmgrpo cannot honour" in line]
    assert lines and "mixed_precision fp16 (set bf16 or 'no'" in lines[0]
    assert "Traceback" not in r.stderr.split("accelerate config:")[0]  # vlmgrpo's own line, no traceback
    assert not (tmp_path / "run" / "metrics.jsonl").exists()
