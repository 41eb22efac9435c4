"""One typed configuration schema; YAML recipes are data merged onto it, `--set a.b=c` on top.

Resolution order: dataclass defaults <- recipe YAML (which may name a `base:` recipe first) <-
`--set` overrides. Unknown keys and wrong types are `ConfigError`s that name the key and, for a
typo, the nearest valid key. The resolved config is written to the run folder as `config.yaml`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from vlmgrpo.errors import ConfigError

RECIPES_DIR = Path(__file__).parent / "recipes"


class YamlWord(str):
    """A YAML 1.1 boolean word (yes/no/on/off) as written. PyYAML reads `prefill: no`
    as False; the schema decides instead: a string field keeps the word, a boolean field (or an
    untyped value, such as a dataset kwarg) gets the boolean it means."""

    @property
    def as_bool(self) -> bool:
        return self.lower() in ("yes", "y", "on", "true")


class _Loader(yaml.SafeLoader):
    """SafeLoader whose booleans are only true/false; YAML 1.1's other words stay `YamlWord`s."""


_Loader.yaml_implicit_resolvers = {k: list(v) for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}
for _first, _resolvers in _Loader.yaml_implicit_resolvers.items():
    _resolvers[:] = [(tag, rx) for tag, rx in _resolvers if tag != "tag:yaml.org,2002:bool"]
_BOOL_WORDS = "yes|Yes|YES|no|No|NO|on|On|ON|off|Off|OFF"  # PyYAML's 1.1 set, less true/false
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool",
    re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
    list("tTfF"),
)
_Loader.add_implicit_resolver("!yamlword", re.compile(f"^(?:{_BOOL_WORDS})$"), list("yYnNoO"))
_Loader.add_constructor("!yamlword", lambda loader, node: YamlWord(loader.construct_scalar(node)))


def load_yaml(text: str) -> Any:
    """`yaml.safe_load`, except that yes/no/on/off come back as `YamlWord`s (see there)."""
    return yaml.load(text, Loader=_Loader)  # noqa: S506 (a SafeLoader subclass)


def _plain(value: Any) -> Any:
    """`value` with every `YamlWord` turned into the boolean it means (untyped values)."""
    if isinstance(value, YamlWord):
        return value.as_bool
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


@dataclass
class LoraConfig:
    enabled: bool = False  # train LoRA adapters instead of all weights
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    # q_proj/v_proj touch only the language model of Qwen-VL (the vision blocks use a fused qkv);
    # a string is peft's own form: "all-linear" (every linear layer but the output head) or a regex
    target_modules: list[str] | str = field(default_factory=lambda: ["q_proj", "v_proj"])


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
    # The variants below are documented, with formulas, papers and TRL's names, in docs/algorithms.md.
    # token: one importance ratio per token (PPO/GRPO); sequence: GSPO's length-normalised sequence
    # ratio (TRL importance_sampling_level)
    importance_level: Literal["token", "sequence"] = "token"
    # optimizer updates per rollout; > 1 keeps the sampling policy's log-probs (computed once per
    # rollout) as the ratio's denominator; needs loss is/ppo (TRL num_iterations)
    num_iterations: int = 1
    mask_truncated: bool = (
        False  # completions cut at max_new_tokens leave the loss (TRL mask_truncated_completions)
    )
    # train only on this share of each micro-batch's highest-entropy tokens; 1 = all (TRL top_entropy_quantile)
    top_entropy_quantile: float = 1.0
    # k3: plain k3 KL; k3_ratio: k3 x importance ratio, the unbiased KL gradient (TRL
    # use_bias_correction_kl, on by default there)
    kl_estimator: Literal["k3", "k3_ratio"] = "k3"
    delta: float = 0.0  # ppo: cap the unclipped ratio at delta (two-sided clip); 0 = off (TRL delta)
    # DAPO dynamic sampling: drop groups whose rewards are all equal and roll out more prompts until the
    # step's batch is full (verl algorithm.filter_groups; not in TRL)
    dynamic_sampling: bool = False
    # extra rollout rounds per step at most; when hit, the step trains on the groups it has, logged
    # as dynamic/bound_hit (verl max_num_gen_batches)
    dynamic_max_extra_rollouts: int = 4
    # DAPO soft overlong penalty: the last overlong_buffer tokens before max_new_tokens ramp the reward
    # down by up to overlong_factor; 0 = off (verl reward_model.overlong_buffer.len / penalty_factor)
    overlong_buffer: int = 0
    overlong_factor: float = 1.0


