"""Data-parallel and sharded training on PyTorch's own distributed engine.

Launch with `torchrun --nproc_per_node N -m vlmgrpo.cli train ...` or `accelerate launch`; both
set RANK / WORLD_SIZE / LOCAL_RANK, which `init()` reads (accelerate's own config settings are
applied or refused by `accelerate_settings` before the config is resolved). One process per GPU
(or per CPU worker with gloo). The global batch of a step is the same whatever the world size:
every rank draws the same global list of prompts from an identically seeded sampler and keeps its
own slice, so a group never spans ranks and group normalisation stays exact.

Wrapping (`dist.strategy`): `ddp` replicates the model (gradients all-reduced by
DistributedDataParallel); `fsdp2` shards it with `fully_shard`, the vision tower and every decoder
layer as their own units (generation then runs with `synced_gpus=True`, after one forward through
the root, as FSDP2 needs). FSDP2 takes a mixed-precision policy (`train.fsdp_param_dtype`,
`train.fsdp_reduce_dtype`) and CPU offload (`train.cpu_offload`), see `FsdpOptions`. Shutdown: the
wrapper is deleted, garbage collected and the ranks meet at a barrier before
`destroy_process_group`; without this gloo sometimes aborts at exit.
"""

from __future__ import annotations

import gc
import logging
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from vlmgrpo.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


def resolve_device(device: str) -> str:
    """ "auto" -> this process's GPU when CUDA is available, else "cpu"; anything else as given.
    Under torchrun / accelerate launch (LOCAL_RANK set) that is `cuda:{LOCAL_RANK}`, the GPU the
    rank trains on (`vlmgrpo.dist.init`), unless the process sees fewer GPUs (one GPU per process
    through CUDA_VISIBLE_DEVICES): then its current device, "cuda"."""
    if device == "auto":
        if not torch.cuda.is_available():
            return "cpu"
        local = os.environ.get("LOCAL_RANK", "")
        if local.isdigit() and int(local) < torch.cuda.device_count():
            return f"cuda:{int(local)}"
        return "cuda"
    return device


