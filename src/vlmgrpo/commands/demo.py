"""The embedded offline demos: a tiny real-architecture model, a warm start, GRPO on a task's own
rewards, held-out evaluation against the ceiling, plots and report (`vlmgrpo demo --task T`).

- `cycle` (the default, `make demo`): build a tiny Qwen3-VL, warm-start it, run cycle-consistency
  GRPO on synthetic scenes, and report held-out similarity against the ceiling and the shuffled
  control. The text-to-image model is the procedural renderer, the embedder the pixel similarity.
  Then the transfer check: the base model and every checkpoint answer questions about held-out
  scenes (`scenes-qa`, graded by rules); pass@1 per model goes to summary.json's `transfer`.
- `geometry`, `area`, `img2code`: the task's offline recipe (`TASKS`) on data this command writes
  (synthetic Geometry3K diagrams, the area task's own stream, img2code's short bar charts). Then the
  base model and every checkpoint go through `vlmgrpo eval`'s task evaluation (the task's own,
  with the run's eval settings, the cheap ones its held-out curve uses); the headline per model
  goes to summary.json's `ckpt_eval`, the results to ckpt_tests/ (the report's checkpoint table).

Each seed's folder gets summary.json: `metric` (the held-out reward that measures the task, never a
format reward), `first_grpo_eval`, `last3_eval_mean`, `ceiling` (that reward of the reference
answers: true descriptions, answers, areas, code), `shuffled` (the references given to the wrong
items: what ignoring the image earns; the policy's descriptions against the wrong images for
cycle) and `gap_closed` = (last3 - first) / (ceiling - first). Everything is offline.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from vlmgrpo.errors import ConfigError
from vlmgrpo.tasks.scene_qa_eval import SCENE_QA_DEFAULTS

# How `vlmgrpo demo` builds its tiny model (docs/demo.md). Two fixed parts of the vision tower
# stand in for what a pretrained encoder would see from the start:
# - `colour_filters`: that many of the patch-embedding filters (out of 32) are set to per-channel
#   means of the patch (filter o reads channel o % 3), scaled by `colour_filter_gain`, instead of
#   random weights. Why: a random tiny vision tower never learned to tell colours apart under
#   supervised training (it learned size and position only), and colour is what the pixel
#   similarity rewards most.
# - `position_code`: the last `POSITION_DIMS` vision channels carry a fixed one-hot code of the
#   image third a patch lies in (left / middle / right column, top / middle / bottom row), scaled by
#   `position_code`, through the absolute position table of Qwen3-VL's vision tower (which is why
#   the demo uses Qwen3-VL: Qwen2.5-VL's tower has no absolute positions, only relative RoPE). Why:
#   with Qwen2.5-VL the warm-started policy of seeds 2 and 3 never read position, the largest part
#   of the gap to the ceiling, and GRPO did not teach it; with the code it reads position (~1.0).
# - `shape_filters` (off in DEMO_MODEL; on in SHAPE_FILTERS_MODEL, the cycle demo's model): the
#   SHAPE_DIMS filters after the colour filters become fixed shape templates (`shape_templates`),
#   scaled to answer ~ +-`shape_filters`. Why: each object's centre falls on the shared corner of
#   the 4 patches of its cell's merged token, so each patch holds one quadrant of it, and
#   per-channel means see how much ink a quadrant has, not its outline (a linear probe on the
#   untrained tower's tokens: shape 0.50 without the templates, 0.96 with them). The templates take
#   6 of the colour filters (24 -> 18). They pay only with the tower frozen (`DEMO_OVERRIDES`).
DEMO_MODEL: dict = {
    "arch": "qwen3_vl",
    "seed": 0,
    "colour_filters": 24,
    "colour_filter_gain": 2.0,
    "position_code": 4.0,
}
# 18 colour filters + 8 shape templates (docs/demo.md, "Shape").
SHAPE_FILTERS_MODEL: dict = {**DEMO_MODEL, "colour_filters": 18, "shape_filters": 4.0}
# The cycle demo's model (`vlmgrpo demo`, `make demo`; `--no-shape-filters` gives DEMO_MODEL, the
# demo's model until 2026-12-05, which did not learn shape within the demo's budget). Recipes that build `demo` (the `demo`
# and `adversarial` recipes, offline.py) keep DEMO_MODEL, as measured there.
CYCLE_MODEL: dict = SHAPE_FILTERS_MODEL
SHAPE_DIMS = 8  # channels of `shape_filters`: (square, triangle) minus circle x 4 patch corners
POSITION_DIMS = 6
# Settings `vlmgrpo demo` puts on top of the `demo` recipe (before any --set); the recipe keeps its
# cheaper values so that `vlmgrpo train --recipe demo` (and the tests and the adversarial recipe
# built on it) stay as they were measured.
# - a frozen vision tower: its fixed front end (colour filters, shape templates, position code)
#   already holds what the scenes need, and a trainable tower trades one attribute for another:
#   with it, each seed's warm start learned shape or position late and at random (once shape was
#   read, position took 400-800 more steps, and GRPO then never taught it); frozen, every seed reads
#   shape by the end of the shape stage and starts on position, which the warm start (stopped at
#   0.55 x ceiling) leaves partly read for GRPO (docs/learning.md, "Cycle").
# - the warm start's first stage targets "a red circle" (colour and shape) instead of "a red shape":
#   after a colour-only stage shape came slowly (seed 2: not in 1,200 steps).
# - group_size 16: more position words tried per image in a group; with 8, seed 1 closed 16% of
#   the gap, with 16, 47% (docs/demo.md).
# - a k3 KL to the warm-started policy (grpo.beta 0.15, a frozen copy taken after the warm start):
#   without it the policy drifted to one shape word ("circle") while it could not read shape, and a
#   group then has no contrast left to reward (docs/demo.md, "Shape").
# - lr 5e-4 and 600 GRPO steps: at 500 seed 1's held-out curve still rose (61% of the gap).
DEMO_OVERRIDES: tuple[str, ...] = (
    "model.freeze_vision=true",
    "warmup.target_field=scene_shapes:400,description",
    "rollout.group_size=16",
    "grpo.beta=0.15",
    "grpo.ref.kind=copy",
    "optim.lr=5e-4",
    "train.steps=600",
)


def _set_position_code(visual: Any, gain: float) -> None:
    """The last POSITION_DIMS channels of the vision tower's input: zero patch filters plus
    `gain` x one-hot (column third, row third) from the absolute position table `pos_embed` (a
    square grid that Qwen3-VL interpolates to each image's patch grid); the rest of the table is
    zeroed, so the other channels carry patch content only."""
    import torch

    pe = visual.pos_embed.weight  # [n * n, D]
    n = int(round(pe.shape[0] ** 0.5))
    t = torch.linspace(0.0, 1.0, n)  # align_corners: table row/column k sits at k / (n - 1)
    y, x = torch.meshgrid(t, t, indexing="ij")
    left, right, top, bottom = x < 1 / 3, x > 2 / 3, y < 1 / 3, y > 2 / 3
    parts = [left, ~(left | right), right, top, ~(top | bottom), bottom]
    code = torch.stack(parts, -1).reshape(n * n, POSITION_DIMS).to(pe.dtype)
    d = pe.shape[1]
    pe.zero_()
    pe[:, d - POSITION_DIMS :] = gain * code
    proj = visual.patch_embed.proj
    proj.weight[d - POSITION_DIMS :] = 0.0
    if proj.bias is not None:
        proj.bias[d - POSITION_DIMS :] = 0.0


def shape_templates(patch: int = 16, side: int = 96) -> list:
    """SHAPE_DIMS zero-mean [patch, patch] numpy templates that tell the scenes' three shapes apart
    in the quadrant of an object a patch holds: for each patch corner the object's centre can sit
    on (TL, TR, BL, BR, in that order), square coverage minus circle coverage, then triangle
    coverage minus circle coverage, averaged over both sizes and the jitter (`data/scenes.py`'s
    geometry drawn at `side` px, the demo's 84 px images as the processor resizes them)."""
    import numpy as np

    from vlmgrpo.data.scenes import JITTER, RADIUS

    ss = 4
    g = (np.arange(patch * ss) + 0.5) / ss
    x, y = np.meshgrid(g, g)
    js = np.linspace(-JITTER * side, JITTER * side, 5)

    def cover(shape: str, cx: float, cy: float) -> np.ndarray:
        acc = np.zeros_like(x)
        for size in ("small", "large"):
            r = RADIUS[size] * side
            for jx in js:
                for jy in js:
                    dx, dy = x - (cx + jx), y - (cy + jy)
                    if shape == "circle":
                        m = dx**2 + dy**2 < r**2
                    elif shape == "square":
                        m = (abs(dx) < 0.85 * r) & (abs(dy) < 0.85 * r)
                    else:
                        m = (dy > -r) & (dy < r) & (abs(dx) < (r + dy) / 2)
                    acc += m
        return acc.reshape(patch, ss, patch, ss).mean((1, 3)) / (2 * len(js) ** 2)

    out = []
    for cx, cy in ((0, 0), (patch, 0), (0, patch), (patch, patch)):
        circle = cover("circle", cx, cy)
        for other in ("square", "triangle"):
            t = cover(other, cx, cy) - circle
            out.append(t - t.mean())
    return out


def build_demo_model(model_dir: Path, spec: dict = DEMO_MODEL) -> Path:
    """Build the demo's tiny VLM (`spec["arch"]`) in `model_dir` (rebuilt when `spec` changed)."""
    import torch

    from vlmgrpo.models.tiny import build_tiny_vlm

    marker = model_dir / "demo_model.json"
    if (model_dir / "config.json").is_file() and marker.is_file() and json.loads(marker.read_text()) == spec:
        return model_dir
    if spec.get("position_code") and spec["arch"] != "qwen3_vl":
        raise ValueError("position_code needs the absolute position table of arch 'qwen3_vl'")
    build_tiny_vlm(model_dir, arch=spec["arch"], seed=spec["seed"])
    if spec.get("colour_filters") or spec.get("position_code"):
        from transformers import AutoModelForImageTextToText

        model = AutoModelForImageTextToText.from_pretrained(str(model_dir))
        visual = model.model.visual
        w = visual.patch_embed.proj.weight  # [D, 3, T, P, P]
        with torch.no_grad():
            for o in range(min(int(spec.get("colour_filters", 0)), w.shape[0])):
                w[o] = 0.0
                w[o, o % 3] = spec["colour_filter_gain"] / w[o, 0].numel()  # mean of channel o % 3
            if spec.get("shape_filters"):
                start = int(spec.get("colour_filters", 0))
                if start + SHAPE_DIMS > w.shape[0] - POSITION_DIMS:
                    raise ValueError("demo model: colour + shape filters overlap the position code")
                for k, t in enumerate(shape_templates(w.shape[-1])):
                    t = torch.as_tensor(t, dtype=w.dtype)
                    # ink lowers every channel: a negative weight on all of them, normalised so that
                    # an ideal quadrant of strong ink (3 channels x 2 frames) answers ~ +-gain
                    w[start + k] = -float(spec["shape_filters"]) * t / (6 * t.abs().sum() / 2)
            if spec.get("position_code"):
                _set_position_code(visual, float(spec["position_code"]))
        model.save_pretrained(str(model_dir))
        from vlmgrpo.checkpoint import plain_modes

        plain_modes(model_dir)  # safetensors writes 0600; the rest follows the umask
    marker.write_text(json.dumps(spec))
    print(f"built the demo's tiny {spec['arch']} model in {model_dir}")
    return model_dir


# ------------------------------------------------------------------------------------ tasks


def _geometry_reference(sample: dict) -> str:
    from vlmgrpo.data.geometry_synthetic import sr1_target

    return "<scan>" + sr1_target(sample)  # the recipe's prefill + the warm start's target


def _area_reference(sample: dict) -> str:
    return f"<reasoning>the area</reasoning><answer>{float(sample['answer']):.2f}</answer>"


def _img2code_reference(sample: dict) -> str:
    return f"```python\n{sample['reference_code']}\n```"


def _geometry_data(out: Path, seed: int) -> list[str]:
    from vlmgrpo.data.geometry_synthetic import GIVEN_KINDS, write

    data = out / "data-given"  # not "data": earlier demo folders hold the diagram-only kinds there
    if not (data / "train").is_dir():
        write(data, n=400, n_eval=32, seed=0, kinds=tuple(GIVEN_KINDS))
    return [f"data.kwargs.path={data}"]


IMG2CODE_FIGURES = 240  # the demo's short bar charts: 192 training, 24 eval, 24 held-out figures


def _img2code_data(out: Path, seed: int) -> list[str]:
    from vlmgrpo.data.img2code import create_sample

    data = out / "data-short"
    if not (data / "dataset.jsonl").is_file():
        create_sample(str(data), IMG2CODE_FIGURES, 0, (0.8, 0.1, 0.1), family="short")
    return [f"data.kwargs.path={data}"]


# The img2code demo (docs/img2code.md, docs/learning.md): the short family of two-line bar charts
# (`data.img2code.FAMILIES["short"]`: colour, number of bars and heights to read from the image).
# The warm start teaches the code and the bars but not the colour (`colour_blind_code`: the
# reference with a colour drawn apart from the figure). GRPO then samples at temperature 1.0
# (training and evaluation alike), where a third to a half of the warm-started policy's programs
# fail: what GRPO learns, through the real sandboxed reward, is to write programs that run and draw
# the right number of bars at that temperature (32% / 26% / 42% of the gap on seeds 1 / 2 / 3; the
# colour stays at chance). At 0.7 the warm-started policy already ran
# 83-100% of its programs and GRPO had too little to raise (28% / -13% / 3% of the gap in 48 steps;
# 100-200-step tries at 0.7 with other lr, prompts, image size, KL or PPO epochs stayed within
# +-0.03 or fell: docs/learning.md). 200 steps of 4 figures x 8 programs fit the 10 minutes since
# the sandbox's zygote (~50 ms a program instead of ~0.4 s). The model is the cycle demo's (colour
# filters: a random tiny vision tower does not tell colours apart).
IMG2CODE_OVERRIDES: tuple[str, ...] = (
    "prompt.user=Write matplotlib code that draws this image.",
    "model.lora.enabled=false",  # the recipe's LoRA (for 8B on a GPU) left the tiny model unable to learn
    "grpo.beta=0.0",  # no reference model: nothing pretrained to stay near
    "grpo.ref.kind=none",
    "grpo.aggregation=dapo",
    "optim.weight_decay=0.0",
    "data.image_max_side=128",
    "data.kwargs.max_side=128",
    "warmup.steps=200",
    "warmup.lr=2e-3",
    "warmup.batch_size=16",
    "warmup.target_field=colour_blind_code",
    "warmup.eval_every=0",
    "rollout.group_size=8",
    "rollout.prompts_per_step=4",
    "rollout.max_new_tokens=40",
    "rollout.temperature=1.0",
    "optim.lr=3e-4",
    "train.steps=200",
    "eval.num_items=24",
    "eval.num_chains=4",
    "eval.temperature=1.0",
    "train.eval_every=25",
    "train.save_every=100",
    "train.log_samples_every=25",
)


@dataclass(frozen=True)
class DemoTask:
    """One offline demo: which recipe, which tiny model, which data, and what measures it."""

    recipe: str
    metric: str  # the reward label (or label/sub-score) whose held-out mean measures the task
    arch: str = "qwen3_vl"  # the tiny model (`vlmgrpo tiny-model --arch`); cycle builds its model_spec
    overrides: tuple[str, ...] = ()  # on top of the recipe, before the user's --set
    data: Callable[[Path, int], list[str]] | None = None  # writes the data, returns --set overrides
    reference: Callable[[dict], str] | None = None  # a held-out item's reference completion
    model_spec: dict | None = None  # build_demo_model's spec instead of a plain tiny `arch` model


# The area demo's warm start (docs/area.md): the task's format with the true area rounded to 100
# (`area_coarse`), so the correctness reward has spread within groups from the first GRPO step; a
# pure-GRPO policy never wrote a valid number in 400 steps. GRPO then runs at a warm-started lr.
# Evaluation: 64 held-out shapes x 2 sampled answers (temperature 1.0) instead of the recipe's 16
# greedy ones, whose answer jumps between the warm start's values (docs/area.md: tries 1 and 3).
AREA_OVERRIDES: tuple[str, ...] = (
    "warmup.steps=300",
    "warmup.lr=2e-3",
    "warmup.batch_size=16",
    "warmup.target_field=area_coarse",
    "warmup.eval_every=100",
    "optim.lr=5e-4",
    "rollout.prompts_per_step=4",
    "data.kwargs.n=64",
    "eval.num_items=64",
    "eval.num_chains=2",
    "eval.temperature=1.0",
)
# The geometry demo (docs/geometry.md "Offline"): questions whose answer follows from the givens in
# their text (`GIVEN_KINDS`: the tiny model cannot read a diagram's digits), and a warm start that
# alternates the SR1 prompt with the blind pass's text-only prompt (`geometry_sr1|geometry_blind`),
# so that the blind pass can succeed. The warm start is kept short (300 steps: held-out accuracy
# ~0.15 on seed 1; 350 steps already gave 0.43): it teaches the format and some answers, GRPO the
# rest. 4 prompts x 8 per step: more groups with both right and wrong answers. lr 3e-4 (1e-3
# collapsed to empty answers within 60 steps; 5e-4 lost accuracy on seeds 1 and 3 in 75 steps).
# 350 GRPO steps: with 200 / 300, seed 3 closed only 10% / 19.8% of the gap, still rising (350:
# 23%; seeds 1, 2: 31% / 37% / 34% and 26% / 42% / 50%).
# 32 held-out items x 4 samples per evaluation.
GEOMETRY_OVERRIDES: tuple[str, ...] = (
    "warmup.target_field=geometry_sr1|geometry_blind",
    "warmup.steps=300",
    "rollout.prompts_per_step=4",
    "train.steps=350",
    "eval.num_items=32",
)
# Demo budgets: what each task's recipe runs under `vlmgrpo demo` (the recipes stay as they are).
_EVERY = ("train.eval_every=25", "train.save_every=100", "train.log_samples_every=25")
TASKS: dict[str, DemoTask] = {
    "cycle": DemoTask("demo", "similarity", overrides=DEMO_OVERRIDES, model_spec=CYCLE_MODEL),
    "geometry": DemoTask(
        "geometry-tiny",
        "accuracy",
        overrides=(*GEOMETRY_OVERRIDES, *_EVERY),
        data=_geometry_data,
        reference=_geometry_reference,
    ),
    "area": DemoTask(
        "area-tiny",
        "area_correctness",
        arch="qwen2_5_vl",
        overrides=(*AREA_OVERRIDES, *_EVERY),
        reference=_area_reference,
    ),
    "img2code": DemoTask(
        "img2code-tiny",
        "img2code/similarity",
        overrides=IMG2CODE_OVERRIDES,
        data=_img2code_data,
        reference=_img2code_reference,
        model_spec=DEMO_MODEL,
    ),
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--task", default="cycle", choices=list(TASKS), help="which offline demo (default: cycle)")
    p.add_argument(
        "--output-dir", default=None, help="where the model and the run(s) go (default runs/demo[-TASK])"
    )
    p.add_argument("--seeds", default="1", help="comma-separated seeds; one run folder per seed")
    p.add_argument(
        "--shape-filters",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="cycle only: the tiny model's vision front end has fixed shape templates "
        "(default: on, SHAPE_FILTERS_MODEL; --no-shape-filters: DEMO_MODEL, whose tower barely sees shape)",
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a value of the task's recipe (repeatable)",
    )


def _eval_rows(run: Path, metric: str) -> list[dict]:
    from vlmgrpo.runlog import read_metrics

    key = f"eval/{metric}/mean"
    return [r for r in read_metrics(run / "metrics.jsonl") if r.get("phase") == "grpo" and key in r]


def gap_closed(first: float, last: float, ceiling: float) -> float:
    """Fraction of the distance from the first GRPO evaluation to the ceiling covered (NaN when
    the first evaluation is already at or above the ceiling)."""
    return (last - first) / (ceiling - first) if ceiling > first else float("nan")


def summarize(
    run: Path, metric: str = "similarity", ceiling: float | None = None, shuffled: float | None = None
) -> dict:
    """Held-out numbers of a demo run: the first GRPO evaluation of `eval/<metric>/mean`, the mean
    of the last three, the ceiling and shuffled control (given, or logged by the reward as
    `eval/<metric>/ceiling` and `.../shuffled`), and the fraction of the gap to the ceiling closed."""
    rows = _eval_rows(run, metric)
    if not rows:
        return {}
    key = f"eval/{metric}/mean"
    first, last3 = rows[0], rows[-3:]
    mean = lambda k, rs: sum(r[k] for r in rs) / len(rs)  # noqa: E731
    start, end = first[key], mean(key, last3)
    if ceiling is None:
        ceiling = mean(f"eval/{metric}/ceiling", rows)
    # `last3_evals`: how many evaluations the mean has (fewer than 3 in a short run, where it
    # then includes the first)
    out = {"metric": key, "first_grpo_eval": start, "last3_eval_mean": end, "last3_evals": len(last3)}
    out["ceiling"] = ceiling
    if shuffled is None and f"eval/{metric}/shuffled" in last3[-1]:
        shuffled = mean(f"eval/{metric}/shuffled", last3)
        out["shuffled_last3"] = shuffled  # the name earlier summaries used
    if shuffled is not None:
        out["shuffled"] = shuffled
    out["gap_closed"] = gap_closed(start, end, ceiling)
    out["grpo_steps"] = rows[-1]["step"]
    return out


def reference_scores(cfg: Any, metric: str, reference: Callable[[dict], str]) -> tuple[float, float]:
    """(ceiling, shuffled) of `metric` on the held-out items the trainer evaluates (the first
    `eval.num_items` of split "test"): the reward of each item's reference completion, and of the
    next item's reference given to it (the references' own answer prior, blind to the image)."""
    import numpy as np

    from vlmgrpo.data import build_dataset
    from vlmgrpo.rewards.base import RewardContext, RewardRecord, RewardSpec, compute_rewards

    name, _, sub = metric.partition("/")
    spec = next((r for r in cfg.rewards if (r.label or r.name) == name), None)
    if spec is None:
        raise ValueError(f"demo: the recipe has no reward labelled '{name}'")
    kw = {"max_side": cfg.data.image_max_side, **(cfg.data.eval_kwargs or cfg.data.kwargs)}
    ds = build_dataset(cfg.data.eval_dataset or cfg.data.dataset, kw, "test", cfg.train.seed)
    if hasattr(ds, "__len__"):
        items = [ds[i] for i in range(min(cfg.eval.num_items, len(ds)))]
    else:
        rng = np.random.default_rng(cfg.train.seed + 1)  # the trainer's fixed draw from a stream
        items = [ds.sample(rng) for _ in range(cfg.eval.num_items)]
    refs = [reference(s) for s in items]
    specs = [RewardSpec(spec.name, 1.0, spec.kwargs, name)]
    ctx = RewardContext(phase="eval", seed=cfg.train.seed)

    def score(texts: list[str]) -> float:
        recs = [
            RewardRecord(prompt="", completion=t, images=list(s.get("images") or []), sample=s, group=i)
            for i, (t, s) in enumerate(zip(texts, items))
        ]
        res = compute_rewards(recs, specs, ctx)
        return res.metrics("eval")[f"eval/{metric}/mean"]

    return score(refs), score(refs[1:] + refs[:1])


# The transfer check of the cycle demo: questions about its held-out scenes (`scenes-qa`,
# data/scene_qa.py), answered by the base model and every checkpoint under a question prompt,
# graded by rules. 32 scenes x 3 questions x 4 sampled answers at the demo's eval temperature: the
# task's defaults in `vlmgrpo eval` (the same dict).
TRANSFER_EVAL = SCENE_QA_DEFAULTS


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def transfer_check(run_dir: Path) -> dict:
    """pass@1 of the base model and every checkpoint of `run_dir` on `scenes-qa` (results in
    ckpt_tests/, as `vlmgrpo eval --task scenes-qa` writes them), overall and per attribute, and
    the share of the policy's own descriptions (the demo's prompt) naming each attribute right."""
    from vlmgrpo.evaluate import EvalOptions, evaluate_run

    results = evaluate_run(
        run_dir, EvalOptions(task="scenes-qa", force=True, **TRANSFER_EVAL), echo=lambda line: None
    )
    return {
        "task": "scenes-qa",
        "questions": results[0]["graded"] // TRANSFER_EVAL["num_samples"] if results else 0,
        "pass@1": {r["name"]: r.get("pass@1") for r in results},
        "by_attribute": {r["name"]: {a: r.get(a) for a in ("colour", "shape", "position")} for r in results},
        "describe": {r["name"]: (r.get("describe") or {}).get("by_attribute") for r in results},
        "chance": {a: v["chance"] for a, v in (results[0].get("by_attribute") or {}).items()}
        if results
        else {},
    }


def checkpoint_eval(run_dir: Path) -> dict:
    """The headline (pass@1, else score) of the base model and every checkpoint of `run_dir` on the
    run's own eval task with the run's eval settings (results in ckpt_tests/, as `vlmgrpo eval`
    writes them)."""
    from vlmgrpo.evaluate import EvalOptions, evaluate_run

    results = evaluate_run(run_dir, EvalOptions(force=True), echo=lambda line: None)
    head = lambda r: r.get("pass@1", r.get("score"))  # noqa: E731
    return {
        "task": results[0]["task"] if results else "",
        "metric": results[0].get("metric", "") if results else "",
        "scores": {r["name"]: head(r) for r in results},
    }


def _build_model(task: DemoTask, model_dir: Path) -> Path:
    if task.recipe == "demo" or task.model_spec:
        return build_demo_model(model_dir, task.model_spec or DEMO_MODEL)
    from vlmgrpo.models.tiny import build_tiny_vlm

    if not (model_dir / "config.json").is_file():
        build_tiny_vlm(model_dir, arch=task.arch, seed=0)
    return model_dir


def run(args: argparse.Namespace) -> int:
    from vlmgrpo.config import load_config
    from vlmgrpo.trainer import Trainer

    task = TASKS[args.task]
    shape_filters = getattr(args, "shape_filters", None)
    if shape_filters is not None:
        if args.task != "cycle":
            raise ConfigError(
                f"demo --[no-]shape-filters: the cycle task's model only, not --task {args.task}"
            )
        task = replace(task, model_spec=SHAPE_FILTERS_MODEL if shape_filters else DEMO_MODEL)
    out = Path(args.output_dir or ("runs/demo" if args.task == "cycle" else f"runs/demo-{args.task}"))
    model_dir = _build_model(task, out / "model")
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    summaries = {}
    for seed in seeds:
        run_dir = out if len(seeds) == 1 else out / f"seed-{seed}"
        data_sets = task.data(out, seed) if task.data else []
        cfg = load_config(
            task.recipe,
            [
                f"model.name_or_path={model_dir}",
                f"train.output_dir={run_dir}",
                f"train.seed={seed}",
                *data_sets,
                *task.overrides,
                *args.overrides,
            ],
        )
        t0 = time.time()
        trainer = Trainer(cfg)
        trainer.fit()
        wall = time.time() - t0
        if trainer.stop_requested:  # Ctrl-C / SIGTERM: the trainer checkpointed and said how to resume
            print(f"seed {seed}: stopped by a signal; no summary, checkpoint evaluation or report"
                  + (", and the later seeds not run" if seed != seeds[-1] else ""))  # fmt: skip
            return 130
        if task.reference is not None:
            ceiling, shuffled = reference_scores(cfg, task.metric, task.reference)
            s = summarize(run_dir, task.metric, ceiling, shuffled)
        else:
            s = summarize(run_dir, task.metric)
        s["train_wall_s"] = wall  # warm start + GRPO + its evaluations
        from vlmgrpo.report.html import write_report
        from vlmgrpo.report.plots import plot_run

        if args.task == "cycle":
            s["transfer"] = transfer_check(run_dir)
        else:  # the task's own checkpoint evaluation: the report's checkpoint table
            s["ckpt_eval"] = checkpoint_eval(run_dir)
        summaries[str(seed)] = s
        (run_dir / "summary.json").write_text(json.dumps(s, indent=1))
        plot_run(run_dir)
        report, _ = write_report(run_dir)
        if "first_grpo_eval" in s:
            shuffled_txt = f", shuffled {s['shuffled']:.3f}" if "shuffled" in s else ""
            print(
                f"seed {seed}: held-out {s['metric']} {s['first_grpo_eval']:.3f} at GRPO step 0 (before any update) -> "
                f"{s['last3_eval_mean']:.3f} (mean of the last {s['last3_evals']} evals); ceiling {s['ceiling']:.3f}"
                f"{shuffled_txt}; gap closed {100 * s['gap_closed']:.0f}%"
            )
        else:
            print(f"seed {seed}: no held-out evaluation was logged (train.eval_every=0?)")
        if "transfer" in s:
            t = s["transfer"]
            print(
                f"seed {seed}: transfer, pass@1 on {t['questions']} questions about held-out scenes: "
                + ", ".join(f"{k} {_fmt(v)}" for k, v in t["pass@1"].items())
            )
            shape = {k: (v or {}).get("shape") for k, v in t["describe"].items()}
            print(
                f"seed {seed}: its own descriptions name the right shape (chance {_fmt(t['chance'].get('shape'))}): "
                + ", ".join(f"{k} {_fmt(v)}" for k, v in shape.items())
            )
        if "ckpt_eval" in s:
            c = s["ckpt_eval"]
            print(
                f"seed {seed}: checkpoints on {c['task']} ({c['metric']}): "
                + ", ".join(f"{k} {_fmt(v)}" for k, v in c["scores"].items())
            )
        print(f"results: {run_dir} (metrics.jsonl, samples/, ckpts/, plots, summary.json)")
        print(f"report: {report}")
    if len(seeds) > 1:
        (out / "summary.json").write_text(json.dumps(summaries, indent=1))
    return 0
