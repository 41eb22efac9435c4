"""Adversarial cycle training (seed B): two GRPO learners in alternating rounds.

    base round       the adversary writes image prompts (no grad) -> the generator draws them ->
                     the policy (the "base" VLM) runs cycle-consistency GRPO on those images
                     (optionally mixed with real dataset images: `schedule.real_fraction`)
    adversary round  the adversary samples G prompts -> images -> the policy describes each (no
                     grad) -> regenerated -> adversary reward 1 - similarity (+ controls,
                     `rewards/adversary.py`) -> group-normalised advantages -> adversary update

Each round is one optimizer update of one learner. Both learners are `trainer.Trainer`s, so they
share the rollout, the loss, the update (accumulation, clipping, non-finite guard), the optimiser
and scheduler construction, the reference model and the evaluation; this module only adds the
schedule, the policy's image source and the two-model checkpoint. Every learner has its own
optimiser; the seed's base model was never updated (its optimiser stepped only on rounds that
never were base rounds) and `tests/test_adversarial.py` checks that both models change.

Config: a normal recipe (the policy's sections, its `cycle` reward, its dataset for evaluation,
warm start and the real part of the mix) plus `extra.adversary` (`AdversaryConfig` below). The
adversary is any causal LM (`model.text_only: true`) or the policy's VLM used without images.

Metrics: one row per round (phase "grpo", `step` = rounds done), `round_kind` "base" or
"adversary". Base rows carry the plain trainer's metrics (`reward/*`, `loss`, ...: plots and
`plot --compare` read them as in a cycle run) plus `base/reward/mean` and `base/similarity/mean`;
adversary rows carry the adversary's under `adversary/` (`adversary/reward/mean`,
`adversary/similarity/mean`, `adversary/<control>/mean`, `adversary/loss`, ...). Evaluations add
`eval/*` (the policy on the real held-out set), `adversary/eval/*` (the adversary's instructions,
fixed sampling seed) and `adversary/eval/fixed/*` (fixed image prompts, when listed).
Checkpoints: `ckpts/ckpt-<round>/base/` and `.../adversary/` (HF format each) + trainer_state.pt.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vlmgrpo import checkpoint as ckpt
from vlmgrpo import trackers
from vlmgrpo.config import (
    Config,
    DataConfig,
    EvalConfig,
    GRPOConfig,
    ModelConfig,
    OptimConfig,
    PromptConfig,
    RewardEntry,
    RolloutConfig,
    WarmupConfig,
    _from_dict,
    save_config,
    validate,
)
from vlmgrpo.data.images import thumbnail
from vlmgrpo.errors import ConfigError, VlmgrpoError
from vlmgrpo.imagegen import get_generator
from vlmgrpo.rewards import REWARDS, RewardRecord, compute_rewards
from vlmgrpo.runlog import RunLog
from vlmgrpo.sampling import PolicyHandle, PromptSampler, build_prompt, seed_everything
from vlmgrpo.trainer import Trainer

log = logging.getLogger(__name__)

ADVERSARY_LABEL = "adversary"  # the adversary reward's metric label
INHERITED_REWARD_KWARGS = ("generator", "generator_kwargs", "embedder", "embedder_kwargs", "resize")
IMAGE_SEED_OFFSET = 250_000  # base-round images: a seed stream apart from the rewards' streams


# --------------------------------------------------------------------------- configuration


@dataclass
class AdversaryPromptConfig:
    system: str = ""
    # the adversary's instructions: one is drawn per prompt group; evaluations use them in order
    user: list[str] = field(default_factory=lambda: ["Describe an image."])
    prefill: str = ""


@dataclass
class ScheduleConfig:
    """Round r (0-based): `base_warmup_rounds` base rounds, then `adversary_warmup_rounds`
    adversary rounds, then cycles of `base_rounds` base rounds and `adversary_rounds` adversary
    rounds. Default: strict alternation, even rounds base, odd rounds adversary."""

    base_rounds: int = 1
    adversary_rounds: int = 1
    base_warmup_rounds: int = 0
    adversary_warmup_rounds: int = 0
    # fraction of the policy's training images drawn from its dataset instead of the adversary
    # (0 = the seed: adversary images only)
    real_fraction: float = 0.0


@dataclass
class AdversaryEvalConfig:
    num_items: int = 10  # first N instructions
    num_chains: int = 8  # prompts sampled per instruction (fixed seed)
    temperature: float = 1.0
    max_new_tokens: int = 0  # 0 = the adversary's rollout.max_new_tokens
    prompts: list[str] = field(default_factory=list)  # fixed image prompts scored at every evaluation


@dataclass
class AdversaryWarmupConfig:
    """Supervised warm start of the adversary on texts of the policy's dataset (before any round)."""

    steps: int = 0  # 0 = none
    lr: float = 1e-3
    batch_size: int = 16
    target_field: str = "description"  # sample field (or warmup.DERIVED_TARGETS name) used as the target


