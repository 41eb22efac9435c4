"""Checkpoint evaluation: the base model and every checkpoint of a run, pass@k from a judge.

For each model (`base` = config.yaml's model.name_or_path at step 0, then every complete `ckpts/ckpt-N`:
full weights load with `from_pretrained(ckpt)`, a LoRA checkpoint (adapter_config.json) loads the base
then `PeftModel.from_pretrained`), a task runs and its result goes to `RUN/ckpt_tests/<name>.json`.
Models already evaluated are skipped unless `force` (`regrade` re-judges their ungraded answers).

Which task and which settings: the run's own task (by its eval dataset: `area`, `geometry`,
`img2code`, else `rewards`-style grading where chosen) runs with the run's own eval settings
(config.yaml's `eval` and `prompt.system`); `scenes-qa` (the default for runs on the synthetic
scenes: the demo, adversarial) with the cycle demo's transfer-check settings (32 scenes x 3
questions x 4 samples, temperature 1.0, 24 tokens, the run's system prompt); a QA benchmark
(`charts`, `charxiv`; `charts` is the default for other runs whose data have no questions) with seed
A's (10 items x 10 samples, temperature 0.7, 512 tokens, the chart assistant prompt). Command-line
options win (`resolve_options`).

Tasks plug in through the `EVAL_TASKS` registry ("module:function", imported when selected) with the
contract `fn(model, proc, ctx: TaskContext) -> dict` holding at least `pass@1` (or `score`); `ctx`
gives the options, the run's config, the items (`ctx.samples()`), a seeded `ctx.generate` and the judge.
Built in: `charxiv` / `charts` (`tasks/qa_eval.py`, seed A's judged pass@k), `scenes-qa`
(`tasks/scene_qa_eval.py`, questions about held-out scenes, rules-graded), `rewards` and
`img2code` (`tasks/reward_eval.py`, the run's own rewards), `geometry` and `area` (`tasks/`).
Each result records what its headline measures (`metric`) and who graded it (`judge` / `grader`).

Non-goals: multi-GPU evaluation; the geometry/area/img2code graders live in their own modules.
"""

from __future__ import annotations

import copy
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlmgrpo.errors import ConfigError, DataError, VlmgrpoError
from vlmgrpo.registry import Registry
from vlmgrpo.tasks.qa_eval import item_stats, pass_at_k, qa_task, regrade, summarize_items  # noqa: F401
from vlmgrpo.tasks.reward_eval import img2code_task, reward_task  # noqa: F401
from vlmgrpo.tasks.scene_qa_eval import SCENE_QA_DEFAULTS

SYSTEM_PROMPT = "You are a helpful assistant that answers questions about charts and graphs."
RESULTS_DIR = "ckpt_tests"

EVAL_TASKS: Registry[Callable[..., dict[str, Any]]] = Registry("eval task")
EVAL_TASKS.register("charxiv", "vlmgrpo.tasks.qa_eval:qa_task")
EVAL_TASKS.register("charts", "vlmgrpo.tasks.qa_eval:qa_task")
EVAL_TASKS.register("rewards", "vlmgrpo.tasks.reward_eval:reward_task")
EVAL_TASKS.register("img2code", "vlmgrpo.tasks.reward_eval:img2code_task")
EVAL_TASKS.register("geometry", "vlmgrpo.tasks.geometry_eval:evaluate_geometry")
EVAL_TASKS.register("area", "vlmgrpo.tasks.area_eval:evaluate_area")
EVAL_TASKS.register("scenes-qa", "vlmgrpo.tasks.scene_qa_eval:scene_qa_task")

# the run's eval dataset -> the task that grades it; anything else gets the offline charts benchmark
TASK_FOR_DATASET = {
    "charxiv": "charxiv",
    "charts": "charts",
    "geometry3k": "geometry",
    "area": "area",
    "img2code": "img2code",
    "scenes": "scenes-qa",  # a scene describer answers questions about held-out scenes, not charts
}
DEFAULT_JUDGE = {"charxiv": "llm"}  # every other QA task: rules


