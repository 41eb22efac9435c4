"""The Python API, in TRL's names: `GRPOConfig` and `GRPOTrainer`.

    from vlmgrpo import GRPOConfig, GRPOTrainer   # instead of: from trl import ...

`GRPOConfig` takes TRL's field names with TRL's defaults for the subset vlmgrpo supports and maps
them onto the one native schema (`vlmgrpo.config.Config`); `MAPPING` below is that mapping, the
only place it is written. Every other TRL field is accepted at its TRL default; set to anything
else it is a `ConfigError` that names it (a few that only tune TRL's own machinery, such as
`dataloader_num_workers`, are accepted with a warning that they have no effect here).

Batch sizes mean what they mean in TRL: `per_device_train_batch_size` completions per device per
micro-batch, `gradient_accumulation_steps` micro-batches per optimizer step, so one step trains on
per_device_train_batch_size x processes x gradient_accumulation_steps completions, that is this
number / num_generations prompts (groups never span processes here: the per-device count times
gradient_accumulation_steps must be a multiple of num_generations).

`GRPOTrainer(model, reward_funcs, args, train_dataset, eval_dataset, processing_class,
peft_config)` takes a Hub id, a local folder or a loaded `PreTrainedModel`; datasets in TRL's
conventions (`vlmgrpo.data.hf`); rewards in TRL's signature (`vlmgrpo.rewards.trl_compat`), native
reward names or `file.py:function` strings, mixed freely. `.train(resume_from_checkpoint)` runs
the native trainer (`vlmgrpo.trainer.Trainer`); `.save_model(dir)` writes the policy in Hugging
Face format (the adapter for LoRA, as TRL does; `vlmgrpo export` merges it).

Differences that remain (docs: README "Coming from TRL"): prompts are drawn uniformly with
replacement, not in shuffled epochs (`num_train_epochs` sets the number of steps to the same
count of prompts); metrics are logged every step (`logging_steps` sets how often the completions
are logged); `bf16` means bf16 weights with fp32 optimizer moments, not autocast over fp32 weights.
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlmgrpo.config import Config, RewardEntry, validate
from vlmgrpo.errors import ConfigError

log = logging.getLogger(__name__)

# TRL field -> where it lands in the native schema (the one table of the mapping; `to_config`
# implements it, the README's "Coming from TRL" table is written from it)
MAPPING: dict[str, str] = {
    "output_dir": "train.output_dir",
    "learning_rate": "optim.lr",
    "num_generations": "rollout.group_size",
    "num_generations_eval": "eval.num_chains",
    "max_completion_length": "rollout.max_new_tokens (and eval)",
    "max_prompt_length": "longer prompts (image tokens included) are skipped and counted, never truncated",
    "per_device_train_batch_size": "optim.micro_batch_seqs; with the next two, rollout.prompts_per_step",
    "gradient_accumulation_steps": "rollout.prompts_per_step = batch x processes x accumulation / num_generations",
    "max_steps": "train.steps",
    "num_train_epochs": "train.steps = ceil(epochs x rows / prompts per step) when max_steps <= 0",
    "beta": "grpo.beta (> 0: grpo.ref.kind adapter with LoRA, else copy)",
    "epsilon": "grpo.clip_low (grpo.loss ppo: the clipped ratio, as TRL)",
    "epsilon_high": "grpo.clip_high (None = epsilon)",
    "loss_type": "grpo.aggregation (grpo, bnpo, dr_grpo, dapo)",
    "scale_rewards": "grpo.adv_scale (group, batch, none; True = group, False = none)",
    "temperature": "rollout.temperature and eval.temperature",
    "top_p": "rollout.top_p",
    "top_k": "rollout.top_k",
    "logging_steps": "how often completions are logged (metrics: every step)",
    "log_completions": "train.log_samples_every = logging_steps (False: 0)",
    "save_strategy": "steps or no (no: only the final checkpoint)",
    "save_steps": "train.save_every",
    "save_total_limit": "train.keep_last",
    "eval_strategy": "no or steps",
    "eval_steps": "train.eval_every (None = logging_steps)",
    "seed": "train.seed",
    "bf16": "model.dtype bfloat16 (unless model_init_kwargs sets dtype)",
    "gradient_checkpointing": "model.gradient_checkpointing",
    "report_to": "train.tensorboard, train.wandb (tensorboard, wandb, none, all, or a list)",
    "run_name": "train.wandb_name",
    "reward_weights": "each reward's weight",
    "max_grad_norm": "optim.max_grad_norm",
    "weight_decay": "optim.weight_decay",
    "adam_beta1": "optim.betas[0]",
    "adam_beta2": "optim.betas[1]",
    "adam_epsilon": "optim.eps",
    "warmup_steps": "optim.warmup_steps (a value < 1 is a ratio of the steps)",
    "warmup_ratio": "optim.warmup_steps = ceil(ratio x steps)",
    "lr_scheduler_type": "optim.schedule (linear, cosine, constant, constant_with_warmup)",
    "model_init_kwargs": "from_pretrained kwargs; dtype -> model.dtype, attn_implementation -> model.*",
    "use_cpu": "train.device cpu",
}


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


# TRL fields vlmgrpo does not implement, at their TRL defaults: accepted only at that value.
# (Field names and defaults of trl 1.16's GRPOConfig, including transformers' TrainingArguments.)
_UNSUPPORTED_NONE = _words(
    """lr_scheduler_kwargs optim_args optim_target_modules tf32 activation_checkpointing
    activation_checkpointing_kwargs gradient_checkpointing_kwargs torch_compile_backend
    torch_compile_mode liger_kernel_config neftune_noise_alpha torch_empty_cache_steps disable_tqdm
    trackio_space_id trackio_bucket_id trackio_static_space_id eval_accumulation_steps hub_token
    hub_private_repo hub_model_id hub_revision metric_for_best_model greater_is_better data_seed
    accelerator_config parallelism_config dataloader_prefetch_factor dataloader_multiprocessing_context
    label_names ddp_find_unused_parameters ddp_bucket_cap_mb ddp_broadcast_buffers ddp_static_graph
    ddp_backend fsdp fsdp_config deepspeed resume_from_checkpoint router_aux_loss_coef
    generation_batch_size steps_per_generation min_p generation_kwargs chat_template_kwargs
    cache_implementation vllm_structured_outputs_regex vllm_server_base_url vllm_max_model_length delta
    max_tool_calling_iterations vllm_importance_sampling_clip_min off_policy_mask_threshold
    num_completions_to_print log_completions_hub_repo transformers_continuous_batching_config
    vllm_importance_sampling_cap"""
)
_UNSUPPORTED_FALSE = _words(
    """fp16 bf16_full_eval fp16_full_eval torch_compile use_liger_kernel use_cache auto_find_batch_size
    logging_first_step prediction_loss_only eval_on_start eval_use_gather_object batch_eval_metrics
    save_only_model save_on_each_node enable_jit_checkpoint push_to_hub hub_always_push
    load_best_model_at_end ignore_data_skip restore_callback_states_from_checkpoint full_determinism
    dataloader_drop_last dataloader_persistent_workers remove_unused_columns do_train do_eval do_predict
    trust_remote_code disable_dropout cast_lm_head_to_fp32 use_vllm vllm_enable_sleep_mode
    mask_truncated_completions sync_ref_model use_adaptive_entropy log_unique_prompts
    use_transformers_continuous_batching use_transformers_paged"""
)
_UNSUPPORTED_OTHER: dict[str, Any] = {
    "optim": "adamw_torch_fused",
    "average_tokens_across_devices": True,
    "label_smoothing_factor": 0.0,
    "logging_strategy": "steps",
    "log_on_each_node": True,
    "logging_nan_inf_filter": True,
    "include_num_input_tokens_seen": "no",
    "log_level": "passive",
    "log_level_replica": "warning",
    "project": "huggingface",
    "eval_delay": 0,
    "per_device_eval_batch_size": 8,
    "eval_do_concat_batches": True,
    "include_for_metrics": [],
    "hub_strategy": "every_save",
    "dataloader_num_workers": 0,
    "dataloader_pin_memory": True,
    "dataloader_in_order": True,
    "train_sampling_strategy": "random",
    "length_column_name": "length",
    "ddp_timeout": 1800,
    "debug": "",
    "skip_memory_metrics": True,
    "local_rank": -1,
    "ds3_gather_for_generation": True,
    "shuffle_dataset": True,
    "pad_to_multiple_of": "auto",
    "repetition_penalty": 1.0,
    "vllm_mode": "colocate",
    "vllm_model_impl": "vllm",
    "vllm_server_host": "0.0.0.0",
    "vllm_server_port": 8000,
    "vllm_server_timeout": 240.0,
    "vllm_group_port": 51216,
    "vllm_gpu_memory_utilization": 0.3,
    "vllm_tensor_parallel_size": 1,
    "num_iterations": 1,
    "sapo_temperature_neg": 1.05,
    "sapo_temperature_pos": 1.0,
    "vespo_k_pos": 2.0,
    "vespo_lambda_pos": 3.0,
    "vespo_k_neg": 3.0,
    "vespo_lambda_neg": 2.0,
    "importance_sampling_level": "token",
    "multi_objective_aggregation": "sum_then_normalize",
    "ref_model_mixup_alpha": 0.6,
    "ref_model_sync_steps": 512,
    "top_entropy_quantile": 1.0,
    "entropy_coef": 0.0,
    "entropy_coef_min": 0.0,
    "entropy_coef_max": 1.0,
    "entropy_coef_delta": 0.005,
    "entropy_target": 0.2,
    "vllm_importance_sampling_correction": True,
    "vllm_importance_sampling_mode": "sequence_mask",
    "vllm_importance_sampling_clip_max": 3.0,
    "use_bias_correction_kl": True,
    "log_multimodal": True,
}
UNSUPPORTED: dict[str, Any] = {
    **dict.fromkeys(_UNSUPPORTED_NONE),
    **dict.fromkeys(_UNSUPPORTED_FALSE, False),
    **_UNSUPPORTED_OTHER,
}
# knobs of TRL's own data loading and logging machinery: any value is accepted, with a warning
NO_EFFECT = _words(
    """dataloader_num_workers dataloader_pin_memory dataloader_persistent_workers dataloader_prefetch_factor
    dataloader_drop_last dataloader_in_order disable_tqdm logging_strategy log_level log_level_replica
    log_on_each_node logging_first_step logging_nan_inf_filter skip_memory_metrics ddp_timeout
    per_device_eval_batch_size remove_unused_columns torch_empty_cache_steps log_multimodal
    num_completions_to_print project trackio_space_id local_rank"""
)
LOSS_TYPES = {"grpo": "grpo", "bnpo": "bnpo", "dr_grpo": "dr_grpo", "dapo": "dapo"}
SCHEDULES = {
    "linear": "linear",
    "cosine": "cosine",
    "constant": "constant",
    "constant_with_warmup": "constant",
}


@dataclass
class _TRLFields:
    """The supported subset, with TRL's defaults (trl 1.16)."""

    output_dir: str | None = None
    learning_rate: float = 1e-6
    num_generations: int = 8
    num_generations_eval: int | None = None
    max_completion_length: int = 512
    max_prompt_length: int | None = None
    per_device_train_batch_size: int = 8
    gradient_accumulation_steps: int = 1
    max_steps: int = -1
    num_train_epochs: float = 3.0
    beta: float = 0.0
    epsilon: float = 0.2
    epsilon_high: float | None = None
    loss_type: str = "dapo"
    scale_rewards: str | bool = "group"
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    logging_steps: float = 10
    log_completions: bool = False
    save_strategy: str = "steps"
    save_steps: float = 500
    save_total_limit: int | None = None
    eval_strategy: str = "no"
    eval_steps: float | None = None
    seed: int = 42
    bf16: bool | None = None
    gradient_checkpointing: bool = True
    report_to: str | list[str] | None = "none"
    run_name: str | None = None
    reward_weights: list[float] | None = None
    max_grad_norm: float = 1.0
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8
    warmup_steps: float = 0
    warmup_ratio: float = 0.0
    lr_scheduler_type: str = "linear"
    model_init_kwargs: dict[str, Any] | None = None
    use_cpu: bool = False