@dataclass
class AdversaryConfig:
    """`extra.adversary`. `rollout`, `grpo`, `optim` override the policy's sections key by key
    (the seed gives each model its own AdamW with seed A's hyperparameters)."""

    model: ModelConfig = field(default_factory=ModelConfig)
    device: str = ""  # default: train.device
    prompt: AdversaryPromptConfig = field(default_factory=AdversaryPromptConfig)
    rollout: dict[str, Any] = field(default_factory=dict)
    grpo: dict[str, Any] = field(default_factory=dict)
    optim: dict[str, Any] = field(default_factory=dict)
    # kwargs of the adversary reward (rewards/adversary.py); generator, embedder and resize default
    # to the policy's cycle reward
    reward: dict[str, Any] = field(default_factory=dict)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    warmup: AdversaryWarmupConfig = field(default_factory=AdversaryWarmupConfig)
    eval: AdversaryEvalConfig = field(default_factory=AdversaryEvalConfig)


def adversary_config(cfg: Config) -> AdversaryConfig:
    """Parse and check `extra.adversary`; errors name the key (`extra.adversary.<...>`)."""
    raw = cfg.extra.get("adversary")
    if not isinstance(raw, dict):
        raise ConfigError("extra.adversary: missing or not a mapping (the adversarial trainer needs it)")
    raw = dict(raw)
    if isinstance((raw.get("prompt") or {}).get("user"), str):
        raw["prompt"] = {**raw["prompt"], "user": [raw["prompt"]["user"]]}
    acfg: AdversaryConfig = _from_dict(AdversaryConfig, raw, "extra.adversary")
    where = "extra.adversary"
    if not acfg.model.name_or_path:
        raise ConfigError(
            f"{where}.model.name_or_path: empty; give a causal LM (with text_only: true) or the policy's VLM"
        )
    if not acfg.prompt.user:
        raise ConfigError(f"{where}.prompt.user: no instruction for the adversary")
    s = acfg.schedule
    counts = (s.base_rounds, s.adversary_rounds, s.base_warmup_rounds, s.adversary_warmup_rounds)
    if min(counts) < 0 or s.base_rounds + s.adversary_rounds == 0:
        raise ConfigError(
            f"{where}.schedule: round counts must be >= 0 and base_rounds + adversary_rounds > 0"
        )
    if not 0.0 <= s.real_fraction <= 1.0:
        raise ConfigError(f"{where}.schedule.real_fraction: must be in [0, 1], got {s.real_fraction}")
    return acfg


def round_kind(r: int, s: ScheduleConfig) -> str:
    """ "base" or "adversary" for the 0-based round `r` (see `ScheduleConfig`)."""
    if r < s.base_warmup_rounds:
        return "base"
    r -= s.base_warmup_rounds
    if r < s.adversary_warmup_rounds:
        return "adversary"
    r -= s.adversary_warmup_rounds
    return "base" if r % (s.base_rounds + s.adversary_rounds) < s.base_rounds else "adversary"


def _section(cls: type, base: Any, over: dict[str, Any], where: str) -> Any:
    merged = {**dataclasses.asdict(base), **over}
    return _from_dict(cls, merged, where)


