"""Image-to-matplotlib-code reward (seed E): run the policy's code, compare its figure.

    score = w_exec * exec_success + w_sim * similarity + penalty

Code is the first fenced python block of the completion (else the first fenced block, else the
whole completion; a fence cut off by max_new_tokens runs to the end). Every program runs in
`vlmgrpo.sandbox` (in parallel, `sandbox:` kwargs = `SandboxConfig` fields); `similarity` is the
weighted mean of the selected `vlmgrpo.imagemetrics` metrics (`metrics: {name: weight}`, default
the seed's combination) of the figure against the sample's full-size `reference_image`, and 0
for a failed run. Penalties by class (seed: syntax -1.0, runtime -0.5; timeouts and resource
limits count as runtime errors by default; a program that draws nothing gets 0 and no credit).
A `sandbox_error` (the sandbox failed, not the program) skips the sample.

Logged sub-scores (`reward/<label>/<sub>/mean`): exec_success, similarity, penalty, one 0/1 flag
per class (their means are rates), each metric (NaN, i.e. left out of the mean, when the run
failed), and code statistics. `summarize(results)` turns a list of these dicts into an
evaluation summary (success rate, similarity, score, class rates, code statistics).
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import json
import logging
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from vlmgrpo.errors import ConfigError, VlmgrpoError
from vlmgrpo.imagemetrics import SEED_WEIGHTS, check_weights, similarity
from vlmgrpo.rewards.base import RewardContext, RewardRecord, batched
from vlmgrpo.sandbox import STATUSES, Sandbox, SandboxConfig, SandboxResult

log = logging.getLogger(__name__)
CLASSES = tuple(s for s in STATUSES if s != "sandbox_error")
# linear in the completion: the info string stops at a backtick, an index at 40 characters
_FENCE = re.compile(r"```[ \t]*([\w+-]*)[^\n`]*\n(.*?)(?:```|\Z)", re.S)
_PLOT_CALL = re.compile(r"\b(?:plt|ax\w*|fig\w*|axes\[[^\]\n]{0,40}\])\.\w+\(")
_SANDBOXES: dict[str, Sandbox] = {}


def extract_code(text: str) -> str:
    """The code of a completion; see the module docstring."""
    blocks = [(lang.lower(), body) for lang, body in _FENCE.findall(text)]
    for lang, body in blocks:
        if lang in ("python", "py", "python3"):
            return body.strip("\n")
    if blocks:
        return blocks[0][1].strip("\n")
    return text.strip()


def code_stats(code: str) -> dict[str, float]:
    """Simple code statistics: non-blank lines, characters, comment lines, plotting calls, imports."""
    lines = [line.strip() for line in code.splitlines() if line.strip()]
    return {
        "code_lines": float(len(lines)),
        "code_chars": float(len(code)),
        "code_comment_lines": float(sum(line.startswith("#") for line in lines)),
        "code_plot_calls": float(len(_PLOT_CALL.findall(code))),
        "code_imports": float(sum(line.startswith(("import ", "from ")) for line in lines)),
    }


def get_sandbox(config: Mapping[str, Any] | None = None) -> Sandbox:
    """One `Sandbox` per distinct config (`SandboxConfig` fields), reused across steps."""
    known = [f.name for f in dataclasses.fields(SandboxConfig)]
    for name in config or {}:
        if name not in known:
            close = difflib.get_close_matches(str(name), known, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else f"; known: {', '.join(known)}"
            raise ConfigError(f"rewards.img2code.kwargs.sandbox.{name}: unknown setting{hint}")
    key = json.dumps(dict(config or {}), sort_keys=True)
    if key not in _SANDBOXES:
        sandbox = Sandbox(**dict(config or {}))
        if sandbox.config.isolate and sandbox.why_not and not sandbox.config.allow_unisolated:
            # asked for isolation and would get none: say so rather than run the policy's code bare
            raise ConfigError(
                f"rewards.img2code.kwargs.sandbox.isolate: true, but bubblewrap cannot isolate programs "
                f"here ({sandbox.why_not}); install it (Debian: apt install bubblewrap), or set "
                "sandbox.allow_unisolated: true to run them with rlimits only (docs/img2code.md)"
            )
        _SANDBOXES[key] = sandbox
    return _SANDBOXES[key]


def score_completions(
    completions: Sequence[str],
    references: Sequence[Any],
    w_exec: float = 0.3,
    w_sim: float = 0.7,
    syntax_penalty: float = -1.0,
    runtime_penalty: float = -0.5,
    timeout_penalty: float | None = None,
    resource_penalty: float | None = None,
    no_figure_penalty: float = 0.0,
    metrics: Mapping[str, float] | None = None,
    size: int = 224,
    dinov2: Mapping[str, Any] | None = None,
    sandbox: Mapping[str, Any] | None = None,
) -> tuple[list[dict[str, float] | None], list[SandboxResult]]:
    """Score completions against reference images (PIL). Returns per completion the reward dict
    (None for a sandbox error) and the raw sandbox results (figure, error text). Usable outside
    training, e.g. by an evaluation."""
    if len(completions) != len(references):
        raise ValueError(f"got {len(completions)} completions for {len(references)} references")
    weights = check_weights(
        metrics if metrics is not None else SEED_WEIGHTS, "rewards.img2code.kwargs.metrics"
    )
    penalties = {
        "ok": 0.0,
        "syntax_error": syntax_penalty,
        "runtime_error": runtime_penalty,
        "timeout": runtime_penalty if timeout_penalty is None else timeout_penalty,
        "resource_limit": runtime_penalty if resource_penalty is None else resource_penalty,
        "no_figure": no_figure_penalty,
    }
    codes = [extract_code(c) for c in completions]
    results = get_sandbox(sandbox).run_many(codes)
    ok = [i for i, r in enumerate(results) if r.ok]
    sims = (
        similarity([references[i] for i in ok], [results[i].image for i in ok], weights, size, dinov2)
        if ok
        else []
    )
    by_index = dict(zip(ok, sims))
    out: list[dict[str, float] | None] = []
    for i, (code, res) in enumerate(zip(codes, results)):
        if res.status == "sandbox_error":
            out.append(None)
            continue
        row = by_index.get(i, {})
        sim = float(row.get("similarity", 0.0))
        value = {
            "exec_success": float(res.ok),
            "similarity": sim,
            "penalty": float(penalties[res.status]),
            **{c: float(res.status == c) for c in CLASSES},
            **{m: float(row.get(m, math.nan)) for m in weights},
            **code_stats(code),
        }
        value["score"] = w_exec * value["exec_success"] + w_sim * sim + value["penalty"]
        out.append(value)
    return out, results


@batched
def img2code_reward(
    records: list[RewardRecord], ctx: RewardContext, **kwargs: Any
) -> list[dict[str, float] | None]:
    """The `img2code` reward (kwargs: those of `score_completions`). The figure goes to
    `record.extras["figure"]` and the class to `record.extras["status"]` for the step samples."""
    from vlmgrpo.data.img2code import reference_image

    refs = [reference_image(r.sample) if r.sample else (r.images or [None])[0] for r in records]
    if any(ref is None for ref in refs):
        raise ValueError("img2code: a sample has no reference image")
    values, results = score_completions([r.completion for r in records], refs, **kwargs)
    for rec, res in zip(records, results):
        rec.extras["status"] = res.status
        if res.image is not None:
            rec.extras["figure"] = res.image
    return values


def img2code_prepare(**kwargs: Any) -> None:
    """Trainer start-up: check the kwargs, load DINOv2 when selected, and run one program through
    the sandbox, so that a broken sandbox fails now and missing isolation is logged up front."""
    known = [
        n for n in inspect.signature(score_completions).parameters if n not in ("completions", "references")
    ]
    for name in kwargs:
        if name not in known:
            close = difflib.get_close_matches(name, known, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else f"; known: {', '.join(known)}"
            raise ConfigError(f"rewards.img2code.kwargs.{name}: unknown setting{hint}")
    weights = check_weights(kwargs.get("metrics") or SEED_WEIGHTS, "rewards.img2code.kwargs.metrics")
    if "dinov2" in weights:
        from vlmgrpo.embed import get_embedder
        from vlmgrpo.imagemetrics import DINOV2_DEFAULTS

        get_embedder("dinov2", {**DINOV2_DEFAULTS, **dict(kwargs.get("dinov2") or {})})
    res = get_sandbox(kwargs.get("sandbox")).run("import matplotlib.pyplot as plt\nplt.plot([0, 1])\n")
    if not res.ok:
        last = (res.error.strip().splitlines() or [""])[-1]
        raise VlmgrpoError(
            f"img2code: the sandbox cannot run a plain matplotlib program ({res.status}: {last})"
        )
    if res.isolation.get("backend") != "bwrap":
        log.warning(
            "img2code sandbox: only rlimits, a timeout and a clean environment hold here (%s); the "
            "program can read and write what this user can (docs/img2code.md)",
            res.isolation.get("why_not", "no bubblewrap"),
        )
    missing = [k for k, v in res.isolation.items() if v is False]
    if missing:
        log.warning(
            "img2code sandbox: these layers do not hold here: %s (docs/img2code.md)", ", ".join(missing)
        )


img2code_reward.prepare = img2code_prepare  # type: ignore[attr-defined]


def summarize(results: Sequence[Mapping[str, float] | None]) -> dict[str, float]:
    """Evaluation summary of reward dicts (from `img2code_reward` / `score_completions`; None =
    sandbox error, counted in `sandbox_errors`): n, exec_success_rate, similarity (failures count
    0), similarity_ok (successful runs only), score, <class>_rate, <metric> (successful runs),
    code_* means (all programs)."""
    rows = [r for r in results if r is not None]
    out: dict[str, float] = {"n": float(len(rows)), "sandbox_errors": float(len(results) - len(rows))}
    if not rows:
        return out

    def mean(key: str, only_ok: bool = False) -> float:
        vals = [float(r[key]) for r in rows if key in r and (not only_ok or r.get("exec_success") == 1.0)]
        vals = [v for v in vals if not math.isnan(v)]
        return float(np.mean(vals)) if vals else math.nan

    out["exec_success_rate"] = mean("exec_success")
    out["similarity"] = mean("similarity")
    out["similarity_ok"] = mean("similarity", only_ok=True)
    out["score"] = mean("score")
    out.update({f"{c}_rate": mean(c) for c in CLASSES})
    keys = {k for r in rows for k in r} - {"score", "exec_success", "similarity", "penalty", *CLASSES}
    for key in sorted(keys):
        out[key] = mean(key, only_ok=not key.startswith("code_"))
    return out
