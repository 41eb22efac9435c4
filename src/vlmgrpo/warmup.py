"""Optional supervised warm start before GRPO (metrics rows with phase "warmup").

Why: pure GRPO from a random tiny policy collapses to one repeated token before any reward signal
appears (see docs/demo.md). A short supervised phase on the dataset's target text (e.g. the
ground-truth description) gives GRPO a policy that samples varied, partly grounded outputs.
It stops at `warmup.steps`, or earlier once held-out reward reaches
`stop_at_ceiling_fraction` x the ceiling with at least `min_distinct` distinct outputs: a target
on held-out behaviour rather than a step count, so every seed starts GRPO from a comparable place.

Staged targets: `target_field` may list stages, "field:steps,field:steps,...,field" (the last
stage runs for the remaining steps). A stage's field is a sample field, or a derived target from
`DERIVED_TARGETS` (e.g. `scene_colors`: "a red shape and a blue shape" from a scenes sample).
Why: the demo's tiny model, trained on full descriptions from the start, learns size and position
(ink amount and place) and never colour; a short colour-only stage first makes it read colour,
and the full-description stage then keeps it (docs/demo.md).

A stage may alternate fields step by step, "a|b" (step 1 a, step 2 b, ...). Some derived targets
come with a prompt of their own (`DERIVED_PROMPTS`): `geometry_blind` is the Vision-SR1 blind
pass's text-only prompt (the recipe's `geometry_blind` template, the scan built from the diagram's
relations) with "<think>x = V</think><answer>V</answer>" as its target. Why: the blind pass asks
the policy a prompt it never saw otherwise, and a tiny model then never answers it correctly
(docs/geometry.md); `geometry_sr1|geometry_blind` teaches both prompts in one stage.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from vlmgrpo.rollout import RolloutBatch
from vlmgrpo.rollout.hf import encode_prompts, tokenizer_of

if TYPE_CHECKING:
    from vlmgrpo.config import WarmupConfig
    from vlmgrpo.trainer import Trainer


def _scene_colors(sample: dict) -> str:
    """Colour-only text of a scenes sample: one "a <colour> shape" per object, joined by "and"."""
    return " and ".join(f"a {o['color']} shape" for o in sample["scene"]["objects"])


def _scene_shapes(sample: dict) -> str:
    """Colour-and-shape text of a scenes sample: one "a <colour> <shape>" per object, joined by "and"."""
    return " and ".join(f"a {o['color']} {o['shape']}" for o in sample["scene"]["objects"])


def _geometry_sr1(sample: dict) -> str:  # scan/think/answer after the "<scan>" prefill
    from vlmgrpo.data.geometry_synthetic import sr1_target

    return sr1_target(sample)


def _geometry_blind(sample: dict) -> str:
    """The blind pass's target: "<think>x = V</think><answer>V</answer>" (no prefill there)."""
    from vlmgrpo.data.geometry_synthetic import sr1_target

    return sr1_target(sample).split("</scan>", 1)[1]


def _geometry_blind_prompt(sample: dict, cfg: Any) -> Any:
    """The blind pass's text-only prompt for `sample`: the recipe's `geometry_blind` reward
    template (else the reward's default) around the scan that `sr1_target` writes."""
    from vlmgrpo.data.geometry_synthetic import sr1_target
    from vlmgrpo.rewards.geometry import DEFAULT_BLIND_TEMPLATE, blind_prompt
    from vlmgrpo.rollout import Prompt

    spec = next((r for r in cfg.rewards if r.name == "geometry_blind"), None)
    kw = dict(spec.kwargs or {}) if spec is not None else {}
    scan = sr1_target(sample).split("</scan>", 1)[0]
    messages = blind_prompt(scan, sample, kw.get("template", DEFAULT_BLIND_TEMPLATE), kw.get("system", ""))
    return Prompt(messages=messages, images=[], prefill="")


AREA_COARSE_STEP = 100.0  # `area_coarse` rounds the true area to this many square units


def _area_coarse(sample: dict) -> str:
    """The area task's format with the true area rounded to AREA_COARSE_STEP: "<reasoning>circle
    </reasoning><answer>700.00</answer>". Why coarse: a few answer values the tiny model can tell
    apart, and room for GRPO to improve on the rounding (docs/area.md)."""
    area = round(float(sample["answer"]) / AREA_COARSE_STEP) * AREA_COARSE_STEP
    return f"<reasoning>{sample['shape']}</reasoning><answer>{area:.2f}</answer>"


DERIVED_TARGETS: dict[str, Callable[[dict], str]] = {
    "scene_colors": _scene_colors,
    "scene_shapes": _scene_shapes,
    "geometry_sr1": _geometry_sr1,
    "area_coarse": _area_coarse,
    "geometry_blind": _geometry_blind,
}
# Derived targets trained under a prompt of their own, not the recipe's (sample, cfg) -> Prompt.
DERIVED_PROMPTS: dict[str, Callable[[dict, Any], Any]] = {"geometry_blind": _geometry_blind_prompt}


def target_text(sample: dict, field: str) -> str:
    if field in sample or field not in DERIVED_TARGETS:
        return str(sample[field])
    return DERIVED_TARGETS[field](sample)


