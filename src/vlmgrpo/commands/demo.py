"""The embedded offline demo: build a tiny Qwen3-VL, warm-start it, run cycle-consistency GRPO on
synthetic scenes, and report held-out similarity against the ceiling and the shuffled control.

Everything is offline: the tiny model is built locally and loaded through `from_pretrained`, the
text-to-image model is the procedural renderer, the embedder is the pixel similarity.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

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
DEMO_MODEL: dict = {
    "arch": "qwen3_vl",
    "seed": 0,
    "colour_filters": 24,
    "colour_filter_gain": 2.0,
    "position_code": 4.0,
}
POSITION_DIMS = 6
# Settings `vlmgrpo demo` puts on top of the `demo` recipe (before any --set). group_size 16: more
# position words tried per image in a group; with 8, seed 1 closed 16% of the gap, with 16, 47%
# (docs/demo.md). The recipe keeps 8 so that `vlmgrpo train --recipe demo` stays cheap.
DEMO_OVERRIDES: tuple[str, ...] = ("rollout.group_size=16",)


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
            if spec.get("position_code"):
                _set_position_code(visual, float(spec["position_code"]))
        model.save_pretrained(str(model_dir))
    marker.write_text(json.dumps(spec))
    print(f"built the demo's tiny {spec['arch']} model in {model_dir}")
    return model_dir


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--output-dir", default="runs/demo", help="where the model and the run(s) go")
    p.add_argument("--seeds", default="1", help="comma-separated seeds; one run folder per seed")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a value of the demo recipe (repeatable)",
    )


def summarize(run: Path) -> dict[str, float]:
    """Held-out numbers of a demo run: the first GRPO evaluation, the mean of the last three,
    the ceiling and the shuffled control, and the fraction of the gap to the ceiling closed."""
    from vlmgrpo.runlog import read_metrics

    rows = [
        r
        for r in read_metrics(run / "metrics.jsonl")
        if r.get("phase") == "grpo" and "eval/similarity/mean" in r
    ]
    if not rows:
        return {}
    first, last3 = rows[0], rows[-3:]
    mean = lambda key, rs: sum(r[key] for r in rs) / len(rs)  # noqa: E731
    start = first["eval/similarity/mean"]
    end = mean("eval/similarity/mean", last3)
    ceiling = mean("eval/similarity/ceiling", rows)
    shuffled = mean("eval/similarity/shuffled", last3)
    return {
        "first_grpo_eval": start,
        "last3_eval_mean": end,
        "ceiling": ceiling,
        "shuffled_last3": shuffled,
        "gap_closed": (end - start) / (ceiling - start) if ceiling > start else float("nan"),
        "grpo_steps": rows[-1]["step"],
    }


def run(args: argparse.Namespace) -> int:
    from vlmgrpo.config import load_config
    from vlmgrpo.trainer import train

    out = Path(args.output_dir)
    model_dir = out / "model"
    build_demo_model(model_dir)
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    summaries = {}
    for seed in seeds:
        run_dir = out if len(seeds) == 1 else out / f"seed-{seed}"
        cfg = load_config(
            "demo",
            [
                f"model.name_or_path={model_dir}",
                f"train.output_dir={run_dir}",
                f"train.seed={seed}",
                *DEMO_OVERRIDES,
                *args.overrides,
            ],
        )
        train(cfg)
        s = summarize(run_dir)
        summaries[str(seed)] = s
        (run_dir / "summary.json").write_text(json.dumps(s, indent=1))
        # transfer check: pass@1 of the base model and every checkpoint on the offline synthetic
        # chart-reasoning benchmark (rules judge; the tiny model is expected to score ~0), then the
        # curves and the browsable report
        from vlmgrpo.evaluate import EvalOptions, evaluate_run
        from vlmgrpo.report.html import write_report
        from vlmgrpo.report.plots import plot_run

        evaluate_run(
            run_dir,
            EvalOptions(task="charts", num_items=10, num_samples=4, ks=(1, 4), max_new_tokens=24),
            echo=lambda line: None,
        )
        plot_run(run_dir)
        report, _ = write_report(run_dir)
        print(
            f"seed {seed}: held-out similarity {s['first_grpo_eval']:.3f} at the first GRPO update -> "
            f"{s['last3_eval_mean']:.3f} (mean of the last 3 evals); ceiling {s['ceiling']:.3f}, "
            f"shuffled {s['shuffled_last3']:.3f}; gap closed {100 * s['gap_closed']:.0f}%"
        )
        print(f"results: {run_dir} (metrics.jsonl, samples/, ckpts/, ckpt_tests/, plots, summary.json)")
        print(f"report: {report}")
    if len(seeds) > 1:
        (out / "summary.json").write_text(json.dumps(summaries, indent=1))
    return 0
