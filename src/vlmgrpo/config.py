"""One typed configuration schema; YAML recipes are data merged onto it, `--set a.b=c` on top.

Resolution order: dataclass defaults <- recipe YAML (which may name a `base:` recipe first) <-
`--set` overrides. Unknown keys and wrong types are `ConfigError`s that name the key and, for a
typo, the nearest valid key. The resolved config is written to the run folder as `config.yaml`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from vlmgrpo.errors import ConfigError

RECIPES_DIR = Path(__file__).parent / "recipes"


@dataclass
class LoraConfig:
    enabled: bool = False  # train LoRA adapters instead of all weights
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    # q_proj/v_proj touch only the language model of Qwen-VL (the vision blocks use a fused qkv)
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])


@dataclass
class ModelConfig:
    name_or_path: str = ""  # Hugging Face id or local folder
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    attn_implementation: str = "sdpa"
    gradient_checkpointing: bool = False
    text_only: bool = False  # load with AutoModelForCausalLM (adversary, text policies)
    freeze_vision: bool = False  # keep the vision tower's weights fixed
    # Qwen-VL vision towers without flash-attn: "batched" = one SDPA call per segment length
    # (models/vision_attn.py, same maths); "hf" = transformers' one call per image/window
    vision_attention: Literal["batched", "hf"] = "batched"
    lora: LoraConfig = field(default_factory=LoraConfig)


@dataclass
class DataConfig:
    dataset: str = "scenes"  # registry name (vlmgrpo.data.DATASETS) or path/to/file.py:fn
    kwargs: dict[str, Any] = field(default_factory=dict)  # passed to the dataset builder
    eval_dataset: str = ""  # defaults to `dataset` with split "test"
    eval_kwargs: dict[str, Any] = field(default_factory=dict)
    image_max_side: int = 224  # thumbnail (aspect kept, LANCZOS) before the policy sees it
    skip_bad_samples: bool = True  # skip and count unreadable samples instead of stopping


@dataclass
class PromptConfig:
    system: str = ""  # system message; empty = none
    user: str = "{question}"  # str.format template over the sample's fields; images go first
    prefill: str = ""  # assistant prefill, e.g. "<think>"


@dataclass
class RolloutConfig:
    # auto: the static-cache CUDA-graph engine (rollout/fast.py) on CUDA for supported models, else
    # HF generate; hf / fast force one
    backend: Literal["auto", "hf", "fast"] = "auto"
    group_size: int = 8  # completions per prompt (G)
    prompts_per_step: int = 1  # distinct prompts (images) per micro-batch, global over all ranks
    temperature: float = 0.9
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    max_new_tokens: int = 512
    # sample each prompt's group from its own seed (step, global prompt index): completions then do
    # not depend on the world size or batch layout (reproducible across 1 and N ranks), at the cost
    # of one generate call per prompt
    seed_per_prompt: bool = False
    # one-step off-policy overlap: the rollout of step t+1 runs while step t's rewards are computed
    # (worth it when rewards run on another GPU or a remote API). Step t+1 then learns from samples
    # of the policy before update t; grpo.loss "is" or "ppo" corrects for it (required).
    overlap: bool = False
    # fast engine on CUDA: torch.compile the decode step's per-layer functions (~7 s once; 17%
    # faster decode on the H100 bench); falls back to eager, with a warning, if compilation fails
    compile: bool = True


@dataclass
class RefConfig:
    # none: no reference; copy: frozen copy of the initial policy; adapter: the LoRA base with
    # adapters disabled (no second copy in memory)
    kind: Literal["none", "copy", "adapter"] = "none"
    refresh_every: int = 0  # every N steps ref <- alpha * policy + (1 - alpha) * ref; 0 = never
    refresh_alpha: float = 0.1


@dataclass
class GRPOConfig:
    # pg: seed A's on-policy -exp(logp - logp.detach()) * A; is: importance ratio; ppo: clipped ratio
    loss: Literal["pg", "is", "ppo"] = "pg"
    # grpo: per-sequence mean then mean (length-biased); bnpo; dr_grpo; dapo (token-level)
    aggregation: Literal["grpo", "bnpo", "dr_grpo", "dapo"] = "grpo"
    adv_scale: Literal["group", "batch", "none"] = "group"
    adv_eps: float = 1e-4
    adv_unbiased: bool = True  # unbiased (n-1) std, as seed A
    clip_low: float = 0.2
    clip_high: float = 0.2
    beta: float = 0.0  # k3 KL coefficient against the reference policy
    ref: RefConfig = field(default_factory=RefConfig)
    min_valid_fraction: float = 0.5  # skip the step when fewer samples than this got a reward


@dataclass
class OptimConfig:
    lr: float = 5e-6
    betas: list[float] = field(default_factory=lambda: [0.9, 0.99])
    weight_decay: float = 0.1
    eps: float = 1e-8
    max_grad_norm: float = 0.1
    grad_accum: int = 4  # micro-batches (of prompts_per_step prompts x group_size) per update
    warmup_steps: int = 0  # linear learning-rate warm-up
    schedule: Literal["constant", "linear", "cosine"] = "constant"
    micro_batch_seqs: int = 0  # sequences per forward/backward in the update; 0 = whole micro-batch
    # padded tokens per forward/backward; > 0: rows length-bucketed and trimmed of all-pad columns
    # (grpo/fastpath.py), replacing micro_batch_seqs. Bounds activation memory; same gradient
    token_budget: int = 0
    # one vision-tower pass per image instead of one per sample (G rows share an image); exact
    # gradients; one process only (under torchrun the model's own path runs)
    share_vision: bool = False
    # adamw: torch's AdamW (moments in the parameters' dtype, rounded to nearest: with bf16 weights
    # an update below bf16's resolution, e.g. lr 5e-6 on weights ~0.05, is lost); adamw_fp32_state:
    # fp32 moments, stochastic rounding back to bf16 (grpo/fastpath.py; 12 bytes/param instead of 16
    # for fp32 master weights); auto: adamw_fp32_state when a trained parameter is bf16/fp16, else
    # adamw (fused on CUDA). FSDP2 takes adamw only: for fp32 master weights there, use
    # model.dtype float32 with train.fsdp_param_dtype bfloat16 (docs/scaling.md)
    optimizer: Literal["auto", "adamw", "adamw_fp32_state"] = "auto"


@dataclass
class WarmupConfig:
    """Optional supervised warm start before GRPO (phase "warmup" in the metrics)."""

    steps: int = 0  # max supervised steps; 0 = no warm start
    lr: float = 1e-3
    batch_size: int = 16
    target_field: str = "description"  # sample field used as the assistant's target text
    eval_every: int = 50  # held-out check of the stop criterion
    # stop early once held-out reward reaches this fraction of the ceiling (0 = run all steps)
    stop_at_ceiling_fraction: float = 0.0
    min_distinct: int = 0  # ... and the greedy outputs on held-out images have this many distinct texts


@dataclass
class TrainConfig:
    steps: int = 1000  # optimizer updates
    seed: int = 7111994
    output_dir: str = "runs/run"
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    eval_every: int = 25  # 0 = never
    save_every: int = 25  # 0 = only the final checkpoint
    keep_last: int = 0  # keep the newest N checkpoints; 0 = all
    log_samples_every: int = 1  # write per-step samples (images, completions, scores); 0 = never
    max_time_s: float = 0.0  # stop (with a checkpoint) after this many seconds; 0 = unlimited
    threads: int = 0  # torch CPU threads; 0 = torch's default
    tensorboard: bool = True  # also log to TensorBoard when it is installed
    wandb: bool = False  # also log to Weights & Biases (needs wandb; WANDB_MODE=offline works offline)
    wandb_project: str = "vlmgrpo"  # W&B project ($WANDB_PROJECT wins when set)
    wandb_name: str = ""  # W&B run name; empty = the output folder's name
    max_nonfinite: int = 5  # stop after this many skipped updates with a non-finite loss or grad
    # under torchrun / accelerate launch: ddp (replicated) or fsdp2 (sharded); ignored in one process
    dist_strategy: Literal["ddp", "fsdp2"] = "ddp"
    # FSDP2 only (docs/scaling.md). Mixed precision: the dtype parameters are gathered in and
    # forward/backward compute in (bfloat16 | float32 | null = model.dtype); the sharded parameters
    # and the optimizer state keep model.dtype (float32 for bf16 compute with fp32 master weights)
    fsdp_param_dtype: str | None = None
    # dtype of the gradient reduce-scatter (bfloat16 | float32 | null = fsdp_param_dtype)
    fsdp_reduce_dtype: str | None = None
    # FSDP2 CPUOffloadPolicy: sharded parameters, gradients and optimizer state on CPU, optimizer
    # step on CPU. DDP has no equivalent here: with ddp this is a ConfigError
    cpu_offload: bool = False

    def __post_init__(self) -> None:
        for key in ("fsdp_param_dtype", "fsdp_reduce_dtype"):
            value = getattr(self, key)
            if value is not None and value not in ("bfloat16", "float32"):
                raise ConfigError(
                    f"train.{key}: {value!r} is not one of 'bfloat16', 'float32', null "
                    "(float16 would need a loss scaler)"
                )
        if self.dist_strategy != "fsdp2":
            for key in ("fsdp_param_dtype", "fsdp_reduce_dtype", "cpu_offload"):
                if getattr(self, key):
                    raise ConfigError(
                        f"train.{key}: needs train.dist_strategy=fsdp2 (got {self.dist_strategy!r}); "
                        "DDP keeps a full replica of the weights in model.dtype on every GPU"
                    )


@dataclass
class PlacementConfig:
    """Where memory lives between the phases of a step on one GPU (see vlmgrpo/placement.py)."""

    # AdamW moments in pinned host memory except during optimizer.step() (frees 8 bytes/param)
    offload_optimizer: bool = False
    # local generators / embedders (diffusers, dinov2, clip) in pinned host memory except while
    # rewards are computed (rollout and update then have the GPU to themselves)
    offload_reward_models: bool = False


@dataclass
class EvalConfig:
    num_items: int = 10  # first N held-out items
    num_chains: int = 2  # completions per item
    temperature: float = 0.9  # 0 = greedy
    max_new_tokens: int = 0  # 0 = rollout.max_new_tokens


@dataclass
class RewardEntry:
    name: str = ""  # registry name or path/to/file.py:function
    weight: float = 1.0
    kwargs: dict[str, Any] = field(default_factory=dict)
    label: str = ""  # metric name; default = the function's name


@dataclass
class Config:
    recipe: str = ""  # which recipe this came from (informational)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    prompt: PromptConfig = field(default_factory=PromptConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    grpo: GRPOConfig = field(default_factory=GRPOConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    rewards: list[RewardEntry] = field(default_factory=list)
    train: TrainConfig = field(default_factory=TrainConfig)
    placement: PlacementConfig = field(default_factory=PlacementConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    warmup: WarmupConfig = field(default_factory=WarmupConfig)
    # task-specific settings (adversary, generator placement, ...) read by the task that owns them
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# --------------------------------------------------------------------------- building from dicts


def _check_type(value: Any, tp: Any, where: str) -> Any:
    """Validate (and lightly coerce: int -> float) `value` against the annotation `tp`."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin is Literal:
        if value not in typing.get_args(tp):
            choices = ", ".join(repr(a) for a in typing.get_args(tp))
            raise ConfigError(f"{where}: {value!r} is not one of {choices}")
        return value
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            try:
                return _check_type(value, arg, where)
            except ConfigError:
                continue
        raise ConfigError(f"{where}: {value!r} has the wrong type ({tp})")
    if origin is list:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__} {value!r}")
        (arg,) = typing.get_args(tp) or (Any,)
        return [_check_type(v, arg, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__} {value!r}")
        return dict(value)
    if dataclasses.is_dataclass(tp):
        return _from_dict(tp, value, where)
    if tp is type(None):
        if value is not None:
            raise ConfigError(f"{where}: expected null, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where}: expected a number, got {type(value).__name__} {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {type(value).__name__} {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {type(value).__name__} {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {type(value).__name__} {value!r}")
        return value
    return value


def _from_dict(cls: type, data: Any, where: str) -> Any:
    if isinstance(data, cls):
        return data
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping, got {type(data).__name__} {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else str(key)
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1, cutoff=0.5)
            hint = f"; did you mean '{(where + '.' if where else '') + close[0]}'?" if close else ""
            raise ConfigError(f"unknown config key '{path}'{hint}")
        kwargs[key] = _check_type(value, hints[key], path)
    return cls(**kwargs)


def _deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict) and k not in ("kwargs", "eval_kwargs"):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def list_recipes() -> list[str]:
    return sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))