def init(device_pref: str = "auto") -> tuple[DistInfo, torch.device]:
    """Join the process group when launched by torchrun/accelerate; pick this rank's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and device_pref in ("auto", "cuda")
    if device_pref not in ("auto", "cuda"):
        device = torch.device(device_pref)
    elif use_cuda:
        device = torch.device("cuda", local if world > 1 else torch.cuda.current_device())
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistInfo(rank, world, local), device


# ------------------------------------------------------------------ accelerate launch configs
# `accelerate launch --config_file cfg.yaml` hands its config to the launched processes as
# environment variables (accelerate/utils/launch.py: ACCELERATE_MIXED_PRECISION is always set,
# ACCELERATE_USE_FSDP and FSDP_* with distributed_type FSDP). `accelerate_overrides` maps the ones
# vlmgrpo has an equivalent for onto `--set` overrides, refuses the ones that would change training
# in a way vlmgrpo cannot do, and names the rest (how FSDP units are chosen and checkpointed,
# which vlmgrpo decides itself). docs/scaling.md has the table.

# FSDP_* settings that describe how to wrap / load / checkpoint: vlmgrpo picks its own units
# (the vision tower, each decoder layer, the leftovers) and saves full state dicts
_FSDP_NOT_USED = (
    "FSDP_VERSION",
    "FSDP_AUTO_WRAP_POLICY",
    "FSDP_TRANSFORMER_CLS_TO_WRAP",
    "FSDP_MIN_NUM_PARAMS",
    "FSDP_BACKWARD_PREFETCH",
    "FSDP_FORWARD_PREFETCH",
    "FSDP_STATE_DICT_TYPE",
    "FSDP_USE_ORIG_PARAMS",
    "FSDP_CPU_RAM_EFFICIENT_LOADING",
    "FSDP_SYNC_MODULE_STATES",
)


def _true(env: Mapping[str, str], key: str) -> bool:
    return env.get(key, "").strip().lower() in ("1", "true", "yes")


def accelerate_settings(env: Mapping[str, str]) -> tuple[list[str], list[str]]:
    """(`--set` overrides, names of accelerate settings not used) for the accelerate config that
    `accelerate launch` exported into `env`; ([], []) when not launched by accelerate. Raises
    ConfigError, one line naming every setting vlmgrpo cannot honour and what to set instead.

    Honoured: distributed_type FSDP / MULTI_GPU -> train.dist_strategy fsdp2 / ddp;
    fsdp_offload_params -> train.cpu_offload; mixed_precision bf16 under FSDP ->
    train.fsdp_param_dtype bfloat16 (accelerate's FSDP policy: bf16 gather, compute and reduce over
    the weights in model.dtype); use_cpu -> train.device cpu."""
    if "ACCELERATE_MIXED_PRECISION" not in env:
        return [], []
    sets: list[str] = []
    refused: list[str] = []
    fsdp = _true(env, "ACCELERATE_USE_FSDP")
    for key, name, instead in (
        ("ACCELERATE_USE_DEEPSPEED", "distributed_type DEEPSPEED", "FSDP or MULTI_GPU"),
        ("ACCELERATE_USE_MEGATRON_LM", "distributed_type MEGATRON_LM", "FSDP or MULTI_GPU"),
        (
            "ACCELERATE_USE_PARALLELISM_CONFIG",
            "parallelism_config",
            "no parallelism_config (data parallel only)",
        ),
    ):
        if _true(env, key):
            refused.append(f"{name} (set {instead})")
    dynamo = env.get("ACCELERATE_DYNAMO_BACKEND", "NO").strip().upper()
    if dynamo not in ("", "NO"):
        refused.append(
            f"dynamo_backend {dynamo} (set dynamo_backend: 'NO'; vlmgrpo compiles its own decode step, "
            "rollout.compile)"
        )
    mp = env.get("ACCELERATE_MIXED_PRECISION", "no").strip().lower()
    if mp == "bf16" and fsdp:
        sets.append("train.fsdp_param_dtype=bfloat16")
    elif mp == "bf16":
        refused.append(
            "mixed_precision bf16 without FSDP (vlmgrpo has no autocast: set distributed_type: FSDP for "
            "bf16 compute over model.dtype weights, or mixed_precision: 'no' with --set model.dtype=bfloat16)"
        )
    elif mp not in ("no", ""):
        refused.append(
            f"mixed_precision {mp} (set bf16 or 'no'; float16 needs a loss scaler vlmgrpo does not have)"
        )
    if fsdp:
        sets.append("train.dist_strategy=fsdp2")
        if _true(env, "FSDP_OFFLOAD_PARAMS"):
            sets.append("train.cpu_offload=true")
        if _true(env, "FSDP_ACTIVATION_CHECKPOINTING"):
            refused.append(
                "fsdp_activation_checkpointing (set false; vlmgrpo does not checkpoint activations)"
            )
        if env.get("FSDP_RESHARD_AFTER_FORWARD", "true").strip().lower() == "false":
            refused.append("fsdp_reshard_after_forward false (set true; vlmgrpo shards fully)")
        strategy = env.get("FSDP_SHARDING_STRATEGY", "FULL_SHARD").strip().upper()
        if strategy not in ("", "FULL_SHARD", "1"):
            refused.append(f"fsdp_sharding_strategy {strategy} (set FULL_SHARD; vlmgrpo shards fully)")
        if env.get("FSDP_IGNORED_MODULES"):
            refused.append("fsdp_ignored_modules (remove it; vlmgrpo shards every parameter)")
    elif "WORLD_SIZE" in env:
        sets.append("train.dist_strategy=ddp")
    if _true(env, "ACCELERATE_USE_CPU"):
        sets.append("train.device=cpu")
    # accelerate runs distributed_type MULTI_CPU (and NO with num_processes > 1) without torchrun:
    # one plain process (it exports MASTER_ADDR only when num_processes > 1) or mpirun; neither
    # sets the RANK / WORLD_SIZE that vlmgrpo.dist.init reads, so N copies would train alone
    mpi = any(k in env for k in ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK"))
    if "WORLD_SIZE" not in env and ("MASTER_ADDR" in env or mpi):
        refused.append(
            "num_processes > 1 without torchrun (distributed_type MULTI_CPU or mpirun; set "
            "distributed_type: MULTI_GPU, which runs torchrun and uses gloo on CPU)"
        )
    if refused:
        raise ConfigError("accelerate config: vlmgrpo cannot honour " + "; ".join(refused))
    unused = [k.lower() for k in _FSDP_NOT_USED if fsdp and k in env]
    return sets, unused


def accelerate_overrides(env: Mapping[str, str] | None = None) -> list[str]:
    """`accelerate_settings` for this process (`os.environ` by default), printing on rank 0 one
    line saying what was applied and which settings vlmgrpo does not use. The caller puts the
    result before the user's own `--set` overrides, so those still win."""
    env = os.environ if env is None else env
    sets, unused = accelerate_settings(env)
    if (sets or unused) and env.get("RANK", "0") == "0":
        note = f"accelerate config: applied {', '.join(sets) or 'nothing'}"
        if unused:
            note += f"; not used (vlmgrpo chooses its FSDP units and saves full weights): {', '.join(unused)}"
        print(note, file=sys.stderr, flush=True)
    return sets