def validate_grpo(cfg: Config) -> None:
    """grpo.* checks of the variants (docs/algorithms.md); one line naming the key on bad input."""
    g = cfg.grpo
    if g.num_iterations < 1:
        raise ConfigError(f"grpo.num_iterations: must be at least 1, got {g.num_iterations}")
    if g.num_iterations > 1 and g.loss == "pg":
        raise ConfigError(
            "grpo.num_iterations > 1 needs grpo.loss 'is' or 'ppo': after the first update the samples "
            "are off-policy and only an importance ratio corrects for it"
        )
    if not 0.0 < g.top_entropy_quantile <= 1.0:
        raise ConfigError(f"grpo.top_entropy_quantile: must be in (0, 1], got {g.top_entropy_quantile}")
    if g.delta < 0 or (g.delta and g.delta <= 1.0 + g.clip_high):
        raise ConfigError(f"grpo.delta: 0 (off) or > 1 + grpo.clip_high ({1 + g.clip_high}), got {g.delta}")
    if g.delta and g.loss != "ppo":
        raise ConfigError("grpo.delta: the two-sided clip applies to grpo.loss 'ppo' only")
    if g.overlong_buffer < 0 or g.overlong_buffer > cfg.rollout.max_new_tokens:
        raise ConfigError(
            f"grpo.overlong_buffer: must be in [0, rollout.max_new_tokens = {cfg.rollout.max_new_tokens}], "
            f"got {g.overlong_buffer}"
        )
    if g.dynamic_max_extra_rollouts < 0:
        raise ConfigError(
            f"grpo.dynamic_max_extra_rollouts: must be >= 0, got {g.dynamic_max_extra_rollouts}"
        )
    if g.dynamic_sampling and cfg.rollout.overlap:
        raise ConfigError(
            "grpo.dynamic_sampling: not with rollout.overlap (the next rollout is already drawn)"
        )
    if g.dynamic_sampling and cfg.rollout.group_size < 2:
        raise ConfigError(
            "grpo.dynamic_sampling: needs rollout.group_size >= 2 (a group of one has no spread)"
        )
    if g.dynamic_sampling and cfg.train.dist_strategy == "fsdp2":
        raise ConfigError(
            "grpo.dynamic_sampling: not with train.dist_strategy fsdp2 (ranks may keep different numbers "
            "of groups, and every FSDP2 forward is a collective); use ddp"
        )


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
    steps: int = 1000  # optimizer updates (0: a warm-start-only run, with warmup.steps > 0)
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
    timeout_s: float | None = (
        None  # per-call bound in a worker process; None = the reward's default, 0 = none
    )
    max_memory_gb: float | None = None  # per-call memory bound in that worker; None = 8 GiB, 0 = none


@dataclass
class Config:
    recipe: str = ""  # which recipe this came from (informational)
    description: str = ""  # one line for `vlmgrpo recipes` (a recipe's own; never its base's)
    # offline recipes: inputs built when missing, config key -> builder (vlmgrpo/offline.py), e.g.
    # {model.name_or_path: "tiny:qwen2_5_vl"}; a recipe with any is marked offline in `vlmgrpo recipes`
    build: dict[str, str] = field(default_factory=dict)
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
    if isinstance(value, YamlWord):  # yes/no/on/off: the word for a string field, else a boolean
        wants_str = tp is str or (origin is Literal and str(value) in typing.get_args(tp))
        if origin in (typing.Union, types.UnionType):
            wants_str = str in typing.get_args(tp) and bool not in typing.get_args(tp)
        value = str(value) if wants_str else value.as_bool
    if tp is Any:
        return _plain(value)
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
        args = typing.get_args(tp)
        if args and args[1] is not Any:
            return {k: _check_type(v, args[1], f"{where}.{k}") for k, v in value.items()}
        return _plain(dict(value))
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