class GRPOConfig(_TRLFields):
    """TRL's `GRPOConfig` names for what vlmgrpo supports (`MAPPING`); any other TRL field at a
    non-default value is a `ConfigError` naming it. `to_config()` is the native `Config`."""

    def __init__(self, **kwargs: Any) -> None:
        supported = {f.name for f in dataclasses.fields(_TRLFields)}
        known = {k: v for k, v in kwargs.items() if k in supported}
        for key in kwargs:
            if key not in supported and key not in UNSUPPORTED:
                close = difflib.get_close_matches(key, [*supported, *UNSUPPORTED], n=1)
                hint = f"; did you mean '{close[0]}'?" if close else ""
                raise ConfigError(f"GRPOConfig: unknown field '{key}'{hint}")
        super().__init__(**known)
        for key, value in kwargs.items():
            if key not in supported:
                object.__setattr__(self, key, value)
        self.unsupported_values()  # fail at construction, as TRL's own checks do

    def __getattr__(self, name: str) -> Any:  # TRL fields left at their defaults read back
        if name in UNSUPPORTED:
            return UNSUPPORTED[name]
        raise AttributeError(name)

    def unsupported_values(self) -> dict[str, Any]:
        """TRL fields set here that vlmgrpo does not implement: an error for any away from its
        default (a warning for the few that only tune TRL's machinery)."""
        out = {k: v for k, v in vars(self).items() if k in UNSUPPORTED}
        for key, value in out.items():
            if value == UNSUPPORTED[key]:
                continue
            if key in NO_EFFECT:
                log.warning("GRPOConfig.%s=%r has no effect in vlmgrpo", key, value)
                continue
            raise ConfigError(
                f"GRPOConfig.{key}={value!r}: not supported by vlmgrpo (only its TRL default "
                f"{UNSUPPORTED[key]!r}); see the README's 'Coming from TRL' table"
            )
        return out

    # ------------------------------------------------------------------ the mapping
    def to_config(self, n_rows: int | None = None, world: int | None = None, lora: bool = False) -> Config:
        """The native `Config`. `n_rows`: the training set's length (for num_train_epochs; None for
        a stream); `world`: the number of processes (default: $WORLD_SIZE or 1)."""
        self.unsupported_values()
        world = world or int(os.environ.get("WORLD_SIZE", "1"))
        cfg = Config(recipe="python-api")
        g, bs, ga = self.num_generations, self.per_device_train_batch_size, self.gradient_accumulation_steps
        if g < 2:
            raise ConfigError(f"GRPOConfig.num_generations={g}: GRPO needs at least 2 completions per prompt")
        if (bs * ga) % g:
            raise ConfigError(
                f"GRPOConfig: per_device_train_batch_size x gradient_accumulation_steps ({bs} x {ga}) must be "
                f"a multiple of num_generations ({g}): vlmgrpo keeps each prompt's group on one process"
            )
        if self.max_prompt_length is not None and self.max_prompt_length < 1:
            raise ConfigError(f"GRPOConfig.max_prompt_length={self.max_prompt_length}: must be >= 1 or None")
        cfg.train.output_dir = self.output_dir or "trainer_output"
        cfg.train.seed = int(self.seed)
        if self.use_cpu:
            cfg.train.device = "cpu"
        # batch: one optimizer step over bs x world x ga completions, forward/backward bs at a time
        cfg.rollout.group_size = g
        cfg.rollout.prompts_per_step = bs * ga * world // g
        cfg.optim.grad_accum = 1
        cfg.optim.micro_batch_seqs = bs
        cfg.rollout.max_new_tokens = int(self.max_completion_length)
        cfg.rollout.temperature = float(self.temperature)
        cfg.rollout.top_p = float(self.top_p)
        cfg.rollout.top_k = int(self.top_k or 0)
        cfg.eval.temperature = float(self.temperature)
        cfg.eval.num_chains = int(self.num_generations_eval or g)
        # steps
        if self.max_steps and self.max_steps > 0:
            cfg.train.steps = int(self.max_steps)
        elif n_rows is None:
            raise ConfigError("GRPOConfig.max_steps: must be set (> 0) for a streamed (iterable) dataset")
        else:
            cfg.train.steps = max(1, math.ceil(self.num_train_epochs * n_rows / cfg.rollout.prompts_per_step))
        steps = cfg.train.steps
        # loss: TRL's loss is the clipped importance ratio
        if self.loss_type not in LOSS_TYPES:
            raise ConfigError(
                f"GRPOConfig.loss_type={self.loss_type!r}: vlmgrpo implements {', '.join(LOSS_TYPES)}"
            )
        cfg.grpo.loss = "ppo"
        cfg.grpo.aggregation = LOSS_TYPES[self.loss_type]  # type: ignore[assignment]
        cfg.grpo.clip_low = float(self.epsilon)
        cfg.grpo.clip_high = float(self.epsilon if self.epsilon_high is None else self.epsilon_high)
        scale = {True: "group", False: "none"}.get(self.scale_rewards, self.scale_rewards)  # type: ignore[call-overload]
        if scale not in ("group", "batch", "none"):
            raise ConfigError(f"GRPOConfig.scale_rewards={self.scale_rewards!r}: group, batch or none")
        cfg.grpo.adv_scale = scale
        cfg.grpo.beta = float(self.beta)
        if self.beta > 0:
            cfg.grpo.ref.kind = "adapter" if lora else "copy"
        # optimizer
        cfg.optim.lr = float(self.learning_rate)
        cfg.optim.betas = [float(self.adam_beta1), float(self.adam_beta2)]
        cfg.optim.eps = float(self.adam_epsilon)
        cfg.optim.weight_decay = float(self.weight_decay)
        cfg.optim.max_grad_norm = float(self.max_grad_norm)
        if self.lr_scheduler_type not in SCHEDULES:
            raise ConfigError(
                f"GRPOConfig.lr_scheduler_type={self.lr_scheduler_type!r}: vlmgrpo implements {', '.join(SCHEDULES)}"
            )
        cfg.optim.schedule = SCHEDULES[self.lr_scheduler_type]  # type: ignore[assignment]
        warm = self.warmup_steps
        cfg.optim.warmup_steps = (
            math.ceil(warm * steps) if 0 < warm < 1 else int(warm) or math.ceil(self.warmup_ratio * steps)
        )
        # model
        init = dict(self.model_init_kwargs or {})
        dtype = init.pop("dtype", None)
        dtype = init.pop("torch_dtype", None) if dtype is None else dtype
        if dtype is None and self.bf16:
            dtype = "bfloat16"
        if dtype is not None and dtype != "auto":
            cfg.model.dtype = str(dtype).replace("torch.", "")  # type: ignore[assignment]
            if cfg.model.dtype not in ("float32", "bfloat16", "float16"):
                raise ConfigError(
                    f"GRPOConfig.model_init_kwargs.dtype={dtype!r}: float32, bfloat16 or float16"
                )
        if init.get("attn_implementation"):
            cfg.model.attn_implementation = init["attn_implementation"]
        # the rest (revision, device_map, quantization_config, ...) goes to from_pretrained as given
        # (`init_kwargs`); config.yaml keeps a readable record of it
        cfg.extra["model_init_kwargs"] = {
            k: v if isinstance(v, str | int | float | bool | type(None)) else repr(v)
            for k, v in self.init_kwargs().items()
        }
        cfg.model.gradient_checkpointing = bool(self.gradient_checkpointing)
        # logging, checkpoints, evaluation
        trackers = self.trackers()
        if "tensorboard" in trackers:
            try:
                import tensorboard  # noqa: F401
            except ImportError:
                raise ConfigError(
                    "GRPOConfig.report_to='tensorboard': the tensorboard package is not installed; "
                    "pip install 'vlmgrpo[logging]', or report to wandb / none"
                ) from None
        cfg.train.tensorboard = "tensorboard" in trackers
        cfg.train.wandb = "wandb" in trackers
        cfg.train.wandb_name = self.run_name or ""
        every = max(
            1, int(self.logging_steps if self.logging_steps >= 1 else math.ceil(self.logging_steps * steps))
        )
        cfg.train.log_samples_every = every if self.log_completions else 0
        if self.save_strategy not in ("steps", "no"):
            raise ConfigError(
                f"GRPOConfig.save_strategy={self.save_strategy!r}: vlmgrpo implements steps, no"
            )
        save = self.save_steps if self.save_steps >= 1 else math.ceil(self.save_steps * steps)
        cfg.train.save_every = int(save) if self.save_strategy == "steps" else 0
        cfg.train.keep_last = int(self.save_total_limit or 0)
        if self.eval_strategy not in ("steps", "no"):
            raise ConfigError(
                f"GRPOConfig.eval_strategy={self.eval_strategy!r}: vlmgrpo implements steps, no"
            )
        ev = self.eval_steps if self.eval_steps is not None else self.logging_steps
        cfg.train.eval_every = (
            int(ev if ev >= 1 else math.ceil(ev * steps)) if self.eval_strategy == "steps" else 0
        )
        cfg.warmup.steps = 0
        validate(cfg)
        return cfg

    def init_kwargs(self) -> dict[str, Any]:
        """`model_init_kwargs` for `from_pretrained`, less what the native schema carries (dtype
        other than "auto", attn_implementation)."""
        init = {k: v for k, v in (self.model_init_kwargs or {}).items() if k != "attn_implementation"}
        dtype = init.pop("dtype", None)
        dtype = init.pop("torch_dtype", None) if dtype is None else dtype
        if dtype == "auto":  # the checkpoint's own dtype
            init["dtype"] = "auto"
        return {k: v for k, v in init.items() if v is not None}

    def trackers(self) -> set[str]:
        r = self.report_to
        names = {r} if isinstance(r, str) else set(r or [])
        if "all" in names:
            names = {"tensorboard", "wandb"}
        names.discard("none")
        unknown = names - {"tensorboard", "wandb"}
        if unknown:
            raise ConfigError(
                f"GRPOConfig.report_to={sorted(unknown)[0]!r}: vlmgrpo reports to tensorboard, wandb or none"
            )
        return names


