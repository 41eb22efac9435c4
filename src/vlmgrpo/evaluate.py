"""Checkpoint evaluation: the base model and every checkpoint of a run, pass@k from a judge.

For each model (`base` = config.yaml's model.name_or_path at step 0, then every complete `ckpts/ckpt-N`:
full weights load with `from_pretrained(ckpt)`, a LoRA checkpoint (adapter_config.json) loads the base
then `PeftModel.from_pretrained`), a task runs and its result goes to `RUN/ckpt_tests/<name>.json`.
Models already evaluated are skipped unless `force` (`regrade` re-judges their ungraded answers).

Tasks plug in through the `EVAL_TASKS` registry ("module:function", imported when selected) with the
contract `fn(model, proc, ctx: TaskContext) -> dict` holding at least `pass@1` (or `score`); `ctx`
gives the options, the run's config, the items (`ctx.samples()`), a seeded `ctx.generate` and the judge.
Built in: `charxiv` / `charts` (`qa_task`, seed A's checkpoint eval: N fixed chart questions, n
completions each at temperature 0.7, judged by `llm` for CharXiv or `rules` for the offline charts
benchmark; per item every completion, its score and the extracted answer, pass@1 = c/n; overall =
mean over items; pass@k by the unbiased estimator; ungraded completions (score -1) are excluded from
n and counted) and `rewards` (the run's own rewards on its eval set, `score` = mean total reward).

Non-goals: multi-GPU evaluation; the geometry/area/img2code graders live in their own modules.
"""

from __future__ import annotations

import copy
import json
import math
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlmgrpo.errors import ConfigError, DataError
from vlmgrpo.registry import Registry, import_from_path

SYSTEM_PROMPT = "You are a helpful assistant that answers questions about charts and graphs."
RESULTS_DIR = "ckpt_tests"

EVAL_TASKS: Registry[Callable[..., dict[str, Any]]] = Registry("eval task")
EVAL_TASKS.register("charxiv", "vlmgrpo.evaluate:qa_task")
EVAL_TASKS.register("charts", "vlmgrpo.evaluate:qa_task")
EVAL_TASKS.register("rewards", "vlmgrpo.evaluate:reward_task")
EVAL_TASKS.register("img2code", "vlmgrpo.evaluate:img2code_task")
EVAL_TASKS.register("geometry", "vlmgrpo.tasks.geometry_eval:evaluate_geometry")
EVAL_TASKS.register("area", "vlmgrpo.tasks.area_eval:evaluate_area")

# the run's eval dataset -> the task that grades it; anything else gets the offline charts benchmark
TASK_FOR_DATASET = {
    "charxiv": "charxiv",
    "charts": "charts",
    "geometry3k": "geometry",
    "area": "area",
    "img2code": "img2code",
}
DEFAULT_JUDGE = {"charxiv": "llm"}  # every other QA task: rules


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n graded samples with c correct: 1 - C(n-c, k) / C(n, k).

    Exact integer binomials, so large n loses no precision; k = 1 gives c / n."""
    if not 0 <= c <= n:
        raise ValueError(f"need 0 <= c <= n, got n={n}, c={c}")
    if not 1 <= k <= n:
        raise ValueError(f"pass@{k} needs 1 <= k <= n graded samples, got n={n}")
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


# QA benchmarks (charts, charxiv) are not the run's own task: their defaults are seed A's checkpoint
# eval. Every other task grades the run's own task with the run's `eval` and `prompt` settings.
BENCHMARK_TASKS = ("charts", "charxiv")
BENCHMARK_DEFAULTS = {"num_items": 10, "num_samples": 10, "temperature": 0.7, "max_new_tokens": 512}
DEFAULT_KS = (1, 5, 10)

# what each task's headline number (`pass@1`, else `score`) measures, for plots and the report
METRIC_NAMES = {
    "charts": "pass@1, offline charts benchmark",
    "charxiv": "pass@1, CharXiv reasoning questions",
    "geometry": "accuracy (greedy), Geometry3K",
    "area": "total reward (seed's strict area rewards, -3..4)",
    "img2code": "img2code reward (execution + image similarity)",
    "rewards": "mean total reward of the run's rewards",
}


def grader_name(task: str, cfg: Any, judge: Any) -> str:
    """Who grades: the judge of a QA task, else the grader or the run's rewards."""
    if judge is not None:
        return f"{getattr(judge, 'name', type(judge).__name__)} judge"
    if task == "area":
        return "seed's strict area rewards"
    if task == "geometry":
        return "geometry grader"
    return "rewards: " + ", ".join(r.label or r.name for r in cfg.rewards)