def parse_stages(spec: str, total: int) -> list[tuple[str, int]]:
    """ "a:100,b:50,c" -> [("a", 100), ("b", 150), ("c", total)] (cumulative end steps)."""
    stages, end = [], 0
    for part in [p.strip() for p in spec.split(",") if p.strip()]:
        name, _, n = part.partition(":")
        end = end + int(n) if n else total
        stages.append((name, min(end, total)))
    if not stages or stages[-1][1] < total:
        stages.append((stages[-1][0] if stages else "description", total))
    return stages


def field_at(stages: list[tuple[str, int]], step: int) -> str:
    """The target field of warm-start `step` (1-based) under `parse_stages`' stages; a stage
    "a|b" alternates its fields step by step (a on its odd steps, counted from step 1)."""
    spec = next((name for name, end in stages if step <= end), stages[-1][0])
    alternatives = spec.split("|")
    return alternatives[(step - 1) % len(alternatives)]


def sft_batch(tr: Trainer, samples: list[dict], field: str) -> RolloutBatch:
    """Prompt tokens as in a rollout + the target text (and `<|im_end|>`) as the 'completion'."""
    from vlmgrpo.sampling import build_prompt

    own = DERIVED_PROMPTS.get(field)
    prompts = [own(s, tr.cfg) if own else build_prompt(s, tr.cfg) for s in samples]
    enc, vision_rows = encode_prompts(tr.proc, prompts, 1, tr.device)
    tok = tokenizer_of(tr.proc)
    end = "<|im_end|>" if "<|im_end|>" in tok.get_vocab() else (tok.eos_token or "")
    side = tok.padding_side
    tok.padding_side = "right"
    tgt = tok(
        [target_text(s, field) + end for s in samples],
        padding=True,
        return_tensors="pt",
        add_special_tokens=False,
    )
    tok.padding_side = side
    extra = {k: v for k, v in enc.items() if k in ("mm_token_type_ids", "token_type_ids")}
    return RolloutBatch(
        prompt_ids=enc["input_ids"],
        prompt_mask=enc["attention_mask"],
        completion_ids=tgt["input_ids"].to(tr.device),
        completion_mask=tgt["attention_mask"].to(tr.device),
        vision_rows=vision_rows,
        prompt_extra=extra,
        completions=[target_text(s, field) for s in samples],
    )


def warm_start(tr: Trainer) -> None:
    w = tr.cfg.warmup
    params = [p for p in tr.model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=w.lr, weight_decay=0.0)
    rng = np.random.default_rng(tr.cfg.train.seed + 7)
    stages = parse_stages(w.target_field, w.steps)
    t0 = time.perf_counter()
    from tqdm import tqdm

    # its own bar: the warm start can take as long as GRPO (the demo: up to 800 steps)
    bar = tqdm(total=w.steps, desc="warm start", dynamic_ncols=True, disable=not tr.dist.is_main)
    try:
        _warm_steps(tr, w, params, opt, rng, stages, t0, bar)
    finally:
        bar.close()


def _warm_steps(
    tr: Trainer,
    w: WarmupConfig,
    params: list[torch.Tensor],
    opt: torch.optim.Optimizer,
    rng: np.random.Generator,
    stages: list[tuple[str, int]],
    t0: float,
    bar: Any,
) -> None:
    last_eval = None
    for step in range(1, w.steps + 1):
        field = field_at(stages, step)
        if hasattr(tr.train_set, "sample"):  # streaming (e.g. the area task): a fresh image each time
            drawn = [tr.train_set.sample(rng) for _ in range(w.batch_size)]
        else:
            drawn = [tr.train_set[int(i)] for i in rng.integers(len(tr.train_set), size=w.batch_size)]
        batch = sft_batch(tr, drawn, field)
        logps = tr.update_model(batch, 1.0)  # through DDP/FSDP when distributed
        mask = batch.completion_mask.to(logps.dtype)
        loss = -(logps * mask).sum() / mask.sum()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        metrics = {"warmup/loss": loss.item(), "time/elapsed": time.perf_counter() - t0}
        done = step == w.steps
        # the stop criterion applies in the last stage only (earlier stages train partial targets)
        last_stage = step > (stages[-2][1] if len(stages) > 1 else 0)
        if w.eval_every and last_stage and (step % w.eval_every == 0 or done):
            ev = tr.evaluate()
            metrics.update(ev)
            ceiling = next((v for k, v in ev.items() if k.endswith("/ceiling")), None)
            reached = (
                ceiling is not None
                and w.stop_at_ceiling_fraction > 0
                and (
                    ev["eval/reward/mean"] >= w.stop_at_ceiling_fraction * ceiling
                    and ev["eval/distinct"] >= w.min_distinct
                )
            )
            done = done or reached
        tr.runlog.log(step, "warmup", metrics)
        bar.update(1)
        if np.isfinite(metrics.get("eval/reward/mean", np.nan)):
            last_eval = metrics["eval/reward/mean"]
        post = {"loss": f"{metrics['warmup/loss']:.3f}"}
        if last_eval is not None:  # the last held-out check stays shown; never "nan"
            post["eval"] = f"{last_eval:.3f}"
        bar.set_postfix(post)
        if done:
            break