# ------------------------------------------------------------------------------ the trainer


def _lora_from_peft(peft_config: Any, cfg: Config) -> None:
    """A peft `LoraConfig` onto model.lora; a LoRA option vlmgrpo does not carry is an error."""
    from peft import LoraConfig

    if not isinstance(peft_config, LoraConfig):
        raise ConfigError(f"peft_config: vlmgrpo trains LoRA adapters; got {type(peft_config).__name__}")
    default = LoraConfig()
    mapped = {"r", "lora_alpha", "lora_dropout", "target_modules", "task_type"}
    ignored = {"base_model_name_or_path", "revision", "inference_mode", "peft_type", "auto_mapping"}
    for f in dataclasses.fields(LoraConfig):
        if f.name in mapped or f.name in ignored:
            continue
        if getattr(peft_config, f.name, None) != getattr(default, f.name, None):
            raise ConfigError(
                f"peft_config.{f.name}={getattr(peft_config, f.name)!r}: not supported by vlmgrpo"
            )
    tm = peft_config.target_modules
    cfg.model.lora.enabled = True
    cfg.model.lora.r = int(peft_config.r)
    cfg.model.lora.alpha = int(peft_config.lora_alpha)
    cfg.model.lora.dropout = float(peft_config.lora_dropout)
    if tm is not None:
        cfg.model.lora.target_modules = tm if isinstance(tm, str) else sorted(tm)  # type: ignore[assignment]


