"""The GRPO training loop. One step reads top to bottom:

    rollout  -> sample G completions for each of `prompts_per_step x grad_accum` prompts
    rewards  -> score every completion (records carry the images and all dataset fields)
    advantages -> group-normalise the rewards (skipped samples excluded)
    update   -> one optimizer step over all micro-batches, loss normalised over the global batch

Each phase is timed (`time/<phase>` in the metrics). Departures from textbook GRPO are choices in
the config (`grpo.loss`, `grpo.aggregation`, `grpo.adv_scale`); the defaults reproduce seed A:
on-policy policy gradient, per-sequence mean (length-biased), group std + 1e-4, no KL.

Elsewhere: the step's GRPO-variant stages (`grpo/step.py`), the built parts a Trainer takes
(`components.py`), the optimizer and lr schedule (`optimizer.py`), fit's run-folder upkeep
(`runfolder.py`).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from vlmgrpo import checkpoint as ckpt
from vlmgrpo import components, dist, runfolder
from vlmgrpo.components import Components, check_reward_call, prepare_rewards
from vlmgrpo.config import Config, save_config
from vlmgrpo.errors import ConfigError, ServiceError, VlmgrpoError
from vlmgrpo.grpo import fastpath
from vlmgrpo.grpo import step as step_fns
from vlmgrpo.grpo.logps import LogpModel
from vlmgrpo.grpo.step import PeerServiceError
from vlmgrpo.optimizer import build_optimizer, lr_factor
from vlmgrpo.placement import OptimizerOffloader
from vlmgrpo.rewards import (
    RewardContext,
    RewardRecord,
    RewardResult,
    compute_rewards,
    resolve_reward,
)
from vlmgrpo.rewards.base import log_failures
from vlmgrpo.rollout import Prompt, RolloutBatch
from vlmgrpo.rollout import fast as fast_rollout
from vlmgrpo.rollout import hf as hf_rollout
from vlmgrpo.runlog import NullLog, RunLog, Timer
from vlmgrpo.sampling import (
    NoPolicy,
    PolicyHandle,
    PromptSampler,
    build_prompt,
    prompt_seed,
    sampler_for,
    seed_everything,
)

log = logging.getLogger(__name__)


@dataclass
class _Pending:
    """Step t+1's rollout, sampled during step t (rollout.overlap)."""

    batches: list[RolloutBatch]
    samples: list[tuple[list[dict], list[Prompt]]]
    sampler_before: dict[str, Any]  # the sampler before these prompts were drawn (checkpoints)
    rollout_s: float = 0.0


