"""What `Trainer.fit` does to the run folder around its steps (runlog.py holds the writers).

A fresh start moves an earlier attempt's metrics aside (`set_aside_earlier_metrics`); a resume
from an older checkpoint moves the newer ones aside (`set_aside_later_checkpoints`); a stopped run
prints how to resume (`resume_hint`); a step whose rewards are all equal is warned about once
(`warn_if_flat`); a logged step's group goes to `samples/step-N/` (`log_samples`). Nothing here is
ever deleted. Non-goals: the checkpoint format (checkpoint.py), the metrics format (runlog.py).
"""

from __future__ import annotations

import logging
import math
import shlex
from pathlib import Path
from typing import Any

import torch

from vlmgrpo import checkpoint as ckpt
from vlmgrpo import runlog
from vlmgrpo.grpo.step import skipped
from vlmgrpo.rewards import RewardRecord
from vlmgrpo.runlog import RunLog, write_samples

log = logging.getLogger("vlmgrpo.trainer")  # the trainer's logger: these lines are the run's


def set_aside_earlier_metrics(out: Path, metrics_path: Path) -> None:
    """A fresh start (or --resume before any checkpoint) in a folder with metrics: an earlier
    attempt's rows would repeat steps, so they move aside, numbered (a later start never replaces
    them), and its TensorBoard events and sampled steps (which the new run's would replace) with them."""
    prev = runlog.numbered(out / "metrics.prev.jsonl")
    metrics_path.replace(prev)
    for name in ("tb", "samples"):
        if (out / name).is_dir():
            (out / name).replace(out / prev.name.replace("metrics.", f"{name}.").removesuffix(".jsonl"))
    log.warning("starting from step 0: the earlier metrics moved to %s", prev.name)


def set_aside_earlier_checkpoints(out: Path) -> Path | None:
    """A fresh start over an earlier run's checkpoints (the Python API's second `train()` into one
    output_dir; the CLI refuses such a folder unless --overwrite): the new ckpt-N would replace
    theirs and `--resume` could pick one of theirs. They move to `ckpts/prev/` (returned; numbered,
    never deleted), and their evaluation results to `ckpt_tests/prev/`."""
    found = ckpt.list_checkpoints(out / "ckpts")
    dest = _move_checkpoints(out, found, "prev") if found else None
    if dest:
        log.warning("starting from step 0: the earlier checkpoints moved to %s/", dest.relative_to(out))
    return dest


def set_aside_later_checkpoints(out: Path, step: int) -> Path | None:
    """`--resume-from ckpt-N` with newer checkpoints in the folder: they belong to the timeline
    being replaced. Left in place, the new run would overwrite some and a later `--resume`
    would pick an old one; they move to `ckpts/cut-N/` (returned), never deleted, and their
    evaluation results to `ckpt_tests/cut-N/`."""
    root = out / "ckpts"
    later = [c for c in ckpt.list_checkpoints(root) if ckpt.checkpoint_step(c) > step]
    if not later:
        return None
    return _move_checkpoints(out, later, f"cut-{step}")


def _move_checkpoints(out: Path, later: list[Path], name: str) -> Path:
    """Move checkpoints `later` of `out/ckpts` to `out/ckpts/<name>` (numbered) and their
    `vlmgrpo eval` results to `out/ckpt_tests/<that name>`; returns the checkpoints' new folder."""
    root = out / "ckpts"
    dest = runlog.numbered(root / name)
    dest.mkdir(parents=True)
    for c in later:
        c.replace(dest / c.name)
    # their evaluations too (`vlmgrpo eval`'s RUN/ckpt_tests/ckpt-M.json): left in place they
    # would stand in the report for the new timeline's checkpoints of the same names
    tests = out / "ckpt_tests"
    names = {c.name for c in later}
    stale = [p for p in tests.iterdir() if p.name.split(".")[0] in names] if tests.is_dir() else []
    if stale:
        tdest = tests / dest.name
        tdest.mkdir(parents=True, exist_ok=True)
        for p in stale:
            p.replace(tdest / p.name)
    return dest


def resume_hint(out: Path) -> str:
    q = shlex.quote(str(out))
    return f"resume with: vlmgrpo train --recipe {q}/config.yaml --output-dir {q} --resume"


def warn_if_flat(metrics: dict[str, float], step: int) -> bool:
    """A step whose rewards are all the same has all advantages zero, so the update learns nothing
    (a reward that cannot tell the samples apart, or one stuck at a value). Returns whether it
    warned (the trainer warns once per run)."""
    std, n_skip = metrics.get("reward/std"), metrics.get("reward/skipped", 0.0)
    if std is None or not math.isfinite(std) or std > 0 or skipped(metrics):
        return False
    log.warning(
        "step %d: every sample got the same reward (%.4g%s): no learning signal (all advantages "
        "are 0). Check that the rewards can tell completions apart (warned once)",
        step,
        metrics.get("reward/mean", math.nan),
        f"; {n_skip:.0f} skipped" if n_skip else "",
    )
    return True


def log_samples(rl: RunLog, step: int, recs: list[RewardRecord], res: Any, adv: torch.Tensor) -> None:
    """One group per logged step: images, completions, scores; for cycle rewards also the
    seed's page of the original beside every regenerated image sorted by similarity."""
    g = len(recs)
    n = step + 1  # the step this rollout's metrics row gets (counted from 1, as in metrics.jsonl)
    out = rl.sample_dir(n)
    per_reward = {k: v[:g].tolist() for k, v in res.per_reward.items()}
    totals, advs = res.total[:g].tolist(), adv[:g].tolist()
    write_samples(out, recs, per_reward, totals, advs)
    subs = {k: v[:g].tolist() for k, v in res.sub_scores.items()}
    rl.log_completions(n, recs, {**per_reward, **subs}, totals, advs)
    if recs and recs[0].images and any("regenerated" in r.extras for r in recs):
        from vlmgrpo.report.artifacts import write_step_page

        write_step_page(
            out,
            recs[0].images[0],
            [r.completion for r in recs],
            [r.extras.get("regenerated") for r in recs],
            totals,
            title=f"step {step}",
        )


def dump_params(model: Any, rank: int, folder: Path) -> None:
    """Tests (VLMGRPO_DUMP_PARAMS): this rank's view of the final full weights."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    sd = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True))
    folder.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.detach().cpu().clone() for k, v in sd.items()}, folder / f"rank-{rank}.pt")
