"""Experiment trackers beside the run folder's metrics.jsonl: Weights & Biases.

(TensorBoard lives in `runlog.RunLog` itself.) `attach(runlog, cfg, root)` wraps a run log so
that a tracker receives every metrics row the run folder gets (`log`) and the completions of each
logged step (`log_completions`: prompt, image, completion, each reward, the total and the
advantage, as one table). It runs only on rank 0.

`train.wandb: true` (the Python API: `report_to="wandb"`) needs the `wandb` package: without it
the run stops at start-up with one line, before any model loads. `WANDB_MODE=offline` writes the
run under `$WANDB_DIR` (default: the run folder) for a later `wandb sync`; `WANDB_PROJECT` and
the other WANDB_* variables apply as usual.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any

from vlmgrpo.errors import ConfigError, first_line
from vlmgrpo.numeric import as_number


def require(cfg: Any) -> None:
    """Fail at start-up, in one line, when a tracker the config asks for is not installed."""
    if cfg.train.wandb:
        _wandb()


def _wandb() -> Any:
    try:
        import wandb
    except ImportError:
        raise ConfigError(
            "train.wandb (report_to='wandb'): the wandb package is not installed; "
            "pip install 'vlmgrpo[wandb]', or report to tensorboard / none"
        ) from None
    return wandb


class TrackedLog:
    """A run log (`runlog.RunLog`) whose rows also go to the trackers, plus the completions
    tables; everything else is the run log's own."""

    def __init__(self, runlog: Any, trackers: list[Any]) -> None:
        self.runlog, self.trackers = runlog, trackers

    def __getattr__(self, name: str) -> Any:
        return getattr(self.runlog, name)

    def log(self, step: int, phase: str, metrics: dict[str, Any]) -> dict[str, Any]:
        row = self.runlog.log(step, phase, metrics)
        for t in self.trackers:
            t.log(step, row)
        return row

    def log_completions(self, step: int, *args: Any) -> None:
        for t in self.trackers:
            t.log_completions(step, *args)

    def close(self) -> None:
        self.runlog.close()
        for t in self.trackers:
            t.close()


def attach(runlog: Any, cfg: Any, root: Path) -> TrackedLog:
    """`runlog` with the trackers `cfg` asks for (none: rows go to the run log alone)."""
    return TrackedLog(runlog, [WandbTracker(cfg, root)] if cfg.train.wandb else [])


class WandbTracker:
    """One W&B run per training run; resumed runs continue it (its id is kept in the run folder)."""

    def __init__(self, cfg: Any, root: Path) -> None:
        wandb = _wandb()
        self.wandb = wandb
        id_file = Path(root) / "wandb_run_id"
        fresh = not id_file.is_file()
        run_id = secrets.token_hex(4) if fresh else id_file.read_text().strip()
        id_file.write_text(run_id)
        try:
            self.run = wandb.init(
                project=os.environ.get("WANDB_PROJECT") or cfg.train.wandb_project,
                name=cfg.train.wandb_name or Path(root).name,
                id=run_id,
                resume="allow",
                dir=os.environ.get("WANDB_DIR") or str(root),
                config=cfg.to_dict(),
            )
        except Exception as e:  # no API key, an unreachable server: W&B's own traceback said it
            if fresh:
                id_file.unlink(missing_ok=True)
            raise ConfigError(
                f"train.wandb (report_to='wandb'): W&B did not start ({first_line(e)}); run `wandb login` "
                "or set WANDB_API_KEY, or WANDB_MODE=offline to log locally"
            ) from None
        # W&B's own step must only grow, but the warm start counts its steps from 1 and a resumed
        # run logs its last steps again: each phase plots against its own step metric instead
        self.run.define_metric("train/step")
        self.run.define_metric("*", step_metric="train/step")
        self.run.define_metric("warmup/step")
        self.run.define_metric("warmup/*", step_metric="warmup/step")

    def log(self, step: int, row: dict[str, Any]) -> None:
        data = {
            k: n
            for k, v in row.items()
            if k not in ("step", "time") and (n := as_number(v, finite=True)) is not None
        }
        if row.get("phase") == "warmup":
            data = {k if k.startswith("warmup/") else f"warmup/{k}": v for k, v in data.items()}
            data["warmup/step"] = step
        else:
            data["train/step"] = step
        self.run.log(data)

    def log_completions(
        self,
        step: int,
        records: list[Any],
        rewards: dict[str, list[float]],
        totals: list[float],
        advantages: list[float],
    ) -> None:
        """One table row per completion: prompt, input image, completion, each reward, the total
        and the advantage."""
        names = sorted(rewards)
        table = self.wandb.Table(
            columns=["step", "prompt", "image", "completion", *names, "reward", "advantage"]
        )
        for i, rec in enumerate(records):
            image = self.wandb.Image(rec.images[0]) if rec.images else None
            table.add_data(
                step,
                rec.prompt,
                image,
                rec.completion,
                *[as_number(rewards[k][i], finite=True) for k in names],
                as_number(totals[i], finite=True),
                as_number(advantages[i], finite=True),
            )
        self.run.log({"completions": table, "train/step": step})

    def close(self) -> None:
        self.run.finish()