def all_sum(values: list[float], info: DistInfo, device: torch.device) -> list[float]:
    """Sum a few floats over ranks (one collective)."""
    if not info.enabled:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def gather_objects(obj: Any, info: DistInfo) -> list[Any]:
    if not info.enabled:
        return [obj]
    out: list[Any] = [None] * info.world
    dist.all_gather_object(out, obj)
    return out


# FSDP2 mixed-precision dtypes: float16 would need a loss scaler, which the trainer does not have
FSDP_DTYPES = ("bfloat16", "float32")


@dataclass
class FsdpOptions:
    """FSDP2 settings (`train.fsdp_param_dtype`, `train.fsdp_reduce_dtype`, `train.cpu_offload`).

    `param_dtype`: dtype the parameters are all-gathered in and forward/backward compute in, while
    the sharded parameters (what the optimizer updates) keep the model's dtype (`model.dtype`);
    `reduce_dtype`: dtype of the gradient reduce-scatter (None: the param dtype). `cpu_offload`:
    `CPUOffloadPolicy`, the sharded parameters, gradients and optimizer state live on CPU (pinned
    when on GPUs); each unit is copied to the GPU for its forward/backward and the optimizer step
    runs on CPU."""

    param_dtype: str | None = None
    reduce_dtype: str | None = None
    cpu_offload: bool = False

    @classmethod
    def from_train(cls, train: Any) -> FsdpOptions:
        return cls(train.fsdp_param_dtype, train.fsdp_reduce_dtype, train.cpu_offload)

    @property
    def active(self) -> bool:
        return bool(self.param_dtype or self.reduce_dtype or self.cpu_offload)

    def fully_shard_kwargs(self, device: torch.device) -> dict[str, Any]:
        """The `mp_policy` / `offload_policy` keyword arguments of `fully_shard` (empty = defaults)."""
        from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy

        kw: dict[str, Any] = {}
        if self.param_dtype or self.reduce_dtype:
            for key, name in (
                ("fsdp_param_dtype", self.param_dtype),
                ("fsdp_reduce_dtype", self.reduce_dtype),
            ):
                if name is not None and name not in FSDP_DTYPES:
                    raise ConfigError(f"train.{key}: {name!r} is not one of {', '.join(FSDP_DTYPES)}, null")
            kw["mp_policy"] = MixedPrecisionPolicy(
                param_dtype=getattr(torch, self.param_dtype) if self.param_dtype else None,
                reduce_dtype=getattr(torch, self.reduce_dtype) if self.reduce_dtype else None,
            )
        if self.cpu_offload:
            # pinned host memory needs an accelerator; on a CPU device the "offload" is a no-op copy
            kw["offload_policy"] = CPUOffloadPolicy(pin_memory=device.type == "cuda")
        return kw


