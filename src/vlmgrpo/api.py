"""The Python API, in TRL's names: `GRPOConfig` and `GRPOTrainer`.

    from vlmgrpo import GRPOConfig, GRPOTrainer   # instead of: from trl import ...

`GRPOConfig` and its mapping onto the native schema live in `vlmgrpo.trl_config` (`MAPPING`).

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
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlmgrpo.config import Config, RewardEntry
from vlmgrpo.errors import ConfigError
from vlmgrpo.trl_config import MAPPING, UNSUPPORTED, GRPOConfig

log = logging.getLogger(__name__)


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
    from vlmgrpo.rewards.trl_compat import func_name, is_trl_reward, specs_from_entries

    funcs = reward_funcs if isinstance(reward_funcs, list | tuple) else [reward_funcs]
    if not funcs:
        raise ConfigError("reward_funcs: no reward function given")
    if weights is not None and len(weights) != len(funcs):
        raise ConfigError(
            f"GRPOConfig.reward_weights: {len(weights)} weights for {len(funcs)} reward functions"
        )
    weights = list(weights) if weights is not None else [1.0] * len(funcs)
    entries: list[RewardEntry] = []
    given: list[Callable | None] = []
    for fn, w in zip(funcs, weights):
        if isinstance(fn, str):  # a native name or 'file.py:fn', resolved as a recipe's entry is
            entries.append(RewardEntry(name=fn, weight=float(w)))
            given.append(None)
            continue
        if not callable(fn):
            raise ConfigError(f"reward_funcs: {fn!r} is neither a function nor a reward name")
        if not is_trl_reward(fn):
            raise ConfigError(
                f"reward_funcs: {func_name(fn)} has no 'completions' parameter; a TRL reward is "
                "f(prompts, completions, **kwargs); a native one is given by name or 'file.py:function'"
            )
        module = getattr(fn, "__module__", "") or ""  # config.yaml records where it came from
        entries.append(RewardEntry(name=f"{module}:{func_name(fn)}", weight=float(w), label=func_name(fn)))
        given.append(fn)
    return specs_from_entries(entries, given), entries


def _load_with(cfg: Config, init: dict[str, Any]) -> Any:
    """The model of `cfg.model.name_or_path` loaded with `model_init_kwargs` (revision,
    quantization_config, dtype "auto", ...); the rest of the set-up is `prepare_policy`'s."""
    import torch
    import transformers

    from vlmgrpo.errors import ModelLoadError

    kw = {
        "dtype": getattr(torch, cfg.model.dtype),
        "attn_implementation": cfg.model.attn_implementation,
        **init,
    }
    try:
        return transformers.AutoModelForImageTextToText.from_pretrained(cfg.model.name_or_path, **kw)
    except OSError as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise ModelLoadError(f"{cfg.model.name_or_path}: cannot load model ({first})") from None


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
    """What `train()` returns (TRL's TrainOutput fields, in TRL's units)."""

    global_step: int  # optimizer steps, as TRL counts them: GRPO steps (rollouts) x num_iterations
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

            if self._model_obj is None and self.args.init_kwargs():
                self._model_obj = _load_with(self.cfg, self.args.init_kwargs())

            components = Components(
                model=self._model_obj,
                proc=self._proc,
                train_set=self.train_dataset,
                eval_set=self.eval_dataset if self.eval_dataset is not None else self.train_dataset,
                specs=self.specs,
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
            tr.step * tr.cfg.grpo.num_iterations,  # each rollout makes num_iterations updates
            sum(losses) / len(losses) if losses else math.nan,
            rows[-1] if rows else {},
        )

    def save_model(self, output_dir: str | None = None) -> Path:
        """The policy in Hugging Face format (the LoRA adapter for a LoRA run) plus the processor."""
        from vlmgrpo.checkpoint import save_model

        tr = self._native()
        out = Path(output_dir or self.args.output_dir or tr.out)
        out.mkdir(parents=True, exist_ok=True)
        save_model(tr.model, tr.proc, out)
        return out


__all__ = ["GRPOConfig", "GRPOTrainer", "MAPPING", "UNSUPPORTED", "TrainOutput"]