# QA benchmarks (charts, charxiv) are not the run's own task: their defaults are seed A's checkpoint
# eval. Every other task grades the run's own task with the run's `eval` and `prompt` settings.
BENCHMARK_TASKS = ("charts", "charxiv")
BENCHMARK_DEFAULTS = {"num_items": 10, "num_samples": 10, "temperature": 0.7, "max_new_tokens": 512}
DEFAULT_KS = (1, 5, 10)
# tasks with settings of their own, over the run's (options given win)
TASK_DEFAULTS: dict[str, dict[str, Any]] = {"scenes-qa": SCENE_QA_DEFAULTS}

# what each task's headline number (`pass@1`, else `score`) measures, for plots and the report
METRIC_NAMES = {
    "charts": "pass@1, offline charts benchmark",
    "charxiv": "pass@1, CharXiv reasoning questions",
    "scenes-qa": "pass@1, questions about held-out scenes (colour, shape, position; rules)",
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


# tasks whose evaluation is greedy with one answer per item whatever the run's eval settings
# (geometry: the seed's report, `tasks/geometry_eval.py`)
GREEDY_TASKS = frozenset({"geometry"})


def settings_line(task: str, opts: Any, cfg: Any = None) -> str:
    """The line `vlmgrpo eval` prints before evaluating: the task, its metric and what runs."""
    if task in GREEDY_TASKS:
        how = f"{opts.num_items} items, greedy, 1 answer each"
    else:
        how = f"{opts.num_items} items x {opts.num_samples} samples, temperature {opts.temperature}"
    return f"task {task} ({metric_name(task, cfg)}): {how}, {opts.max_new_tokens} new tokens"


@dataclass
class EvalOptions:
    """Settings of one `vlmgrpo eval`. None = the run's own setting (its config.yaml's `eval` and
    `prompt` sections) for its own task, `TASK_DEFAULTS` for scenes-qa, or seed A's checkpoint-eval
    default for a QA benchmark."""

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
    own = dict(TASK_DEFAULTS.get(task, {}))
    default_ks = own.pop("ks", DEFAULT_KS)
    run_own |= own
    filled = {k: v if (v := getattr(opts, k)) is not None else run_own[k] for k in run_own}
    ks = tuple(k for k in opts.ks or default_ks if k <= filled["num_samples"]) or (1,)
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
        elif task == "scenes-qa" and name != "scenes":  # a run on other data: fixed scenes
            ds = build_dataset("scenes", {"n": 200, "max_objects": 1}, "test", 0)
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
    found (without their per-item lists). Raises VlmgrpoError on a missing run or config, and after
    the others on a checkpoint whose weights are damaged (a truncated file), naming it."""
    import gc

    import torch

    from vlmgrpo.checkpoint import weights_problem
    from vlmgrpo.config import config_from_file
    from vlmgrpo.dist import resolve_device

    run = Path(run)
    if not (run / "config.yaml").is_file():
        raise ConfigError(f"{run}: no config.yaml; is this a run folder (train.output_dir)?")
    cfg = config_from_file(run / "config.yaml")
    from vlmgrpo.trl_config import API_RECIPE

    if cfg.recipe == API_RECIPE and not (opts.task or opts.data):  # its data.dataset is a default
        raise ConfigError(
            f"{run / 'config.yaml'}: trained from Python (GRPOTrainer), whose datasets config.yaml does "
            "not hold: no task of its own to evaluate; name one with --data TEST_SET.json or --task charts"
        )
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
    echo(settings_line(task, opts, cfg))
    damaged: list[str] = []  # checkpoints whose weights cannot load: the others are still evaluated
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
        why = weights_problem(path) if path is not None else None
        if why:
            damaged.append(f"{path}: checkpoint is damaged ({why})")
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
            # what ran: a greedy task samples once at temperature 0 whatever the run's eval settings
            "samples_per_item": 1 if task in GREEDY_TASKS else opts.num_samples,
            "temperature": 0.0 if task in GREEDY_TASKS else opts.temperature,
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
    if damaged:
        raise VlmgrpoError("; ".join(damaged) + "; not evaluated (the other models were)")
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
