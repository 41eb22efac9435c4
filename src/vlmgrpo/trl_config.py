"""`GRPOConfig` in TRL's names, and the one table that maps it onto the native schema.

`GRPOConfig` takes TRL's field names with TRL's defaults for the subset vlmgrpo supports;
`to_config()` maps them onto `vlmgrpo.config.Config` (`config.py` stays the only place a knob is
defined). `MAPPING` below is that mapping, the only place it is written (the README's "Coming from
TRL" table is generated from it). Every other TRL field is accepted at its TRL default; set to
anything else it is a `ConfigError` that names it (a few that only tune TRL's own machinery, such
as `dataloader_num_workers`, are accepted with a warning that they have no effect here).

Batch sizes mean what they mean in TRL: `per_device_train_batch_size` completions per device per
micro-batch, `gradient_accumulation_steps` micro-batches per optimizer step, so one step trains on
per_device_train_batch_size x processes x gradient_accumulation_steps completions, that is this
number / num_generations prompts (groups never span processes here: the per-device count times
gradient_accumulation_steps must be a multiple of num_generations).
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import math
import os
from dataclasses import dataclass
from typing import Any

from vlmgrpo.config import Config, validate
from vlmgrpo.errors import ConfigError

# the recipe name of a GRPOTrainer run: its datasets are Python objects that config.yaml cannot hold
API_RECIPE = "python-api"

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
    "max_steps": "train.steps = max_steps / num_iterations (TRL counts optimizer steps, as in every *_steps)",
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
# TRL fields that map onto grpo.* variants where this build's schema has them (the GRPO variants
# of docs/algorithms.md): TRL field -> (grpo field, TRL value -> native value). Where the schema
# lacks the field, the TRL field stays in UNSUPPORTED (an error away from its TRL default).
VARIANTS: dict[str, tuple[str, Any]] = {
    "num_iterations": ("num_iterations", int),
    "importance_sampling_level": ("importance_level", str),
    "mask_truncated_completions": ("mask_truncated", bool),
    "top_entropy_quantile": ("top_entropy_quantile", float),
    "delta": ("delta", lambda v: 0.0 if v is None else float(v)),  # TRL None = off = native 0
    "use_bias_correction_kl": ("kl_estimator", lambda v: "k3_ratio" if v else "k3"),
}


def mapped_variants() -> dict[str, tuple[str, Any]]:
    """The VARIANTS whose grpo field exists in the native schema."""
    from vlmgrpo.config import GRPOConfig as NativeGRPO

    have = {f.name for f in dataclasses.fields(NativeGRPO)}
    return {k: v for k, v in VARIANTS.items() if v[0] in have}


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
        mapped = mapped_variants()
        out = {k: v for k, v in vars(self).items() if k in UNSUPPORTED}
        for key, value in out.items():
            if value == UNSUPPORTED[key] or key in mapped:
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
        cfg = Config(recipe=API_RECIPE)
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
        # TRL's step counts (max_steps, save/eval/logging/warmup steps) are optimizer steps, and TRL
        # makes num_iterations of them per generation; a vlmgrpo step is one rollout with
        # grpo.num_iterations updates, so these counts divide by num_iterations
        mu = max(1, int(self.num_iterations))

        def rollouts(n: float) -> int:
            return max(1, math.ceil(int(n) / mu))  # int(n) as before for num_iterations 1

        if self.max_steps and self.max_steps > 0:
            cfg.train.steps = rollouts(self.max_steps)
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
        for trl_name, (native, convert) in mapped_variants().items():
            setattr(cfg.grpo, native, convert(getattr(self, trl_name)))
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
            math.ceil(warm * steps)
            if 0 < warm < 1
            else math.ceil(int(warm) / mu) or math.ceil(self.warmup_ratio * steps)
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
            1,
            rollouts(self.logging_steps)
            if self.logging_steps >= 1
            else math.ceil(self.logging_steps * steps),
        )
        cfg.train.log_samples_every = every if self.log_completions else 0
        if self.save_strategy not in ("steps", "no"):
            raise ConfigError(
                f"GRPOConfig.save_strategy={self.save_strategy!r}: vlmgrpo implements steps, no"
            )
        save = rollouts(self.save_steps) if self.save_steps >= 1 else math.ceil(self.save_steps * steps)
        cfg.train.save_every = int(save) if self.save_strategy == "steps" else 0
        cfg.train.keep_last = int(self.save_total_limit or 0)
        if self.eval_strategy not in ("steps", "no"):
            raise ConfigError(
                f"GRPOConfig.eval_strategy={self.eval_strategy!r}: vlmgrpo implements steps, no"
            )
        ev = self.eval_steps if self.eval_steps is not None else self.logging_steps
        cfg.train.eval_every = (
            (rollouts(ev) if ev >= 1 else math.ceil(ev * steps)) if self.eval_strategy == "steps" else 0
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


__all__ = ["GRPOConfig", "MAPPING", "NO_EFFECT", "UNSUPPORTED", "VARIANTS"]