def cycle_spec(cfg: Config) -> RewardEntry | None:
    """The policy's cycle reward entry (the first reward named `cycle`), if any."""
    return next((r for r in cfg.rewards if r.name == "cycle"), None)


def adversary_reward_kwargs(cfg: Config, acfg: AdversaryConfig) -> dict[str, Any]:
    cycle = cycle_spec(cfg)
    inherited = {k: v for k, v in (cycle.kwargs if cycle else {}).items() if k in INHERITED_REWARD_KWARGS}
    kwargs = {**inherited, **copy.deepcopy(acfg.reward)}
    realism = kwargs.get("realism")
    if isinstance(realism, dict) and not realism.get("dataset"):  # default reference: the policy's images
        kwargs["realism"] = {
            **realism,
            "dataset": cfg.data.dataset,
            "kwargs": {"max_side": cfg.data.image_max_side, **cfg.data.kwargs},
        }
    return kwargs


def learner_configs(cfg: Config, acfg: AdversaryConfig) -> tuple[Config, Config]:
    """(policy config, adversary config): two plain trainer configs. `train.steps` of each is its
    number of rounds (for learning-rate schedules)."""
    n_base = sum(round_kind(r, acfg.schedule) == "base" for r in range(cfg.train.steps))
    base = copy.deepcopy(cfg)
    base.train.steps = max(1, n_base)
    adv = copy.deepcopy(cfg)
    where = "extra.adversary"
    adv.model = copy.deepcopy(acfg.model)
    adv.rollout = _section(RolloutConfig, cfg.rollout, acfg.rollout, f"{where}.rollout")
    adv.grpo = _section(GRPOConfig, cfg.grpo, acfg.grpo, f"{where}.grpo")
    adv.optim = _section(OptimConfig, cfg.optim, acfg.optim, f"{where}.optim")
    instructions = {"instructions": list(acfg.prompt.user)}
    adv.data = DataConfig(
        dataset="vlmgrpo.adversarial:instruction_dataset", kwargs=instructions, eval_kwargs=instructions
    )
    adv.prompt = PromptConfig(system=acfg.prompt.system, user="{instruction}", prefill=acfg.prompt.prefill)
    name = (
        ADVERSARY_LABEL
        if ADVERSARY_LABEL in REWARDS.names()
        else "vlmgrpo.rewards.adversary:adversary_reward"
    )
    adv.rewards = [RewardEntry(name=name, label=ADVERSARY_LABEL, kwargs=adversary_reward_kwargs(cfg, acfg))]
    e = acfg.eval
    adv.eval = EvalConfig(e.num_items, e.num_chains, e.temperature, e.max_new_tokens)
    adv.warmup = WarmupConfig()
    adv.train.steps = max(1, cfg.train.steps - n_base)
    adv.train.device = acfg.device or cfg.train.device
    adv.extra = {}
    try:
        validate(adv)
    except ConfigError as err:
        raise ConfigError(f"{where}: {err}") from None
    return base, adv


def instruction_dataset(kwargs: dict[str, Any], split: str, seed: int) -> list[dict[str, Any]]:
    """The adversary's 'dataset': its instructions, text only."""
    return [
        {"id": f"instruction-{i}", "images": [], "instruction": str(t)}
        for i, t in enumerate(kwargs.get("instructions") or [])
    ]


# --------------------------------------------------------------------------- the two learners