def recipe_description(name: str) -> str:
    """A recipe's one line for listings: its `description`, "(offline)" when it builds its inputs."""
    try:
        data = load_recipe_dict(name)
    except ConfigError as e:
        return f"(does not load: {e})"
    offline = "[offline] " if data.get("build") else ""
    return f"{offline}{data.get('description') or _first_sentence(recipe_path(name))}".strip()


def _first_sentence(path: Path) -> str:
    """A recipe without `description:`: the first sentence of its leading comment ("" if none)."""
    lines = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("#").strip())
    text = " ".join(x for x in lines if x)
    m = re.search(r"\.\s+(?=[A-Z`])", text)  # a full stop before a capital ("et al. 2025" is not)
    text = text[: m.start() + 1] if m else text
    return text if len(text) <= 140 else text[:137].rsplit(" ", 1)[0] + "..."


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
        data = load_yaml(path.read_text(encoding="utf-8")) or {}
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
    _paths_from_recipe(data, path.parent)
    own_description = data.get("description", "")
    # a run's resolved config.yaml names the recipe it came from (the resume hint passes that file)
    own_name = data.get("recipe") or path.stem
    if base:
        try:
            recipe_path(base)
        except ConfigError as e:  # a misspelled base: name the file that asks for it
            raise ConfigError(f"{path}: base: {e}") from None
        data = _deep_merge(load_recipe_dict(base, (*_seen, str(path))), data)
    data["recipe"] = own_name  # this recipe's name, not its base's
    data["description"] = own_description  # a base's line describes the base
    return data


def _beside(spec: Any, folder: Path) -> Any:
    """A "file.py:fn" spec whose file is not found from the working directory but is beside the
    recipe: that file, as an absolute path (so the resolved config.yaml finds it too)."""
    if not isinstance(spec, str) or ":" not in spec:
        return spec
    target, _, attr = spec.rpartition(":")
    p = Path(target)
    if not target.endswith(".py") or p.is_absolute() or p.is_file() or not (folder / p).is_file():
        return spec
    return f"{(folder / p).resolve()}:{attr}"


def _paths_from_recipe(data: dict[str, Any], folder: Path) -> None:
    """User code named in a recipe (rewards, datasets) is looked up beside the recipe file too."""
    for r in data.get("rewards") or []:
        if isinstance(r, dict):
            r["name"] = _beside(r.get("name"), folder)
    d = data.get("data")
    if isinstance(d, dict):
        for key in ("dataset", "eval_dataset"):
            if key in d:
                d[key] = _beside(d[key], folder)