def _reward_specs(reward_funcs: Any, weights: list[float] | None) -> tuple[list[Any], list[RewardEntry]]:
    """Native specs for `reward_funcs` (TRL functions, native names or 'file.py:fn' strings) and
    the config entries that describe them in config.yaml."""
    from vlmgrpo.rewards.base import RewardSpec, resolve_reward
    from vlmgrpo.rewards.trl_compat import func_name, is_trl_reward, trl_spec

    funcs = reward_funcs if isinstance(reward_funcs, list | tuple) else [reward_funcs]
    if not funcs:
        raise ConfigError("reward_funcs: no reward function given")
    if weights is not None and len(weights) != len(funcs):
        raise ConfigError(
            f"GRPOConfig.reward_weights: {len(weights)} weights for {len(funcs)} reward functions"
        )
    weights = list(weights) if weights is not None else [1.0] * len(funcs)
    specs: list[Any] = []
    trl: list[tuple[str, Callable, float, dict]] = []
    entries: list[RewardEntry] = []
    at = -1
    for fn, w in zip(funcs, weights):
        if isinstance(fn, str):
            target = resolve_reward(fn).fn  # a native name or 'file.py:fn' (an unknown name fails here)
            if not is_trl_reward(target):
                specs.append(RewardSpec(fn, float(w)))
                entries.append(RewardEntry(name=fn, weight=float(w)))
                continue
            fn = target
        if not callable(fn):
            raise ConfigError(f"reward_funcs: {fn!r} is neither a function nor a reward name")
        if not is_trl_reward(fn):
            raise ConfigError(
                f"reward_funcs: {func_name(fn)} has no 'completions' parameter; a TRL reward is "
                "f(prompts, completions, **kwargs); a native one is given by name or 'file.py:function'"
            )
        if at < 0:
            at = len(specs)
        trl.append((func_name(fn), fn, float(w), {}))
        module = getattr(fn, "__module__", "") or ""
        entries.append(RewardEntry(name=f"{module}:{func_name(fn)}", weight=float(w), label="trl"))
    if trl:
        specs.insert(at, trl_spec(trl))
    return specs, entries