class AdversaryLearner(Trainer):
    """The adversary as a GRPO learner: the trainer's own step over its instructions, with the
    policy behind its reward (`ctx.policy` is the opponent, not the adversary itself)."""

    def __init__(self, cfg: Config, opponent: Trainer) -> None:
        self.opponent = opponent
        super().__init__(cfg)

    def reward_ctx(self, phase: str, part: int = 0) -> Any:
        ctx = super().reward_ctx(phase, part)
        ctx.policy = PolicyHandle(self.opponent.model, self.opponent.proc, self.opponent.cfg)
        if phase == "eval":  # the same dice at every evaluation: changes reflect the models
            ctx.seed = self.cfg.train.seed * 64 + 63
        return ctx

    def write_prompts(self, n: int, rng: np.random.Generator) -> list[str]:
        """`n` image prompts sampled (no grad) at the adversary's rollout settings, one instruction
        drawn per prompt."""
        samples = [self.train_set[int(i)] for i in rng.integers(len(self.train_set), size=n)]
        prompts = [build_prompt(s, self.cfg) for s in samples]
        handle = PolicyHandle(self.model, self.proc, self.cfg)
        return handle.generate([p.messages for p in prompts], None, prefill=self.cfg.prompt.prefill)


class AdversaryImages:
    """The policy's training samples in an adversarial run (it replaces the policy's sampler):
    each slot is an image drawn from an adversary prompt (seed B) or, with probability
    `real_fraction`, a real dataset sample. `prepare(n)` fills a round's slots in one batch (one
    adversary `generate`, one generator call); `next()` hands them out."""

    def __init__(
        self,
        real: PromptSampler,
        adversary: AdversaryLearner,
        generator: tuple[str, dict],
        image_side: int,
        real_fraction: float,
        seed: int,
    ) -> None:
        self.real, self.adversary = real, adversary
        self.generator, self.image_side, self.real_fraction = generator, image_side, real_fraction
        self.rng = np.random.default_rng(seed + 17)
        self.failed = 0
        self.queue: list[dict[str, Any]] = []

    @property
    def bad(self) -> int:
        return self.real.bad + self.failed

    def prepare(self, n: int, seed: int) -> None:
        real = self.rng.random(n) < self.real_fraction
        made = iter(self._adversary_samples(int((~real).sum()), seed))
        # a slot whose image failed 3 times takes a real image instead (counted in `bad`)
        slots = [None if r else next(made, None) for r in real]
        self.queue = [s or dict(self.real.next(), source="real") for s in slots]

    def _adversary_samples(self, k: int, seed: int) -> list[dict[str, Any]]:
        gen = get_generator(self.generator[0], self.generator[1])
        out: list[dict[str, Any]] = []
        for attempt in range(3):
            need = k - len(out)
            if need <= 0:
                break
            texts = self.adversary.write_prompts(need, self.rng)
            seeds = [(seed * 1009 + attempt * 97 + i + IMAGE_SEED_OFFSET) % 2**31 for i in range(need)]
            for text, img in zip(texts, gen.generate(texts, seeds=seeds)):
                if img is None:
                    self.failed += 1
                    continue
                image = thumbnail(img.convert("RGB"), self.image_side)
                out.append(
                    {
                        "id": f"adversary-{seed}-{len(out)}",
                        "images": [image],
                        "description": text,  # the prompt drew it: the truth for ceilings
                        "adversary_prompt": text,
                        "source": "adversary",
                    }
                )
        if len(out) < k:
            log.warning("%d adversary images failed 3 times; using real images instead", k - len(out))
        return out

    def next(self) -> dict[str, Any]:
        if not self.queue:
            self.prepare(1, int(self.rng.integers(2**31)))
        return self.queue.pop(0)

    def state(self) -> dict[str, Any]:
        return {"real": self.real.state(), "rng": self.rng.bit_generator.state, "failed": self.failed}

    def load(self, state: dict[str, Any]) -> None:
        self.real.load(state["real"])
        self.rng.bit_generator.state = state["rng"]
        self.failed = state["failed"]