def recipe_path(name_or_path: str) -> Path:
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or p.is_file():
        if not p.is_file():
            raise ConfigError(f"{p}: recipe file not found")
        return p
    p = RECIPES_DIR / f"{name_or_path}.yaml"
    if not p.is_file():
        close = difflib.get_close_matches(name_or_path, list_recipes(), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else f"; known: {', '.join(list_recipes())}"
        raise ConfigError(f"unknown recipe '{name_or_path}'{hint}")
    return p


def load_recipe_dict(name_or_path: str, _seen: tuple[str, ...] = ()) -> dict[str, Any]:
    """The recipe's YAML as a dict, with `base:` recipes merged underneath."""
    path = recipe_path(name_or_path)
    if str(path) in _seen:
        raise ConfigError(f"{path}: recipe 'base' chain loops back on itself")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" (line {mark.line + 1})" if mark else ""
        raise ConfigError(f"{path}: not valid YAML{at}: {getattr(e, 'problem', e)}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read the recipe ({type(e).__name__}: {e})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a recipe must be a mapping of sections, got {type(data).__name__}")
    base = data.pop("base", None)
    if base is not None and not isinstance(base, str):
        raise ConfigError(f"{path}: base: expected a recipe name or path, got {type(base).__name__} {base!r}")
    try:  # keys and types checked file by file, so that the error names the file at fault
        _from_dict(Config, data, "")
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
    if base:
        data = _deep_merge(load_recipe_dict(base, (*_seen, str(path))), data)
    data["recipe"] = path.stem  # this recipe's name, not its base's
    return data


def parse_override(text: str) -> tuple[list[str], Any]:
    """'optim.lr=1e-5' -> (['optim', 'lr'], 1e-5); the value is parsed as YAML."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {text!r}: expected key.sub=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    # YAML reads 1e-5 as a string (no dot): accept it as a float
    if isinstance(value, str) and any(c in value.lower() for c in "e."):
        with contextlib.suppress(ValueError):
            value = float(value)
    return key.strip().split("."), value


def _split_index(key: str, text: str) -> tuple[str, int | None]:
    """'rewards[0]' -> ('rewards', 0); 'optim' -> ('optim', None)."""
    if not key.endswith("]") or "[" not in key:
        return key, None
    name, _, idx = key[:-1].partition("[")
    if not idx.isdigit():
        raise ConfigError(f"--set {text!r}: '{key}' needs a non-negative integer index")
    return name, int(idx)


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `--set` overrides; `rewards[0].kwargs.x=1` reaches into a list entry."""
    data = _deep_merge({}, data)
    for text in overrides:
        keys, value = parse_override(text)
        node: Any = data
        for i, raw in enumerate(keys):
            k, idx = _split_index(raw, text)
            last = i == len(keys) - 1
            if idx is None:
                if last:
                    node[k] = value
                else:
                    node = node.setdefault(k, {})
            else:
                seq = node.get(k)
                if not isinstance(seq, list) or idx >= len(seq):
                    n = len(seq) if isinstance(seq, list) else 0
                    raise ConfigError(f"--set {text!r}: '{k}' has {n} entries; no index {idx}")
                if last:
                    seq[idx] = value
                else:
                    node = seq[idx]
            if not last and not isinstance(node, dict):
                raise ConfigError(f"--set {text!r}: '{raw}' is not a section")
    return data


def load_config(recipe: str | None = None, overrides: list[str] | None = None) -> Config:
    """Resolve a recipe (name or YAML path) plus `--set` overrides into a validated `Config`."""
    data = load_recipe_dict(recipe) if recipe else {}
    data = apply_overrides(data, overrides or [])
    cfg = _from_dict(Config, data, "")
    validate(cfg)
    return cfg


def validate(cfg: Config) -> None:
    """Cross-field checks that types alone cannot express."""
    if cfg.rollout.group_size < 1:
        raise ConfigError("rollout.group_size: must be at least 1")
    if cfg.optim.grad_accum < 1:
        raise ConfigError("optim.grad_accum: must be at least 1")
    for key in ("micro_batch_seqs", "token_budget"):
        if getattr(cfg.optim, key) < 0:
            raise ConfigError(f"optim.{key}: must be >= 0 (0 = off), got {getattr(cfg.optim, key)}")
    if cfg.grpo.beta > 0 and cfg.grpo.ref.kind == "none":
        raise ConfigError("grpo.beta > 0 needs a reference: set grpo.ref.kind to 'copy' or 'adapter'")
    if cfg.grpo.ref.kind == "adapter" and cfg.grpo.ref.refresh_every:
        raise ConfigError(
            "grpo.ref.refresh_every: the adapter reference is the frozen base; it cannot be refreshed"
        )
    if cfg.grpo.ref.kind == "adapter" and not cfg.model.lora.enabled:
        raise ConfigError("grpo.ref.kind 'adapter' needs model.lora.enabled: true")
    for i, r in enumerate(cfg.rewards):
        if not r.name:
            raise ConfigError(f"rewards[{i}].name: missing")


def save_config(cfg: Config, path: Path) -> None:
    """Write atomically (a temporary file renamed over `path`): a run killed mid-write never leaves
    a torn `config.yaml` for `--resume` to read."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    tmp.replace(path)


def config_from_file(path: Path) -> Config:
    """Read back a resolved `config.yaml` from a run folder."""
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"{path}: cannot read the run's config: {e}") from None
    return _from_dict(Config, data, "")