class Trainer:
    def __init__(self, cfg: Config, resume: str | None = None, components: Components | None = None) -> None:
        self.cfg = cfg
        self.out = Path(cfg.train.output_dir)
        self.resume_from = ckpt.resolve_resume(self.out / "ckpts", resume)
        if cfg.train.threads:
            torch.set_num_threads(cfg.train.threads)
        seed_everything(cfg.train.seed)
        self.dist, self.device = dist.init(cfg.train.device)
        if cfg.rollout.prompts_per_step % self.dist.world:
            raise ConfigError(
                f"rollout.prompts_per_step ({cfg.rollout.prompts_per_step}) must be a multiple of the "
                f"number of processes ({self.dist.world}): each rank takes an equal share of the global batch"
            )
        if cfg.rollout.overlap and cfg.grpo.loss == "pg":
            raise ConfigError(
                "rollout.overlap: needs grpo.loss 'is' or 'ppo' (the importance ratio corrects for "
                "samples drawn before the last update); 'pg' assumes on-policy samples"
            )
        from vlmgrpo import trackers

        trackers.require(cfg)  # a tracker's missing package fails here, before any model loads
        c = components if components is not None else Components()
        c.fill_from_config(cfg)
        self.train_set, self.eval_set, self.specs = c.train_set, c.eval_set, c.specs
        prepare_rewards(self.specs)  # unknown rewards, bad kwargs, missing services fail here
        self.model, self.proc = c.load_model(cfg, self.resume_from, self.device)
        if self.resume_from is not None and cfg.model.lora.enabled:
            self._load_adapter(self.resume_from)
        if (
            cfg.rollout.compile
            and self.device.type == "cuda"
            and sampler_for(cfg, self.model) is fast_rollout
        ):
            fast_rollout.engine_for(self.model, compile=True)  # later sample() calls reuse this engine
        self.logp_model = LogpModel(self.model)
        self.ref = self._build_reference()
        # the update runs through `update_model` (DDP / FSDP2 wrapper, or logp_model itself); the
        # optimizer is built after wrapping because FSDP2 replaces parameters by sharded DTensors
        self.update_model = dist.wrap(
            self.logp_model,
            cfg.train.dist_strategy,
            self.dist,
            self.device,
            dist.FsdpOptions.from_train(cfg.train),
        )
        self.fsdp = self.dist.enabled and cfg.train.dist_strategy == "fsdp2"
        if self.fsdp and cfg.grpo.ref.kind == "copy":
            raise ConfigError(
                "grpo.ref.kind 'copy' is not supported with FSDP2; use LoRA with ref.kind 'adapter'"
            )
        if self.fsdp:
            self._root_forward()
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = build_optimizer(params, cfg, fsdp=self.fsdp, device=self.device)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._lr_lambda)
        self.opt_offload = None
        if cfg.placement.offload_optimizer:
            if self.fsdp:
                raise ConfigError(
                    "placement.offload_optimizer: not with FSDP2 (its shards are already split over "
                    "ranks); use FSDP2's CPU offload instead"
                )
            self.opt_offload = OptimizerOffloader(self.optimizer, self.device)
        self._pending: _Pending | None = None
        self._pool: ThreadPoolExecutor | None = None
        self.sampler = PromptSampler(self.train_set, cfg.train.seed, cfg.data.skip_bad_samples)
        self.step = 0
        self.nonfinite = 0
        self.stop_requested = False
        self.runlog: RunLog | None = None

    # ------------------------------------------------------------------ setup helpers
    def _load_adapter(self, path: Path) -> None:
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        set_peft_model_state_dict(self.model, load_file(str(path / "adapter_model.safetensors")))

    def _lr_lambda(self, step: int) -> float:  # a bound method: LambdaLR's state_dict stays as it was
        return lr_factor(step, self.cfg.optim, self.cfg.train.steps)

    def _build_reference(self) -> Any:
        kind = self.cfg.grpo.ref.kind
        if kind == "copy" and self.cfg.grpo.beta > 0:  # no KL term: no copy to hold in memory
            ref = copy.deepcopy(self.model).eval()
            for p in ref.parameters():
                p.requires_grad_(False)
            return LogpModel(ref)
        return kind if kind == "adapter" else None

    # ------------------------------------------------------------------ the phases of a step
    def rollout(self, prompts: list[Prompt], seeds: list[int] | None = None) -> RolloutBatch:
        """G completions per prompt. With `seeds` (rollout.seed_per_prompt) each prompt's group is
        sampled from its own seed, so completions do not depend on how prompts are batched."""
        r = self.cfg.rollout
        kw = dict(
            temperature=r.temperature,
            top_p=r.top_p,
            top_k=r.top_k,
            max_new_tokens=r.max_new_tokens,
            synced_gpus=self.fsdp,
        )
        backend = sampler_for(self.cfg, self.model)
        if seeds is None:
            return backend.sample(self.model, self.proc, prompts, r.group_size, **kw)
        parts = []
        state = torch.get_rng_state()
        for p, seed in zip(prompts, seeds):
            torch.manual_seed(seed)
            parts.append(backend.sample(self.model, self.proc, [p], r.group_size, **kw))
        torch.set_rng_state(state)
        return hf_rollout.concat(parts, self.proc)

    def _root_forward(self) -> None:
        """FSDP2: one forward through the root module before the first generate (lazy init)."""
        tok = hf_rollout.tokenizer_of(self.proc)
        ids = torch.tensor([[tok.pad_token_id]], device=self.device)
        with torch.no_grad():
            self.model(input_ids=ids, attention_mask=torch.ones_like(ids))

    def records(self, samples: list[dict], prompts: list[Prompt], batch: RolloutBatch) -> list[RewardRecord]:
        g = batch.group_size
        return [
            RewardRecord(
                prompt=prompts[i // g].text,
                completion=batch.completions[i],
                images=prompts[i // g].images,
                sample=samples[i // g],
                group=i // g,
                index=i % g,
                # the sampled token ids, for rewards written for TRL (`completion_ids=`)
                extras={"completion_ids": batch.completion_ids[i][batch.completion_mask[i].bool()].tolist()},
            )
            for i in range(len(batch))
        ]

    def reward_ctx(self, phase: str, part: int = 0) -> RewardContext:
        """`part` numbers the micro-batches of a step, so per-sample seeds never repeat in a step."""
        return RewardContext(
            step=self.step,
            phase=phase,
            policy=PolicyHandle(self.model, self.proc, self.cfg),
            seed=(self.cfg.train.seed + self.step) * 64 + part,
        )

    def ref_logps(self, batch: RolloutBatch) -> torch.Tensor | None:
        if self.cfg.grpo.beta <= 0 or self.ref is None:
            return None
        with torch.no_grad():
            if self.ref == "adapter":
                with self.model.disable_adapter():
                    return self.logp_model(batch, self.cfg.rollout.temperature)
            return self.ref(batch, self.cfg.rollout.temperature)

    def update(
        self, batches: list[RolloutBatch], advantages: list[torch.Tensor], step_schedule: bool = True
    ) -> dict[str, float]:
        """One optimizer step over all rows of `batches`, in micro-batches of `optim.micro_batch_seqs`
        rows or `optim.token_budget` padded tokens. Each micro loss is scaled so that the sum equals
        the loss over the whole batch. `step_schedule`: move the learning-rate schedule (once per
        GRPO step, also when grpo.num_iterations makes several updates)."""
        o = self.cfg.optim
        if o.token_budget:  # length-bucketed, trimmed micro-batches of <= token_budget padded tokens
            micro = fastpath.plan_micro_batches(batches, advantages, o.token_budget)
        else:
            micro = fastpath.fixed_micro_batches(batches, advantages, o.micro_batch_seqs)
        # Normalisers count the whole global batch (all micro-batches, all ranks) divided by the
        # world size: DDP/FSDP average gradients over ranks, so the result is the global loss.
        n_seqs = sum(len(m.batch) for m in micro)
        n_tokens = float(sum(m.batch.completion_mask.sum().item() for m in micro))
        all_seqs, all_tokens = dist.all_sum([float(n_seqs), n_tokens], self.dist, self.device)
        # the tower's second pass runs outside DDP's forward, whose gradient hooks would miss it
        sv = fastpath.SharedVision(self.model, batches) if o.share_vision and not self.dist.enabled else None
        with sv if sv is not None else contextlib.nullcontext():
            loss_t, stats = fastpath.accumulate(
                self.update_model,
                micro,
                grpo=self.cfg.grpo,
                temperature=self.cfg.rollout.temperature,
                max_new_tokens=self.cfg.rollout.max_new_tokens,
                global_seqs=all_seqs / self.dist.world,
                global_tokens=all_tokens / self.dist.world,
                ref_logps=self.ref_logps,
                shared_vision=sv,
            )
        total_loss = dist.all_sum([float(loss_t)], self.dist, self.device)[0] / self.dist.world
        if self.dist.enabled and stats:  # loss statistics of every rank, not rank 0's alone
            summed = dist.all_sum(list(stats.values()), self.dist, self.device)
            stats = {k: v / self.dist.world for k, v in zip(stats, summed)}
        params = [p for p in self.model.parameters() if p.requires_grad]
        grad_norm = torch.nn.utils.clip_grad_norm_(
            params, o.max_grad_norm if o.max_grad_norm > 0 else float("inf")
        )
        if hasattr(grad_norm, "full_tensor"):  # FSDP2: a DTensor
            grad_norm = grad_norm.full_tensor()
        if not (math.isfinite(total_loss) and torch.isfinite(grad_norm)):
            # a non-finite update would poison the weights: drop it, count it, maybe stop
            self.optimizer.zero_grad(set_to_none=True)
            self.nonfinite += 1
            if self.nonfinite >= self.cfg.train.max_nonfinite:
                raise VlmgrpoError(
                    f"{self.nonfinite} updates with a non-finite loss or gradient; stopping "
                    "(the last good checkpoint is untouched; lower optim.lr or check the rewards)"
                )
            return {"loss": total_loss, "update/skipped_nonfinite": 1.0}
        lr = self.optimizer.param_groups[0]["lr"]  # the rate this step used (before the schedule moves)
        if self.opt_offload is not None:
            self.opt_offload.onload()
        self.optimizer.step()
        if self.opt_offload is not None:  # the moments leave before the next rollout and rewards
            self.opt_offload.offload()
        if step_schedule:
            self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return {
            "loss": total_loss,
            "grad_norm": float(grad_norm),
            "lr": lr,
            **{f"loss/{k}": v for k, v in stats.items()},
            "update/micro_batches": float(len(micro)),
        }

    def refresh_reference(self) -> None:
        """ref <- alpha * policy + (1 - alpha) * ref (seed D: alpha 0.1 every 200 steps)."""
        a = self.cfg.grpo.ref.refresh_alpha
        with torch.no_grad():
            for pr, pp in zip(self.ref.policy.parameters(), self.model.parameters()):
                pr.mul_(1 - a).add_(pp.detach(), alpha=a)

    # ------------------------------------------------------------------ one GRPO step
    def _rollout_phase(
        self, step: int, extra: int = 0
    ) -> tuple[list[RolloutBatch], list[tuple[list[dict], list[Prompt]]]]:
        """Draw and roll out the prompts of `step`: grad_accum micro-batches of this rank's share.
        `extra` numbers grpo.dynamic_sampling's additional rounds of a step (their own seeds).

        All micro-batches are sampled in one rollout call and split afterwards: seed A's 4 rounds
        of 8 chains decode as 32 rows at once (4x fewer decode steps than one call per round). With
        rollout.seed_per_prompt each prompt is sampled on its own anyway."""
        cfg = self.cfg
        n_local = cfg.rollout.prompts_per_step // self.dist.world
        first = self.dist.rank * n_local
        parts, all_seeds = [], []
        for k in range(cfg.optim.grad_accum):
            # every rank draws the same global list and keeps its slice: a group never spans
            # ranks, and the global batch does not depend on the world size
            drawn = [self.sampler.next() for _ in range(cfg.rollout.prompts_per_step)]
            samples = drawn[first : first + n_local]
            parts.append((samples, [build_prompt(s, cfg) for s in samples]))
            kk = k + extra * cfg.optim.grad_accum
            all_seeds += [prompt_seed(cfg.train.seed, step, kk, first + i) for i in range(n_local)]
        prompts = [p for _, ps in parts for p in ps]
        batch = self.rollout(prompts, all_seeds if cfg.rollout.seed_per_prompt else None)
        rows = n_local * cfg.rollout.group_size
        if len(parts) == 1:
            return [batch], parts
        return [batch.select(list(range(k * rows, (k + 1) * rows))) for k in range(len(parts))], parts

    def _prefetch(self, step: int) -> _Pending:
        """rollout.overlap: step `step`'s rollout now, with the log-probs of the policy that sampled
        it (the update of the step before changes the weights; the loss's ratio corrects for it)."""
        before, t0 = self.sampler.state(), time.perf_counter()
        batches, samples = self._rollout_phase(step)
        rollout_s = time.perf_counter() - t0
        with torch.no_grad():
            for b in batches:
                b.sample_logps = self.logp_model(b, self.cfg.rollout.temperature).detach()
        return _Pending(batches, samples, before, rollout_s)

    def sampler_state(self) -> dict[str, Any]:
        """The sampler as of the last finished step (a prefetched rollout's draws not counted)."""
        return self._pending.sampler_before if self._pending is not None else self.sampler.state()

    def reward_models_loaded(self) -> contextlib.AbstractContextManager[None]:
        """With placement.offload_reward_models the local reward models are on their device only
        inside this block; elsewhere their weights wait in pinned host memory."""
        return components.reward_models_loaded(self.cfg.placement.offload_reward_models)

    def _score(
        self,
        batches: list[RolloutBatch],
        parts: list[tuple[list[dict], list[Prompt]]],
        ctxs: list[RewardContext],
    ) -> tuple[list[Any], list[list[RewardRecord]]]:
        """Rewards of every micro-batch, each record tied to its own completion and sample."""
        results, records = [], []
        with self.reward_models_loaded():
            for batch, (samples, prompts), ctx in zip(batches, parts, ctxs):
                recs = self.records(samples, prompts, batch)
                results.append(compute_rewards(recs, self.specs, ctx, warn=False))
                records.append(recs)
        if results:  # one summary of the step's reward failures, not one per micro-batch
            log_failures(RewardResult.concat(results), self.specs, ctxs[0])
        return results, records

    # ------------------------------------------------------------------ GRPO variants (docs/algorithms.md)
    def _more_groups(self, timer: Timer, n: int) -> step_fns.Parts:
        """grpo.dynamic_sampling's extra round `n` (1, 2, ...): roll out and score new prompts."""
        with timer("rollout"):
            bs, parts = self._rollout_phase(self.step, extra=n)
        ctxs = [self.reward_ctx("train", n * len(bs) + k) for k in range(len(bs))]
        with timer("reward"):
            rs, recs = self._score(bs, parts, ctxs)
        return bs, rs, recs

    def _updates(self, batches: list[RolloutBatch], advs: list[torch.Tensor]) -> dict[str, float]:
        """grpo.num_iterations optimizer updates on this rollout. With more than one, the sampling
        policy's log-probs are computed once, before the first update (eval mode, no grad), and every
        update's importance ratio divides by them. Metrics: the mean over the updates (grad_norm and
        loss/* included), update/iterations."""
        n = self.cfg.grpo.num_iterations
        if n == 1:
            return self.update(batches, advs)
        was_training = self.model.training
        self.model.eval()
        with torch.no_grad():
            for b in batches:
                if b.sample_logps is None:  # rollout.overlap already brought the sampling policy's
                    b.sample_logps = self.logp_model(b, self.cfg.rollout.temperature).detach()
        self.model.train(was_training)
        return step_fns.mean_updates([self.update(batches, advs, step_schedule=i == n - 1) for i in range(n)])

    def train_step(self) -> dict[str, float]:
        cfg, timer = self.cfg, Timer(device=self.device)
        t0 = time.perf_counter()
        stale, rollout_s = 0.0, None
        with timer("rollout"):
            if self._pending is not None:  # sampled during the previous step (rollout.overlap)
                batches, all_samples = self._pending.batches, self._pending.samples
                stale, rollout_s = 1.0, self._pending.rollout_s
                self._pending = None
            else:
                batches, all_samples = self._rollout_phase(self.step)
        ctxs = [self.reward_ctx("train", k) for k in range(len(batches))]
        # not `self.stop_requested`: a signal may have reached this rank only, mid-step, and under
        # FSDP2 the prefetch's generate is a collective every rank must join; a stop agreed on at the
        # next step's start (`_should_stop`) discards the prefetched rollout (`sampler_state`)
        if cfg.rollout.overlap and self.step + 1 < cfg.train.steps:
            for c in ctxs:
                c.policy = NoPolicy()
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vlmgrpo-reward")
            future = self._pool.submit(self._score, batches, all_samples, ctxs)
            try:
                with timer("rollout_next"):  # runs while the rewards are computed
                    self._pending = self._prefetch(self.step + 1)
            finally:
                with timer("reward"):  # what is left of the rewards after the rollout
                    results, all_records = future.result()
        else:
            with timer("reward"):
                results, all_records = self._score(batches, all_samples, ctxs)
        all_r = torch.cat([torch.tensor(res.total, dtype=torch.float32) for res in results])
        # the step's first collective after the rewards; a rank whose reward service was given up
        # (ServiceError) joins it from _abandon_step with failed = 1, so that every rank stops here
        n_valid, n_all, n_failed = dist.all_sum(
            [float((~torch.isnan(all_r)).sum()), float(all_r.numel()), 0.0], self.dist, self.device
        )
        if n_failed:
            raise PeerServiceError(f"a reward service was given up on {n_failed:.0f} other rank(s)")
        valid_frac = n_valid / n_all  # the same on every rank, so all ranks skip or update together
        metrics = step_fns.zero_std_frac(results, cfg.rollout.group_size, self.dist, self.device)
        scored = results  # reward/* below: everything the policy sampled this step
        if cfg.grpo.dynamic_sampling and valid_frac >= cfg.grpo.min_valid_fraction:
            scored = []
            batches, results, all_records = step_fns.dynamic_sampling(
                batches,
                results,
                all_records,
                lambda n: self._more_groups(timer, n),
                cfg=cfg,
                info=self.dist,
                device=self.device,
                proc=self.proc,
                step=self.step,
                metrics=metrics,
                scored=scored,
            )
        eos = hf_rollout.eos_ids(self.proc, self.model)
        lens, truncated = step_fns.completion_lengths(batches, eos, cfg.rollout.max_new_tokens)
        with timer("advantage"):
            advs = step_fns.step_advantages(results, lens, cfg, self.dist, self.device, metrics)
        if cfg.grpo.mask_truncated:  # after the lengths and the penalty have seen the full masks
            for b, t in zip(batches, truncated):
                b.completion_mask = b.completion_mask * (~t).to(b.completion_mask.dtype)[:, None]
        if valid_frac < cfg.grpo.min_valid_fraction:
            log.warning(
                "step %d: only %.0f%% of samples got a reward; skipping the update",
                self.step,
                100 * valid_frac,
            )
            metrics["update/skipped_rewards"] = 1.0
        else:
            with timer("update"):
                metrics.update(self._updates(batches, advs))
        if (
            cfg.grpo.ref.kind == "copy"
            and cfg.grpo.ref.refresh_every
            and (self.step + 1) % cfg.grpo.ref.refresh_every == 0
        ):
            self.refresh_reference()
        # metrics: rewards over the whole step (all micro-batches; with dynamic sampling every
        # round, dropped groups included), completions over the rows trained on
        gathered = dist.gather_objects(
            (
                scored,
                [x.float().cpu() for x in lens],
                [c for b in batches for c in b.completions],
                [t.cpu() for t in truncated],
            ),
            self.dist,
        )
        step_m, n_tokens = step_fns.step_metrics(gathered)
        metrics.update(step_m)
        metrics["data/bad_samples"] = float(self.sampler.bad)
        metrics.update(timer.times)
        metrics["time/step"] = time.perf_counter() - t0
        if rollout_s is None:
            rollout_s = timer.times.get("time/rollout", 1e-9)
        metrics["tokens/s"] = n_tokens / max(1e-9, rollout_s)  # of the rollout that sampled them
        if cfg.rollout.overlap:
            metrics["overlap/stale"] = stale  # 1 = these samples came from the policy before the last update
        if (
            self.dist.is_main
            and self.runlog
            and cfg.train.log_samples_every
            and self.step % cfg.train.log_samples_every == 0
        ):
            g = cfg.rollout.group_size
            runfolder.log_samples(self.runlog, self.step, all_records[0][:g], results[0], advs[0])
        return metrics

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        cfg = self.cfg
        e = cfg.eval
        n = min(e.num_items, len(self.eval_set)) if hasattr(self.eval_set, "__len__") else e.num_items
        samples, bad = components.eval_samples(self.eval_set, n, cfg.train.seed, cfg.data.skip_bad_samples)
        prompts = [build_prompt(s, cfg) for s in samples]
        recs: list[RewardRecord] = []
        # a fixed seed per evaluation so that changes reflect the policy, not the dice
        state = torch.get_rng_state()
        torch.manual_seed(cfg.train.seed + 12345)
        for i in range(0, len(prompts), 8):
            batch = sampler_for(self.cfg, self.model).sample(
                self.model,
                self.proc,
                prompts[i : i + 8],
                e.num_chains,
                temperature=e.temperature,
                top_p=cfg.rollout.top_p,
                top_k=cfg.rollout.top_k,
                max_new_tokens=e.max_new_tokens or cfg.rollout.max_new_tokens,
                synced_gpus=self.fsdp,
            )
            part = self.records(samples[i : i + 8], prompts[i : i + 8], batch)
            for r in part:
                r.group += i
            recs += part
        torch.set_rng_state(state)
        ctx = self.reward_ctx("eval")
        with self.reward_models_loaded():
            res = compute_rewards(recs, self.specs, ctx)
            metrics = res.metrics("eval")
            metrics["eval/distinct"] = float(len({r.completion for r in recs}))
            metrics["eval/bad_samples"] = float(bad)
            for spec in self.specs:
                controls = getattr(resolve_reward(spec.name).fn, "controls", None)
                if controls is not None:
                    for k, v in controls(recs, ctx, **spec.kwargs).items():
                        metrics[f"eval/{spec.key}/{k}"] = v
        return metrics

    # ------------------------------------------------------------------ checkpoints
    def save(self) -> Path | None:
        """Checkpoint (rank 0 writes; under FSDP2 every rank first joins the gather of the full
        weights and optimizer state, so the checkpoint loads at any world size)."""
        state: dict[str, Any] = {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "sampler": self.sampler_state(),
            "nonfinite": self.nonfinite,
        }
        full_weights = None
        if self.fsdp:
            from torch.distributed.checkpoint.state_dict import (
                StateDictOptions,
                get_model_state_dict,
                get_optimizer_state_dict,
            )

            dist.reshard(self.model)  # generation leaves the root unsharded; the optimizer holds shards
            opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
            full_weights = get_model_state_dict(self.model, options=opts)
            state["optimizer"] = get_optimizer_state_dict(self.model, self.optimizer, options=opts)
            state["optimizer_format"] = "full"
        if self.ref is not None and self.ref != "adapter":
            state["ref"] = {k: v for k, v in self.ref.policy.state_dict().items()}
        path = None
        if self.dist.is_main:
            path = ckpt.save_checkpoint(
                self.out / "ckpts",
                self.step,
                {"": (self.model, self.proc, full_weights)},
                state,
                keep_last=self.cfg.train.keep_last,
                fault_hook=ckpt.fault_hook(self.step),
            )
        dist.barrier(self.dist)
        return path

    def _restore(self) -> None:
        state = ckpt.load_trainer_state(self.resume_from)
        if state.get("optimizer_format") == "full":  # written under FSDP2: keyed by parameter name
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

            set_optimizer_state_dict(
                self.model, self.optimizer, state["optimizer"], options=StateDictOptions(full_state_dict=True)
            )
        elif self.fsdp:
            raise VlmgrpoError(
                f"{self.resume_from}: written without FSDP2; resume it with train.dist_strategy=ddp"
            )
        else:
            self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.sampler.load(state["sampler"])
        if self.opt_offload is not None:  # load_state_dict put the moments on the device
            self.opt_offload.on_device = True
            self.opt_offload.offload()
        self.nonfinite = state.get("nonfinite", 0)
        if "ref" in state and self.ref is not None and self.ref != "adapter":
            self.ref.policy.load_state_dict(state["ref"])
        ckpt.set_rng_state(state["rng"])
        self.step = state["step"]

    # ------------------------------------------------------------------ the loop
    def fit(self) -> Path:
        cfg = self.cfg
        if self.dist.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            save_config(cfg, self.out / "config.yaml")
        dist.barrier(self.dist)
        # only rank 0 writes metrics and samples; the others log into a no-op
        from vlmgrpo import trackers

        self.runlog = (
            trackers.attach(RunLog(self.out, cfg.train.tensorboard), cfg, self.out)
            if self.dist.is_main
            else NullLog()
        )
        if self.resume_from is None and self.dist.is_main:
            if self.runlog.metrics_path.exists():
                runfolder.set_aside_earlier_metrics(self.out, self.runlog.metrics_path)
            runfolder.set_aside_earlier_checkpoints(self.out)
        if self.resume_from is not None:
            self._restore()
            cut = self.runlog.truncate_after(self.step)
            if self.dist.is_main:
                moved = f"; the rows past step {self.step} moved to {cut.name}" if cut else ""
                later = runfolder.set_aside_later_checkpoints(self.out, self.step)
                if later:
                    moved += f"; later checkpoints moved to {later.relative_to(self.out)}/"
                print(f"resuming from {self.resume_from.name} (step {self.step}){moved}", flush=True)
                if self.step >= cfg.train.steps:  # the loop below would not run: say so
                    print(
                        f"nothing to train: {self.resume_from.name} is at step {self.step} and train.steps "
                        f"is {cfg.train.steps}; raise it (--set train.steps=N) to continue",
                        flush=True,
                    )
        elif cfg.warmup.steps > 0:
            from vlmgrpo.warmup import warm_start

            warm_start(self)
            seed_everything(cfg.train.seed + 1)
            if self.ref is not None and self.ref != "adapter":
                # the KL reference is the policy GRPO starts from, the warm-started one; built in
                # __init__ it was a copy of the model before the warm start
                self.ref.policy.load_state_dict(self.model.state_dict())
        if self.step == 0 and cfg.train.eval_every and self.resume_from is None:
            self.runlog.log(0, "grpo", self.evaluate())
        if cfg.placement.offload_reward_models:  # loaded by the rewards' prepare(); wait on the host
            for m in components.local_reward_models():
                m.offload()
        self._install_signal_handlers()
        self.model.train()  # dropout (e.g. LoRA's) is active in the update; rollouts switch to eval
        from tqdm import tqdm

        t_start = time.time()
        # one bar, on rank 0: bars from several ranks interleave on a shared terminal or log
        bar = tqdm(
            total=cfg.train.steps,
            initial=self.step,
            desc="grpo",
            dynamic_ncols=True,
            disable=not self.dist.is_main,
        )
        steps_run, skipped, last_eval = 0, 0, None
        self._warned_flat = False
        try:
            while self.step < cfg.train.steps and not self._should_stop():
                before = {"rng": ckpt.rng_state(), "sampler": self.sampler_state()}
                try:
                    metrics = self.train_step()
                except ServiceError as e:  # raised by the rewards, so before this step's update
                    self._abandon_step(before, e)
                self.step += 1
                steps_run += 1
                skipped += int(step_fns.skipped(metrics))
                if not self._warned_flat:  # once per run
                    self._warned_flat = runfolder.warn_if_flat(metrics, self.step)
                if cfg.train.eval_every and self.step % cfg.train.eval_every == 0:
                    metrics.update(self.evaluate())
                self.runlog.log(self.step, "grpo", metrics)
                bar.update(1)
                last_eval = step_fns.finite(metrics.get("eval/reward/mean"), last_eval)
                reward = step_fns.finite(metrics.get("reward/mean"), None)
                # no "nan" on the bar: a step with no reward says "-", the last evaluation stays shown
                post = {"reward": "-" if reward is None else f"{reward:.3f}"}
                if last_eval is not None:
                    post["eval"] = f"{last_eval:.3f}"
                bar.set_postfix(post)
                if cfg.train.save_every and self.step % cfg.train.save_every == 0:
                    self.save()
                if cfg.train.max_time_s and time.time() - t_start > cfg.train.max_time_s:
                    log.warning("train.max_time_s reached at step %d", self.step)
                    break
        except BaseException:
            self._restore_signal_handlers()
            raise
        finally:
            bar.close()
            if self._pool is not None:
                self._pool.shutdown(wait=True)
                self._pool = None
        if (steps_run or self.resume_from is None) and (
            not cfg.train.save_every or self.step % cfg.train.save_every
        ):
            # (a resume that trained nothing: its checkpoint is there already, not rewritten)
            # before dropping a prefetched rollout (rollout.overlap, a stop or max_time_s): the
            # checkpoint's sampler is the one before its draws, so a resume draws those prompts again
            self.save()
        self._pending = None
        if self.stop_requested and self.dist.is_main:
            print(f"stopped at step {self.step}; {runfolder.resume_hint(self.out)}")
        self.runlog.close()
        if os.environ.get("VLMGRPO_DUMP_PARAMS"):  # tests: every rank's view of the final weights
            runfolder.dump_params(self.model, self.dist.rank, Path(os.environ["VLMGRPO_DUMP_PARAMS"]))
        dist.shutdown(self.dist, self.update_model)
        self._restore_signal_handlers()  # fit() in a notebook or a test leaves Ctrl-C working
        if steps_run and skipped == steps_run:
            # the checkpoint equals the starting model: a run that looks finished must not pass as
            # trained (scripts chain train -> eval on the exit status), so this is an error
            raise VlmgrpoError(
                f"every update of this run was skipped ({skipped} of {steps_run} steps: too few samples "
                "got a reward, or the loss was not finite), so its last checkpoint holds the weights it "
                "started from; see the warnings above and reward/*/failed in metrics.jsonl"
            )
        return self.out

    def _abandon_step(self, before: dict[str, Any], err: ServiceError) -> None:
        """A remote service is given up (down past its max_down_s, or it refused the token) during
        a step's rollout or rewards. Nothing was updated yet: rewind the RNGs and the sampler to the
        step's start, checkpoint the last finished step (the same state an uninterrupted run saves
        there, so resuming is exact) and stop with one line."""
        if self.dist.enabled:
            err = step_fns.share_failure(err, self.dist, self.device)
        ckpt.set_rng_state(before["rng"])
        self.sampler.load(before["sampler"])
        self._pending = None
        done = self.out / "ckpts" / f"ckpt-{self.step}"
        # rank 0 decides (it writes the checkpoints): save() is a collective, every rank joins or none
        missing = self.dist.is_main and not (done / ckpt.MARKER).is_file()
        if dist.all_sum([float(missing)], self.dist, self.device)[0]:
            self.save()
        dist.shutdown(self.dist, self.update_model)  # every rank is here: leave the group cleanly
        raise ServiceError(
            f"{err}; step {self.step + 1} abandoned, {done.name} saved; {runfolder.resume_hint(self.out)}"
        )

    def _should_stop(self) -> bool:
        """A signal may reach one rank only: all ranks stop together, and every rank then counts as
        stopped by it (rank 0 prints the resume line). The flag is only ever set here, never
        cleared: a signal handled during the all-reduce must not be overwritten."""
        stop = dist.all_sum([float(self.stop_requested)], self.dist, self.device)[0] > 0
        if stop:
            self.stop_requested = True
        return stop

    def _install_signal_handlers(self) -> None:
        def handler(signum: int, frame: Any) -> None:
            # finish the current step, checkpoint, exit (a second signal kills at once)
            self.stop_requested = True
            signal.signal(signum, signal.SIG_DFL)

        self._old_handlers: dict[int, Any] = {}
        with contextlib.suppress(ValueError):  # not in the main thread
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._old_handlers[sig] = signal.signal(sig, handler)

    def _restore_signal_handlers(self) -> None:
        for sig, old in getattr(self, "_old_handlers", {}).items():
            with contextlib.suppress(ValueError, TypeError):
                signal.signal(sig, old)
        self._old_handlers = {}


def train(cfg: Config, resume: str | None = None) -> Path:
    return Trainer(cfg, resume).fit()


# the names these helpers had while they lived here (tests and user code import them from here)
_select_result, _mean_updates = step_fns.select_result, step_fns.mean_updates
_skipped, _finite, _PeerServiceError = step_fns.skipped, step_fns.finite, PeerServiceError
_check_reward_call = check_reward_call


__all__ = ["Components", "Trainer", "train"]