def warm_start_adversary(
    adv: AdversaryLearner, dataset: Any, w: AdversaryWarmupConfig, runlog: RunLog
) -> None:
    """Supervised warm start of the adversary: its instruction -> a `target_field` text of the
    policy's dataset (e.g. a scene's true description). Why: a tiny random LM writes byte salad
    that mostly draws a blank canvas, so its first rounds teach it the prompt language instead of
    the policy's weaknesses; an instruct model (the seed's adversary) writes fluent prompts from
    the start and needs none. Rows: phase "warmup", `adversary/warmup/loss`."""
    from vlmgrpo.warmup import sft_batch, target_text

    if not hasattr(dataset, "__len__"):
        raise ConfigError("extra.adversary.warmup: needs a map-style policy dataset (data.dataset)")
    params = [p for p in adv.model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=w.lr, weight_decay=0.0)
    rng = np.random.default_rng(adv.cfg.train.seed + 11)
    t0 = time.perf_counter()
    for step in range(1, w.steps + 1):
        samples = []
        for i in rng.integers(len(dataset), size=w.batch_size):
            instruction = adv.train_set[int(rng.integers(len(adv.train_set)))]
            samples.append({**instruction, "target": target_text(dataset[int(i)], w.target_field)})
        batch = sft_batch(adv, samples, "target")
        logps = adv.logp_model(batch, 1.0)
        mask = batch.completion_mask.to(logps.dtype)
        loss = -(logps * mask).sum() / mask.sum()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        runlog.log(
            step, "warmup", {"adversary/warmup/loss": loss.item(), "time/elapsed": time.perf_counter() - t0}
        )


# --------------------------------------------------------------------------- metrics


def adversary_key(key: str, label: str = ADVERSARY_LABEL) -> str | None:
    """A key of the adversary learner's metrics -> its name in the run's row (None: dropped).
    reward/mean -> adversary/reward/mean; reward/<label>/<sub>/mean -> adversary/<sub>/mean;
    eval/reward/mean -> adversary/eval/reward/mean; eval/<label>/<sub>/mean -> adversary/eval/<sub>/mean;
    loss -> adversary/loss; time/* stay (the round's timings)."""
    if key.startswith("time/"):
        return key
    for src, dst in (("reward", "adversary"), ("eval", "adversary/eval")):
        own = f"{src}/{label}/"
        if key == f"{own}mean":
            return None  # the only reward: equals <src>/reward/mean
        if key == f"{own}failed":
            return f"{dst}/reward/failed"
        if key.startswith(own):
            return f"{dst}/{key[len(own) :]}"
        if key.startswith(f"{src}/"):
            return f"adversary/{key}"
    return f"adversary/{key}"


def rename_adversary(metrics: dict[str, Any], prefix_from: str = "", prefix_to: str = "") -> dict[str, Any]:
    out = {}
    for k, v in metrics.items():
        new = adversary_key(k)
        if new is not None:
            out[new.replace(prefix_from, prefix_to, 1) if prefix_from else new] = v
    return out


# --------------------------------------------------------------------------- the loop


def _learner_state(tr: Trainer) -> dict[str, Any]:
    state = {
        "optimizer": tr.optimizer.state_dict(),
        "scheduler": tr.scheduler.state_dict(),
        "sampler": tr.sampler.state(),
        "nonfinite": tr.nonfinite,
    }
    if tr.cfg.grpo.ref.kind == "copy":
        state["ref"] = tr.ref.policy.state_dict()
    return state


def _load_learner_state(tr: Trainer, state: dict[str, Any]) -> None:
    tr.optimizer.load_state_dict(state["optimizer"])
    tr.scheduler.load_state_dict(state["scheduler"])
    tr.sampler.load(state["sampler"])
    tr.nonfinite = state.get("nonfinite", 0)
    if "ref" in state and tr.cfg.grpo.ref.kind == "copy":
        tr.ref.policy.load_state_dict(state["ref"])