def parse_override(text: str) -> tuple[list[str], Any]:
    """'optim.lr=1e-5' -> (['optim', 'lr'], 1e-5); the value is parsed as YAML."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {text!r}: expected key.sub=value")
    try:
        value = load_yaml(raw) if raw.strip() else ""
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
            if not last and isinstance(node, list):
                nxt, *rest = keys[i + 1 :]
                at, rest = (nxt, rest) if nxt.isdigit() else ("0", [nxt, *rest])
                hint = f"{raw}[{at}]" + "".join(f".{r}" for r in rest)
                raise ConfigError(f"--set {text!r}: '{raw}' is a list; name an entry, e.g. {hint}")
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


# counts that must be >= 1, and counts where 0 means "off" / "never" / "default" but < 0 means nothing
POSITIVE = (
    "train.max_nonfinite",
    "rollout.group_size",
    "rollout.prompts_per_step",
    "rollout.max_new_tokens",
    "optim.grad_accum",
    "eval.num_items",
    "eval.num_chains",
    "warmup.batch_size",
    "model.lora.r",
)
NON_NEGATIVE = (
    "train.eval_every",
    "train.save_every",
    "train.keep_last",
    "train.log_samples_every",
    "train.max_time_s",
    "train.threads",
    "data.image_max_side",
    "rollout.top_k",
    "optim.micro_batch_seqs",
    "optim.token_budget",
    "optim.warmup_steps",
    "optim.lr",
    "optim.max_grad_norm",
    "rollout.temperature",
    "eval.temperature",
    "eval.max_new_tokens",
    "warmup.steps",
    "warmup.eval_every",
    "warmup.min_distinct",
    "grpo.beta",
    "grpo.ref.refresh_every",
)


def _get(cfg: Any, key: str) -> Any:
    for part in key.split("."):
        cfg = getattr(cfg, part)
    return cfg


def validate(cfg: Config) -> None:
    """Cross-field checks that types alone cannot express."""
    if cfg.train.steps < 1 and not (cfg.train.steps == 0 and cfg.warmup.steps > 0):
        raise ConfigError(
            f"train.steps: must be at least 1, got {cfg.train.steps} (0 only for a warm-start-only "
            "run, with warmup.steps > 0)"
        )
    for key in POSITIVE:
        if _get(cfg, key) < 1:
            raise ConfigError(f"{key}: must be at least 1, got {_get(cfg, key)}")
    for key in NON_NEGATIVE:
        if _get(cfg, key) < 0:
            raise ConfigError(f"{key}: must be >= 0 (0 = off or the default), got {_get(cfg, key)}")
    if cfg.train.steps > 0 and cfg.rollout.group_size < 2:
        # each advantage is a reward minus its group's mean: a group of one always gives 0, so every
        # step would train on nothing while looking like a normal run
        raise ConfigError(
            f"rollout.group_size: GRPO needs at least 2 completions per prompt (a group of one has no "
            f"baseline, so every advantage is 0), got {cfg.rollout.group_size}"
        )
    from vlmgrpo.offline import check_builders

    check_builders(cfg.build)
    if cfg.grpo.beta > 0 and cfg.grpo.ref.kind == "none":
        raise ConfigError("grpo.beta > 0 needs a reference: set grpo.ref.kind to 'copy' or 'adapter'")
    if cfg.grpo.ref.kind == "adapter" and cfg.grpo.ref.refresh_every:
        raise ConfigError(
            "grpo.ref.refresh_every: the adapter reference is the frozen base; it cannot be refreshed"
        )
    if cfg.grpo.ref.kind == "adapter" and not cfg.model.lora.enabled:
        raise ConfigError("grpo.ref.kind 'adapter' needs model.lora.enabled: true")
    if cfg.grpo.ref.kind == "adapter" and cfg.grpo.beta > 0 and cfg.warmup.steps > 0:
        # the adapter reference is the base model with the adapters off: the model before the
        # warm start, not the one GRPO starts from (a copy reference is taken after the warm start)
        raise ConfigError(
            "grpo.ref.kind 'adapter' with warmup.steps > 0: the reference would be the model before "
            "the warm start; use grpo.ref.kind 'copy' (or grpo.beta: 0)"
        )
    validate_grpo(cfg)
    for i, r in enumerate(cfg.rewards):
        if not r.name:
            raise ConfigError(f"rewards[{i}].name: missing")
        for key in ("timeout_s", "max_memory_gb"):
            if (getattr(r, key) or 0) < 0:
                raise ConfigError(f"rewards[{i}].{key}: must be >= 0 (0 = none), got {getattr(r, key)}")


def save_config(cfg: Config, path: Path) -> None:
    """Write atomically (a temporary file renamed over `path`): a run killed mid-write never leaves
    a torn `config.yaml` for `--resume` to read."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    tmp.replace(path)


def config_from_file(path: Path) -> Config:
    """Read back a resolved `config.yaml` from a run folder."""
    try:
        data = load_yaml(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"{path}: cannot read the run's config: {e}") from None
    return _from_dict(Config, data, "")