def _wrap_dataset(ds: Any, what: str) -> Any:
    from vlmgrpo.data.hf import wrap

    if ds is None:
        return None
    if hasattr(ds, "sample") or (
        isinstance(ds, list) and ds and isinstance(ds[0], dict) and "images" in ds[0]
    ):
        return ds  # already a vlmgrpo dataset
    try:
        return wrap(ds)
    except ConfigError as e:
        raise ConfigError(f"{what}: {e}") from None


def prompt_length(proc: Any, sample: dict[str, Any], cfg: Config) -> int:
    """Tokens of a sample's prompt as the rollout encodes it (image tokens included)."""
    from vlmgrpo.rollout import hf as hf_rollout
    from vlmgrpo.sampling import build_prompt

    inputs, _ = hf_rollout.encode_prompts(proc, [build_prompt(sample, cfg)], 1, "cpu")
    return int(inputs["input_ids"].shape[1])


def _check_length(sample: dict[str, Any], proc: Any, cfg: Config, limit: int) -> dict[str, Any]:
    from vlmgrpo.errors import DataError

    n = prompt_length(proc, sample, cfg)
    if n > limit:
        raise DataError(
            f"sample {sample.get('id', '?')}: prompt of {n} tokens, over max_prompt_length {limit}"
        )
    return sample