class AdversarialTrainer:
    """`AdversarialTrainer(cfg).fit()`: see the module docstring."""

    def __init__(self, cfg: Config, resume: str | None = None) -> None:
        self.cfg = cfg
        self.acfg = adversary_config(cfg)
        self.out = Path(cfg.train.output_dir)
        self.resume_from = self._resume_path(resume)
        base_cfg, adv_cfg = learner_configs(cfg, self.acfg)
        self.base = self._learner(base_cfg, "base", lambda c: Trainer(c))
        self.adversary = self._learner(adv_cfg, "adversary", lambda c: AdversaryLearner(c, self.base))
        self.adv_spec = self.adversary.specs[0]
        kw = self.adv_spec.kwargs
        self.images = AdversaryImages(
            self.base.sampler,
            self.adversary,
            (kw.get("generator", "render"), kw.get("generator_kwargs") or {}),
            cfg.data.image_max_side,
            self.acfg.schedule.real_fraction,
            cfg.train.seed,
        )
        self.base.sampler = self.images
        self.round = 0
        self.updates = {"base": 0, "adversary": 0}
        self.runlog: RunLog | None = None
        cycle = cycle_spec(cfg)
        self.cycle_key = (cycle.label or cycle.name) if cycle else ""

    def _resume_path(self, resume: str | None) -> Path | None:
        p = ckpt.resolve_resume(self.out / "ckpts", resume)
        if p is not None and (not (p / "base").is_dir() or not (p / "adversary").is_dir()):
            raise VlmgrpoError(f"{p}: not an adversarial checkpoint (no base/ and adversary/ folders)")
        return p

    def _learner(self, cfg: Config, name: str, make: Any) -> Trainer:
        """A learner, loaded from the checkpoint's sub-folder when resuming (full weights: the
        folder itself; LoRA: the base model + the saved adapter)."""
        folder = self.resume_from / name if self.resume_from is not None else None
        if folder is not None and not cfg.model.lora.enabled:
            cfg.model.name_or_path = str(folder)
        tr = make(cfg)
        if folder is not None and cfg.model.lora.enabled:
            tr._load_adapter(folder)
        return tr

    # ------------------------------------------------------------------ rounds
    def _sample_logging(self, tr: Trainer, kind: str) -> None:
        """Each kind logs its samples every `train.log_samples_every` rounds of that kind (the
        trainer tests its own `step`, which here is the global round)."""
        every = self.cfg.train.log_samples_every
        tr.cfg.train.log_samples_every = 1 if every and self.updates[kind] % every == 0 else 0

    def base_round(self) -> dict[str, Any]:
        tr = self.base
        n = tr.cfg.rollout.prompts_per_step * tr.cfg.optim.grad_accum
        self.images.prepare(n, (self.cfg.train.seed + self.round) * 64 + 32)
        queued = list(self.images.queue)
        tr.step = self.round
        self._sample_logging(tr, "base")
        metrics = tr.train_step()
        key = self.cycle_key
        metrics["base/reward/mean"] = metrics.get("reward/mean", math.nan)
        if key:
            metrics["base/similarity/mean"] = metrics.get(
                f"reward/{key}/raw/mean", metrics.get(f"reward/{key}/mean", math.nan)
            )
        metrics["base/real_fraction"] = sum(q["source"] == "real" for q in queued) / max(1, len(queued))
        if tr.cfg.train.log_samples_every:  # which adversary prompt drew each image of the round
            (self.runlog.sample_dir(self.round + 1) / "adversary_prompts.json").write_text(
                json.dumps([{"id": q["id"], "prompt": q.get("adversary_prompt")} for q in queued], indent=1)
            )
        return metrics

    def adversary_round(self) -> dict[str, Any]:
        tr = self.adversary
        tr.step = self.round
        self._sample_logging(tr, "adversary")
        return rename_adversary(tr.train_step())

    @torch.no_grad()
    def evaluate(self) -> dict[str, Any]:
        self.base.step = self.adversary.step = self.round
        metrics = self.base.evaluate()
        metrics.update(rename_adversary(self.adversary.evaluate()))
        prompts = self.acfg.eval.prompts
        if prompts:
            recs = [
                RewardRecord(prompt="", completion=p, images=[], sample={"id": f"fixed-{i}"}, index=i)
                for i, p in enumerate(prompts)
            ]
            res = compute_rewards(recs, [self.adv_spec], self.adversary.reward_ctx("eval"))
            metrics.update(rename_adversary(res.metrics("eval"), "adversary/eval/", "adversary/eval/fixed/"))
        return metrics

    # ------------------------------------------------------------------ checkpoints
    def save(self) -> Path:
        state = {
            "round": self.round,
            "updates": dict(self.updates),
            "base": _learner_state(self.base),
            "adversary": _learner_state(self.adversary),
        }
        return ckpt.save_checkpoint(
            self.out / "ckpts",
            self.round,
            {
                "base": (self.base.model, self.base.proc),
                "adversary": (self.adversary.model, self.adversary.proc),
            },
            state,
            keep_last=self.cfg.train.keep_last,
            fault_hook=ckpt.fault_hook(self.round),
        )

    def _restore(self) -> None:
        state = ckpt.load_trainer_state(self.resume_from)
        _load_learner_state(self.base, state["base"])
        _load_learner_state(self.adversary, state["adversary"])
        self.updates = dict(state["updates"])
        ckpt.set_rng_state(state["rng"])
        self.round = state["round"]

    # ------------------------------------------------------------------ the loop
    def fit(self) -> Path:
        cfg = self.cfg
        self.out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, self.out / "config.yaml")
        runlog = trackers.attach(RunLog(self.out, cfg.train.tensorboard), cfg, self.out)
        self.runlog = self.base.runlog = self.adversary.runlog = runlog
        if self.resume_from is not None:
            self._restore()
            self.runlog.truncate_after(self.round)
            log.info("resumed from %s at round %d", self.resume_from, self.round)
        elif cfg.warmup.steps > 0:
            from vlmgrpo.warmup import warm_start

            warm_start(self.base)  # supervised, on the policy's real dataset
        if self.resume_from is None and self.acfg.warmup.steps > 0:
            warm_start_adversary(self.adversary, self.base.train_set, self.acfg.warmup, self.runlog)
        if self.resume_from is None and (cfg.warmup.steps > 0 or self.acfg.warmup.steps > 0):
            seed_everything(cfg.train.seed + 1)
        if self.round == 0 and cfg.train.eval_every:
            self.runlog.log(0, "grpo", self.evaluate())
        self.base._install_signal_handlers()
        from tqdm import tqdm

        t_start = time.time()
        bar = tqdm(total=cfg.train.steps, initial=self.round, desc="adversarial", dynamic_ncols=True)
        last = {"base": math.nan, "adversary": math.nan}
        try:
            while self.round < cfg.train.steps and not self.base.stop_requested:
                kind = round_kind(self.round, self.acfg.schedule)
                t0 = time.perf_counter()
                metrics = self.base_round() if kind == "base" else self.adversary_round()
                metrics["time/round"] = time.perf_counter() - t0
                metrics["round_kind"] = kind
                self.updates[kind] += 1
                self.round += 1
                last[kind] = metrics.get(f"{kind}/reward/mean", math.nan)
                if cfg.train.eval_every and self.round % cfg.train.eval_every == 0:
                    metrics.update(self.evaluate())
                self.runlog.log(self.round, "grpo", metrics)
                bar.update(1)
                bar.set_postfix(base=f"{last['base']:.3f}", adversary=f"{last['adversary']:.3f}")
                if cfg.train.save_every and self.round % cfg.train.save_every == 0:
                    self.save()
                if cfg.train.max_time_s and time.time() - t_start > cfg.train.max_time_s:
                    log.warning("train.max_time_s reached at round %d", self.round)
                    break
        finally:
            bar.close()
        if not cfg.train.save_every or self.round % cfg.train.save_every:
            self.save()
        if self.base.stop_requested:
            print(
                f"stopped at round {self.round}; resume with: vlmgrpo train --recipe {self.out / 'config.yaml'} "
                f"--output-dir {self.out} --resume"
            )
        self.runlog.close()
        return self.out


def train_adversarial(cfg: Config, resume: str | None = None) -> Path:
    """Run adversarial training (`extra.adversary` in the config); returns the run folder."""
    return AdversarialTrainer(cfg, resume).fit()


__all__ = [
    "AdversarialTrainer",
    "AdversaryConfig",
    "AdversaryImages",
    "AdversaryLearner",
    "adversary_config",
    "round_kind",
    "train_adversarial",
]