def metric_name(task: str, cfg: Any = None) -> str:
    """The name of `task`'s headline number; for `rewards`, the run's reward labels."""
    if task == "rewards" and cfg is not None and cfg.rewards:
        labels = [r.label or r.name for r in cfg.rewards if r.weight]
        return "held-out reward: " + " + ".join(labels)
    return METRIC_NAMES.get(task, f"{task} score")


@dataclass
class EvalOptions:
    """Settings of one `vlmgrpo eval`. None = the run's own setting (its config.yaml's `eval` and
    `prompt` sections) for its own task, or seed A's checkpoint-eval default for a QA benchmark."""

    task: str = ""  # EVAL_TASKS name; "" = from --data or the run's eval dataset
    data: str = ""  # a CharXiv-style test_set.json instead of the run's eval dataset
    num_items: int | None = None  # first N items (run: eval.num_items; benchmark: 10)
    num_samples: int | None = None  # completions per item, n (run: eval.num_chains; benchmark: 10)
    ks: tuple[int, ...] | None = None  # pass@k reported for these k <= n (None: 1, 5, 10)
    temperature: float | None = None  # run: eval.temperature; benchmark: 0.7
    max_new_tokens: int | None = None  # run: eval.max_new_tokens or rollout's; benchmark: 512
    system: str | None = None  # run: prompt.system; benchmark: seed A's chart assistant
    prompt_suffix: str = ""  # appended to each question (e.g. an answer-format instruction)
    judge: str = ""  # judges registry name; "" = the task's default
    judge_kwargs: dict[str, Any] = field(default_factory=dict)
    force: bool = False  # re-evaluate models that already have a result
    regrade: bool = False  # re-judge the ungraded completions of existing results (no generation)
    include_base: bool = True
    device: str = "auto"
    seed: int = 0  # the same sampling seed for every model: differences reflect the weights
    batch_rows: int = 64  # sequences per generate call
    image_max_side: int = 0  # 0 = the run's data.image_max_side
    results_dir: str = ""  # default RUN/ckpt_tests


def resolve_options(opts: EvalOptions, cfg: Any, task: str) -> tuple[EvalOptions, Any]:
    """(options with every None filled, the run config with its `eval`/`prompt` set to them).

    A benchmark task takes seed A's defaults; the run's own task takes its config's eval settings,
    so `vlmgrpo eval` grades what training evaluated. The returned config is a copy: task functions
    that read `cfg.eval` / `cfg.prompt.system` (geometry, area, rewards) see the overrides too."""
    import dataclasses

    cfg = copy.deepcopy(cfg)
    if task in BENCHMARK_TASKS:
        run_own = dict(BENCHMARK_DEFAULTS, system=SYSTEM_PROMPT)
    else:
        run_own = {
            "num_items": cfg.eval.num_items,
            "num_samples": cfg.eval.num_chains,
            "temperature": cfg.eval.temperature,
            "max_new_tokens": cfg.eval.max_new_tokens or cfg.rollout.max_new_tokens,
            "system": cfg.prompt.system,
        }
    filled = {k: v if (v := getattr(opts, k)) is not None else run_own[k] for k in run_own}
    ks = tuple(k for k in opts.ks or DEFAULT_KS if k <= filled["num_samples"]) or (1,)
    out = dataclasses.replace(opts, ks=ks, **filled)
    if task not in BENCHMARK_TASKS:
        cfg.eval.num_items, cfg.eval.num_chains = out.num_items, out.num_samples
        cfg.eval.temperature, cfg.eval.max_new_tokens = out.temperature, out.max_new_tokens
        cfg.prompt.system = out.system
    return out, cfg