class _LimitedSet(Sequence):
    """A map-style set whose over-long prompts raise `DataError` (skipped and counted in
    `data/bad_samples` with data.skip_bad_samples, as TRL would truncate them)."""

    def __init__(self, ds: Any, proc: Any, cfg: Config, limit: int) -> None:
        self.ds, self.proc, self.cfg, self.limit = ds, proc, cfg, limit

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int) -> dict[str, Any]:  # type: ignore[override]
        return _check_length(self.ds[i], self.proc, self.cfg, self.limit)


class _LimitedStream:
    def __init__(self, ds: Any, proc: Any, cfg: Config, limit: int) -> None:
        self.ds, self.proc, self.cfg, self.limit = ds, proc, cfg, limit

    def sample(self, rng: Any) -> dict[str, Any]:
        return _check_length(self.ds.sample(rng), self.proc, self.cfg, self.limit)


def limit_prompt_length(ds: Any, proc: Any, cfg: Config, limit: int) -> Any:
    """`ds` with prompts over `limit` tokens as bad samples: vlmgrpo never truncates a prompt (a
    cut can split an image's tokens from its pixels)."""
    cls = _LimitedStream if hasattr(ds, "sample") else _LimitedSet
    return cls(ds, proc, cfg, limit)


@dataclass
class TrainOutput:
    """What `train()` returns (TRL's TrainOutput fields)."""

    global_step: int
    training_loss: float
    metrics: dict[str, Any] = field(default_factory=dict)