def _offload_mesh(device: torch.device) -> Any:
    """CPU offload on GPUs keeps the sharded gradients on CPU, so the gradient-norm reduction of
    `clip_grad_norm_` (and the full-state-dict gather of a checkpoint) run collectives on CPU
    tensors, which NCCL cannot carry: shard over a group that has both backends, NCCL for the CUDA
    all-gathers / reduce-scatters and gloo for the CPU collectives. Every rank calls this (it
    creates a process group)."""
    from torch.distributed.device_mesh import DeviceMesh

    group = dist.new_group(backend="cpu:gloo,cuda:nccl")
    return DeviceMesh.from_group(group, device.type)


def wrap(
    logp_model: torch.nn.Module,
    strategy: str,
    info: DistInfo,
    device: torch.device,
    fsdp: FsdpOptions | None = None,
) -> torch.nn.Module:
    """The module the update runs through: DDP around the log-prob module, or FSDP2 units."""
    fsdp = fsdp or FsdpOptions()
    if fsdp.active and strategy != "fsdp2":  # TrainConfig refuses this already; direct callers too
        raise ConfigError(
            "train.fsdp_param_dtype / train.fsdp_reduce_dtype / train.cpu_offload need "
            f"train.dist_strategy=fsdp2 (got {strategy!r})"
        )
    if not info.enabled or strategy == "none":
        if fsdp.active:
            log.warning(
                "train.fsdp_param_dtype / fsdp_reduce_dtype / cpu_offload apply to FSDP2 across 2 or "
                "more processes; ignored in one process"
            )
        return logp_model
    if strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel as DDP

        return DDP(logp_model, device_ids=[device.index] if device.type == "cuda" else None)
    if strategy == "fsdp2":
        from torch.distributed import fsdp as fsdp_api

        kw = fsdp.fully_shard_kwargs(device)
        if fsdp.cpu_offload and device.type == "cuda":
            kw["mesh"] = _offload_mesh(device)
        policy = logp_model.policy
        base = policy.get_base_model() if hasattr(policy, "get_base_model") else policy
        units = [
            m
            for n, m in base.named_modules()
            if n.endswith("visual") or type(m).__name__.endswith("DecoderLayer")
        ]
        covered = {id(p) for u in units for p in u.parameters()}
        # the remaining parameter owners (embeddings, final norm, lm_head) get units of their own, so
        # the root owns no parameter: a root left unsharded after generation then cannot hide the
        # optimizer's sharded parameters from the state-dict APIs. Owners of one tied parameter
        # (embed_tokens and lm_head of Qwen2.5-VL-3B, tie_word_embeddings) share one unit:
        # fully_shard refuses a parameter that another unit already manages.
        groups: list[list[torch.nn.Module]] = [[u] for u in units]
        group_of: dict[int, int] = {}  # parameter id -> index in groups
        for m in base.modules():
            own = list(m.parameters(recurse=False))
            if not own or any(id(p) in covered for p in own):
                continue
            k = next((group_of[id(p)] for p in own if id(p) in group_of), None)
            if k is None:
                groups.append([m])
                k = len(groups) - 1
            else:
                groups[k].append(m)
            group_of.update((id(p), k) for p in own)
        for group in groups:  # the vision tower, each decoder layer, and the leftovers: one unit each
            fsdp_api.fully_shard(group[0] if len(group) == 1 else group, **kw)
        fsdp_api.fully_shard(policy, **kw)
        logp_model.full_forward = True  # go through the root module so FSDP2's hooks run
        return logp_model
    raise ValueError(f"unknown dist strategy {strategy!r}")


def full_state_dict(model: torch.nn.Module, info: DistInfo) -> dict[str, torch.Tensor] | None:
    """The whole model's state dict on CPU, on rank 0 (None elsewhere); gathers FSDP shards."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    if not info.enabled:
        return None
    sd = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return sd if info.is_main else None


def reshard(model: torch.nn.Module) -> None:
    """Put every FSDP2 unit back in its sharded state (generation leaves the root unsharded)."""
    from torch.distributed.fsdp import FSDPModule

    for m in model.modules():
        if isinstance(m, FSDPModule):
            m.reshard()


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def shutdown(info: DistInfo, *wrappers: Any) -> None:
    if not info.enabled or not dist.is_initialized():
        return
    for w in wrappers:
        del w
    gc.collect()
    dist.barrier()
    dist.destroy_process_group()