@dataclass
class TaskContext:
    """What a task sees besides the model: options, run config, items, a seeded sampler, a judge."""

    opts: EvalOptions
    cfg: Any  # vlmgrpo.config.Config
    run: Path
    task: str
    name: str  # "base" | "ckpt-N"
    step: int
    judge: Any = None
    _items: list[dict[str, Any]] | None = None

    def __post_init__(self) -> None:
        # options left to the run (None) are filled as `vlmgrpo eval` fills them, so a task called
        # directly with a fresh EvalOptions samples with the run's settings, never with None
        if any(getattr(self.opts, k) is None for k in (*BENCHMARK_DEFAULTS, "system", "ks")):
            self.opts, self.cfg = resolve_options(self.opts, self.cfg, self.task)

    def samples(self) -> list[dict[str, Any]]:
        """The first `num_items` items of the task's data (the same for every model)."""
        if self._items is None:
            self._items = load_items(self.cfg, self.opts, self.task)
        return self._items

    def generate(self, model: Any, proc: Any, prompts: list[Any], n: int, **sampling: Any) -> list[list[str]]:
        """n completions per prompt, from a fixed seed; returns [len(prompts)][n] strings."""
        import torch

        from vlmgrpo.rollout import hf as hf_rollout

        o = self.opts
        torch.manual_seed(o.seed)
        per_call = max(1, o.batch_rows // max(1, n))
        out: list[list[str]] = []
        for i in range(0, len(prompts), per_call):
            batch = hf_rollout.sample(
                model,
                proc,
                prompts[i : i + per_call],
                n,
                temperature=sampling.get("temperature", o.temperature),
                max_new_tokens=sampling.get("max_new_tokens", o.max_new_tokens),
            )
            texts = batch.completions
            out += [texts[j * n : (j + 1) * n] for j in range(len(texts) // n)]
        return out


# --------------------------------------------------------------------------- items


def resolve_task(opts: EvalOptions, cfg: Any) -> str:
    """The task to run: --task, else charts/charxiv by the --data file, else by the run's eval dataset."""
    if opts.task:
        EVAL_TASKS.get(opts.task)  # an unknown name fails here, with a did-you-mean
        return opts.task
    if opts.data:
        from vlmgrpo.data.charts import SOURCE, read_test_set

        first = read_test_set(opts.data).entries[0]
        return "charts" if first.get("source") == SOURCE else "charxiv"
    name = cfg.data.eval_dataset or cfg.data.dataset
    return TASK_FOR_DATASET.get(name, "charts")


def load_items(cfg: Any, opts: EvalOptions, task: str) -> list[dict[str, Any]]:
    """First N items: from --data, the run's eval dataset, or (charts task on a run without questions)
    the charts benchmark with a fixed seed, so every run is scored on the same charts."""
    from vlmgrpo.data import build_dataset
    from vlmgrpo.data.charts import read_test_set

    max_side = opts.image_max_side or cfg.data.image_max_side
    if opts.data:
        ds: Any = read_test_set(opts.data, max_side)
    else:
        name = cfg.data.eval_dataset or cfg.data.dataset
        if task == "charts" and name != "charts":
            ds = build_dataset("charts", {"n": opts.num_items, "max_side": max_side}, "test", 0)
        else:
            ds = build_dataset(name, cfg.data.eval_kwargs or cfg.data.kwargs, "test", cfg.train.seed)
    if hasattr(ds, "__len__"):
        items = [ds[i] for i in range(min(opts.num_items, len(ds)))]
    else:
        import numpy as np

        rng = np.random.default_rng(cfg.train.seed + 1)  # the trainer's fixed eval draw
        items = [ds.sample(rng) for _ in range(opts.num_items)]
    if not items:
        raise DataError("the evaluation data has no items")
    return items


def list_models(run: Path, include_base: bool = True) -> list[tuple[str, int, Path | None]]:
    """(name, step, checkpoint folder or None for the base model), base first, then by step."""
    from vlmgrpo.checkpoint import checkpoint_step, list_checkpoints

    models: list[tuple[str, int, Path | None]] = [("base", 0, None)] if include_base else []
    return models + [(p.name, checkpoint_step(p), p) for p in list_checkpoints(run / "ckpts", warn=True)]


def load_model(cfg: Any, ckpt: Path | None, device: Any) -> tuple[Any, Any]:
    """The base model (ckpt None), a full-weight checkpoint, or base + LoRA adapter; eval mode."""
    from vlmgrpo.models import load_policy

    mcfg = copy.deepcopy(cfg.model)
    mcfg.lora.enabled = False
    mcfg.gradient_checkpointing = False
    if ckpt is not None and (ckpt / "base").is_dir():  # adversarial runs: the policy is ckpt-N/base
        ckpt = ckpt / "base"
    if ckpt is not None and (ckpt / "adapter_config.json").is_file():
        from peft import PeftModel

        model, proc = load_policy(mcfg, device)
        model = PeftModel.from_pretrained(model, str(ckpt)).merge_and_unload()
    else:
        if ckpt is not None:
            mcfg.name_or_path = str(ckpt)
        model, proc = load_policy(mcfg, device)
    return model.eval(), proc


# --------------------------------------------------------------------------- tasks


def qa_task(model: Any, proc: Any, ctx: TaskContext) -> dict[str, Any]:
    """Seed A's checkpoint eval: n completions per chart question, judged; pass@1 and pass@k."""
    from vlmgrpo.judges import JudgeItem
    from vlmgrpo.rollout import Prompt

    o = ctx.opts
    items = ctx.samples()
    missing = [k for k in ("question", "answer") if k not in items[0]]
    if missing:
        raise DataError(
            f"task {ctx.task}: the items have no {'/'.join(missing)} field; use --task charts (offline "
            "benchmark) or --data a CharXiv-style test_set.json"
        )
    prompts = []
    for s in items:
        text = str(s["question"]) + (f"\n{o.prompt_suffix}" if o.prompt_suffix else "")
        images = list(s.get("images") or [])
        content = [{"type": "image"} for _ in images] + [{"type": "text", "text": text}]
        messages = ([{"role": "system", "content": o.system}] if o.system else []) + [
            {"role": "user", "content": content}
        ]
        prompts.append(Prompt(messages=messages, images=images, text=text))
    completions = ctx.generate(model, proc, prompts, o.num_samples)
    judge_items = [
        JudgeItem(
            question=str(s["question"]),
            response=c,
            answer=str(s["answer"]),
            inst_category=int(s.get("inst_category") or 1),
            choices=list(s.get("choices") or []),
            id=f"{s.get('id', i)}#{j}",
        )
        for i, (s, comps) in enumerate(zip(items, completions))
        for j, c in enumerate(comps)
    ]
    verdicts = ctx.judge.grade(judge_items)
    per_item, errors = [], Counter()
    for i, (s, comps) in enumerate(zip(items, completions)):
        vs = verdicts[i * o.num_samples : (i + 1) * o.num_samples]
        errors.update(v.error for v in vs if not v.graded)
        per_item.append(
            {
                "id": str(s.get("id", i)),
                "question": str(s["question"]),
                "ground_truth": str(s["answer"]),
                "inst_category": int(s.get("inst_category") or 1),
                "choices": list(s.get("choices") or []),
                "completions": [
                    {"text": t, "score": v.score, "extracted_answer": v.extracted_answer}
                    | ({"error": v.error} if v.error else {})
                    for t, v in zip(comps, vs)
                ],
            }
            | item_stats([v.score for v in vs], o.ks)
        )
    return summarize_items(per_item, o.ks) | {"judge_errors": dict(errors.most_common(10))}


def item_stats(scores: Sequence[int], ks: Sequence[int]) -> dict[str, Any]:
    """One item's counts from its completions' scores (1/0, -1 = ungraded, excluded from n)."""
    n = sum(x != -1 for x in scores)
    c = sum(x == 1 for x in scores)
    return {
        "graded": n,
        "correct": c,
        "ungraded": len(scores) - n,
        "pass@1": c / n if n else None,
        "pass@k": {str(k): pass_at_k(n, c, k) for k in sorted(set(ks) | {1}) if 1 <= k <= n},
    }


def summarize_items(per_item: list[dict[str, Any]], ks: Sequence[int]) -> dict[str, Any]:
    """Overall pass@1 (mean of per-item c/n over items with a graded sample) and pass@k."""
    p1 = [it["pass@1"] for it in per_item if it["pass@1"] is not None]
    overall: dict[str, Any] = {
        "pass@1": sum(p1) / len(p1) if p1 else None,
        "pass@k": {},
        "graded": sum(it["graded"] for it in per_item),
        "ungraded": sum(it["ungraded"] for it in per_item),
        "items_without_grades": sum(it["pass@1"] is None for it in per_item),
        "items": per_item,
    }
    for k in sorted(set(ks) | {1}):
        vals = [it["pass@k"][str(k)] for it in per_item if str(k) in it["pass@k"]]
        if vals:
            overall["pass@k"][str(k)] = sum(vals) / len(vals)
    return overall


def reward_task(model: Any, proc: Any, ctx: TaskContext, summarize: str = "") -> dict[str, Any]:
    """The run's own rewards on its eval set with the eval settings; `score` = mean total reward.
    `summarize` ("module:function", `fn(records, result: RewardResult) -> dict`) adds task-specific
    numbers."""
    from vlmgrpo.rewards import RewardContext, RewardRecord, RewardSpec, compute_rewards
    from vlmgrpo.sampling import build_prompt

    cfg, o = ctx.cfg, ctx.opts
    items = ctx.samples()
    prompts = [build_prompt(s, cfg) for s in items]
    completions = ctx.generate(model, proc, prompts, o.num_samples)
    records = [
        RewardRecord(prompt=p.text, completion=c, images=p.images, sample=s, group=i, index=j)
        for i, (s, p, comps) in enumerate(zip(items, prompts, completions))
        for j, c in enumerate(comps)
    ]
    specs = [RewardSpec(r.name, r.weight, r.kwargs, r.label) for r in cfg.rewards]
    res = compute_rewards(records, specs, RewardContext(step=ctx.step, phase="eval", seed=o.seed))
    metrics = {k: _num(v) for k, v in res.metrics("eval").items()}
    out: dict[str, Any] = {"score": metrics.get("eval/reward/mean"), "metrics": metrics}
    if summarize:
        out.update(import_from_path(summarize)(records, res))
    out["items"] = [
        {"id": str(r.sample.get("id", r.group)), "completion": r.completion, "reward": _num(res.total[k])}
        for k, r in enumerate(records)
    ]
    return out


def img2code_summary(records: Sequence[Any], res: Any) -> dict[str, Any]:
    """`vlmgrpo.rewards.img2code.summarize` (execution rate, similarity, error classes) over the
    img2code reward's per-sample dicts, rebuilt from the reward result (None = the sample failed)."""
    from vlmgrpo.rewards.img2code import summarize

    label = next((k for k in res.per_reward if k == "img2code"), next(iter(res.per_reward), None))
    if label is None:
        return {}
    subs = {k.split("/", 1)[1]: v for k, v in res.sub_scores.items() if k.startswith(f"{label}/")}
    rows: list[dict[str, float] | None] = []
    for k in range(len(records)):
        score = float(res.per_reward[label][k])
        if math.isnan(score):
            rows.append(None)
            continue
        rows.append({"score": score} | {name: float(v[k]) for name, v in subs.items()})
    summary = summarize(rows)
    summary.pop("score", None)  # `score` stays the mean total reward, as in every reward task
    return {k: _num(v) for k, v in summary.items()}


def img2code_task(model: Any, proc: Any, ctx: TaskContext) -> dict[str, Any]:
    """img2code: the run's rewards plus the img2code summary (execution rate, similarity, ...)."""
    return reward_task(model, proc, ctx, summarize="vlmgrpo.evaluate:img2code_summary")


def _num(x: Any) -> float | None:
    """A finite float, or None (NaN and infinities do not belong in strict JSON)."""
    try:
        x = float(x)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


# --------------------------------------------------------------------------- the run


def build_eval_judge(opts: EvalOptions, task: str, cfg: Any, run: Path) -> Any:
    """The judge a QA task uses; `llm` settings from the run config's `extra.judge`, then options."""
    import inspect

    from vlmgrpo.judges import JUDGES

    name = opts.judge or DEFAULT_JUDGE.get(task, "rules")
    cls = JUDGES.get(name)
    kwargs = dict(opts.judge_kwargs)
    if name == "llm":
        base = {k: v for k, v in (cfg.extra.get("judge") or {}).items() if k != "name"}
        kwargs = base | kwargs
        kwargs.setdefault("cache_dir", str(run / "judge_cache"))
    accepted = inspect.signature(cls).parameters
    if not any(p.kind == p.VAR_KEYWORD for p in accepted.values()):
        unused = sorted(set(kwargs) - set(accepted))
        if unused:  # e.g. --judge-model given while the task's judge is `rules`
            print(f"note: the {name} judge takes no {', '.join(unused)}; ignored")
        kwargs = {k: v for k, v in kwargs.items() if k in accepted}
    return cls(**kwargs)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        obj = json.loads(path.read_text())
    except (OSError, ValueError):
        return None  # missing or torn: evaluate again
    return obj if isinstance(obj, dict) else None


def regrade(result: dict[str, Any], judge: Any, ks: Sequence[int]) -> dict[str, Any]:
    """Grade again only the ungraded completions of a stored QA result (no model needed)."""
    from vlmgrpo.judges import JudgeItem

    todo = [
        (it, c)
        for it in result.get("items", [])
        for c in it.get("completions", [])
        if c.get("score", -1) == -1
    ]
    verdicts = judge.grade(
        [
            JudgeItem(
                it["question"],
                c["text"],
                it["ground_truth"],
                it.get("inst_category", 1),
                it.get("choices", []),
                it["id"],
            )
            for it, c in todo
        ]
    )
    for (_, c), v in zip(todo, verdicts):
        c.update(score=v.score, extracted_answer=v.extracted_answer)
        c.pop("error", None)
        if v.error:
            c["error"] = v.error
    for it in result.get("items", []):
        it.update(item_stats([c["score"] for c in it["completions"]], ks))
    return result | summarize_items(result.get("items", []), ks)


def _strict(obj: Any) -> Any:
    """NaN and infinities -> None, recursively, so result files are strict JSON."""
    if isinstance(obj, dict):
        return {k: _strict(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_strict(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def _write_json(path: Path, obj: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(_strict(obj), indent=1, allow_nan=False))
    tmp.replace(path)


def evaluate_run(run: str | Path, opts: EvalOptions, echo: Callable[[str], None] = print) -> list[dict]:
    """Evaluate the base model and every complete checkpoint of `run`; returns the results written or
    found (without their per-item lists). Raises VlmgrpoError on a missing run or config."""
    import gc

    import torch

    from vlmgrpo.config import config_from_file
    from vlmgrpo.dist import resolve_device

    run = Path(run)
    if not (run / "config.yaml").is_file():
        raise ConfigError(f"{run}: no config.yaml; is this a run folder (train.output_dir)?")
    cfg = config_from_file(run / "config.yaml")
    task = resolve_task(opts, cfg)
    fn = EVAL_TASKS.get(task)
    requested_ks = opts.ks
    opts, cfg = resolve_options(opts, cfg, task)
    out_dir = Path(opts.results_dir) if opts.results_dir else run / RESULTS_DIR
    device = torch.device(resolve_device(opts.device))
    uses_judge = task in BENCHMARK_TASKS or bool(opts.judge)
    judge = build_eval_judge(opts, task, cfg, run) if uses_judge else None
    items: list[dict[str, Any]] | None = None
    summaries = []
    models = list_models(run, opts.include_base)
    if not any(p for _, _, p in models):
        echo(f"note: {run / 'ckpts'} has no complete checkpoint; evaluating the base model only")
    dropped = [k for k in requested_ks or () if k not in opts.ks]
    if dropped:
        echo(f"note: pass@{','.join(map(str, dropped))} needs more than {opts.num_samples} samples; skipped")
    echo(
        f"task {task} ({metric_name(task, cfg)}): {opts.num_items} items x {opts.num_samples} samples, "
        f"temperature {opts.temperature}, {opts.max_new_tokens} new tokens"
    )
    for name, step, path in models:
        dest = out_dir / f"{name}.json"
        prev = _read_json(dest) if not opts.force else None
        if prev is not None and prev.get("task", task) != task:
            raise ConfigError(
                f"{dest}: holds a {prev.get('task')!r} evaluation, this is {task!r}; give --results-dir "
                "another folder for it (or --force to replace it)"
            )
        if prev is not None:
            if opts.regrade and prev.get("ungraded") and judge is not None:
                prev = regrade(prev, judge, opts.ks)
                _write_json(dest, prev)
                echo(format_summary(prev) + f"  (re-graded) -> {dest}")
            else:
                echo(f"{name}: already evaluated ({dest}); --force to redo")
            summaries.append({k: v for k, v in prev.items() if k != "items"})
            continue
        t0 = time.perf_counter()
        model, proc = load_model(cfg, path, device)
        ctx = TaskContext(opts, cfg, run, task, name, step, judge, items)
        result = fn(model, proc, ctx)
        items = ctx._items  # load and draw the data once for all models
        del model
        gc.collect()
        if device.type == "cuda":
            import torch

            torch.cuda.empty_cache()
        result = {
            "name": name,
            "step": step,
            "path": str(path) if path else cfg.model.name_or_path,
            "task": task,
            "metric": metric_name(task, cfg),
            "judge": getattr(judge, "name", None),
            "grader": grader_name(task, cfg, judge),
            "data": opts.data or None,
            "num_items": len(items or []),
            "samples_per_item": opts.num_samples,
            "temperature": opts.temperature,
            "max_new_tokens": opts.max_new_tokens,
            "system": opts.system,
            "seed": opts.seed,
            "time_s": round(time.perf_counter() - t0, 2),
            **result,
        }
        _write_json(dest, result)
        summaries.append({k: v for k, v in result.items() if k != "items"})
        echo(format_summary(result) + f"  -> {dest}")
    if judge is not None and getattr(judge, "stats", None):
        echo(f"judge: {judge.stats}")
    return summaries


def format_summary(r: dict[str, Any]) -> str:
    """One line: name, step, pass@1 / pass@k or score, ungraded count."""
    parts = [f"{r['name']:>10} step {r['step']:>6}"]
    if r.get("pass@1") is not None:
        parts.append(
            "  ".join(f"pass@{k} {v:.3f}" for k, v in (r.get("pass@k") or {"1": r["pass@1"]}).items())
        )
    elif r.get("score") is not None:
        parts.append(f"score {r['score']:.4f}")
    else:
        parts.append("no graded samples")
    if r.get("ungraded"):
        parts.append(f"ungraded {r['ungraded']}")
    return "  ".join(parts)