class GRPOTrainer:
    """TRL's GRPOTrainer interface over vlmgrpo's trainer. See the module docstring."""

    def __init__(
        self,
        model: Any,
        reward_funcs: Any,
        args: GRPOConfig | None = None,
        train_dataset: Any = None,
        eval_dataset: Any = None,
        processing_class: Any = None,
        reward_processing_classes: Any = None,
        callbacks: Any = None,
        optimizers: tuple[Any, Any] = (None, None),
        peft_config: Any = None,
    ) -> None:
        for name, value in (
            ("reward_processing_classes", reward_processing_classes),
            ("callbacks", callbacks),
        ):
            if value:
                raise ConfigError(f"GRPOTrainer({name}=...): not supported by vlmgrpo")
        if any(o is not None for o in optimizers):
            raise ConfigError(
                "GRPOTrainer(optimizers=...): not supported; vlmgrpo builds its AdamW from args"
            )
        if train_dataset is None:
            raise ConfigError("GRPOTrainer: train_dataset is required")
        if isinstance(model, str):
            name_or_path, model_obj = model, None
        else:
            model_obj = model
            name_or_path = getattr(model, "name_or_path", "") or getattr(model.config, "_name_or_path", "")
        if args is None:
            args = GRPOConfig(output_dir=f"{Path(str(name_or_path)).name or 'model'}-GRPO")
        self.args = args
        self.train_dataset = _wrap_dataset(train_dataset, "train_dataset")
        self.eval_dataset = _wrap_dataset(eval_dataset, "eval_dataset")
        n_rows = len(self.train_dataset) if hasattr(self.train_dataset, "__len__") else None
        cfg = args.to_config(n_rows=n_rows, lora=peft_config is not None)
        if peft_config is not None:
            _lora_from_peft(peft_config, cfg)
            if cfg.grpo.beta > 0:
                cfg.grpo.ref.kind = "adapter"
        cfg.model.name_or_path = str(name_or_path)
        specs, cfg.rewards = _reward_specs(reward_funcs, args.reward_weights)
        self.specs = specs
        if model_obj is None and not name_or_path:
            raise ConfigError("GRPOTrainer(model=...): a Hub id, a local folder or a loaded model")
        if model_obj is not None:
            if args.model_init_kwargs:
                raise ConfigError(
                    "GRPOConfig.model_init_kwargs: the model is already loaded; give its id or folder "
                    "instead, or load it with those settings yourself"
                )
            dtype = str(getattr(model_obj, "dtype", "torch.float32")).replace("torch.", "")
            if args.bf16 and dtype != "bfloat16":
                raise ConfigError(
                    f"GRPOConfig.bf16=True: the loaded model is {dtype}; vlmgrpo trains bf16 weights "
                    "(fp32 Adam moments): load it with dtype=torch.bfloat16, or give its id or folder"
                )
            cfg.model.dtype = dtype  # type: ignore[assignment]  # the record in config.yaml
        if self.eval_dataset is None and cfg.train.eval_every:
            raise ConfigError("GRPOConfig.eval_strategy='steps' needs an eval_dataset")
        if hasattr(self.eval_dataset, "__len__"):
            cfg.eval.num_items = len(self.eval_dataset)  # TRL evaluates the whole eval set
        if model_obj is not None and processing_class is None and not name_or_path:
            raise ConfigError("GRPOTrainer: give processing_class with a model that has no name_or_path")
        self.cfg = cfg
        self._model_obj, self._proc = model_obj, processing_class
        self._trainer: Any = None
        self._resume: str | None = None

    def _native(self) -> Any:
        """The native trainer, built once (on first need: train() or .model)."""
        if self._trainer is None:
            from vlmgrpo.trainer import Components, Trainer

            components = Components(
                model=self._model_obj,
                proc=self._proc,
                train_set=self.train_dataset,
                eval_set=self.eval_dataset if self.eval_dataset is not None else self.train_dataset,
                specs=self.specs,
                model_init_kwargs=self.args.init_kwargs(),
            )
            tr = Trainer(self.cfg, self._resume, components)
            if self.args.max_prompt_length is not None:
                limit = int(self.args.max_prompt_length)
                tr.train_set = tr.sampler.dataset = limit_prompt_length(
                    tr.train_set, tr.proc, self.cfg, limit
                )
                tr.eval_set = limit_prompt_length(tr.eval_set, tr.proc, self.cfg, limit)
            self._trainer = tr
        return self._trainer

    @property
    def model(self) -> Any:
        return self._native().model

    @property
    def processing_class(self) -> Any:
        return self._native().proc

    def train(self, resume_from_checkpoint: str | bool | None = None) -> TrainOutput:
        """Train; `resume_from_checkpoint` True resumes from the latest complete checkpoint of
        output_dir, a path from that checkpoint."""
        if resume_from_checkpoint:
            if self._trainer is not None:
                raise ConfigError("train(resume_from_checkpoint=...): call it on a fresh GRPOTrainer")
            self._resume = "latest" if resume_from_checkpoint is True else str(resume_from_checkpoint)
        tr = self._native()
        tr.fit()
        from vlmgrpo.runlog import read_metrics

        rows = [r for r in read_metrics(tr.out / "metrics.jsonl") if r.get("phase") == "grpo"]
        losses = [r["loss"] for r in rows if isinstance(r.get("loss"), int | float)]
        return TrainOutput(
            tr.step, sum(losses) / len(losses) if losses else math.nan, rows[-1] if rows else {}
        )

    def save_model(self, output_dir: str | None = None) -> Path:
        """The policy in Hugging Face format (the LoRA adapter for a LoRA run) plus the processor."""
        from vlmgrpo.checkpoint import save_model

        tr = self._native()
        out = Path(output_dir or self.args.output_dir or tr.out)
        out.mkdir(parents=True, exist_ok=True)
        save_model(tr.model, tr.proc, out)
        return out


__all__ = ["GRPOConfig", "GRPOTrainer", "MAPPING", "TrainOutput"]
