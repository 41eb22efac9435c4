"""The embedded offline demo: build a tiny Qwen2.5-VL, warm-start it, run cycle-consistency GRPO on
synthetic scenes, and report held-out similarity against the ceiling and the shuffled control.

Everything is offline: the tiny model is built locally and loaded through `from_pretrained`, the
text-to-image model is the procedural renderer, the embedder is the pixel similarity.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

# How `vlmgrpo demo` builds its tiny model (docs/demo.md). `colour_filters`: that many of the
# vision tower's patch-embedding filters (out of 32) are set to per-channel means of the patch
# (filter o reads channel o % 3), scaled by `colour_filter_gain`, instead of random weights. Why: a
# random tiny vision tower never learned to tell colours apart under supervised training (it learned
# size and position only), and colour is what the pixel similarity rewards most; a pretrained vision
# encoder would see colour from the start, and this is the cheapest stand-in for one.
DEMO_MODEL: dict = {"arch": "qwen2_5_vl", "seed": 0, "colour_filters": 24, "colour_filter_gain": 2.0}


def build_demo_model(model_dir: Path, spec: dict = DEMO_MODEL) -> Path:
    """Build the demo's tiny Qwen2.5-VL in `model_dir` (rebuilt when `spec` changed)."""
    import torch

    from vlmgrpo.models.tiny import build_tiny_vlm

    marker = model_dir / "demo_model.json"
    if (model_dir / "config.json").is_file() and marker.is_file() and json.loads(marker.read_text()) == spec:
        return model_dir
    build_tiny_vlm(model_dir, arch=spec["arch"], seed=spec["seed"])
    if spec.get("colour_filters"):
        from transformers import AutoModelForImageTextToText

        model = AutoModelForImageTextToText.from_pretrained(str(model_dir))
        w = model.model.visual.patch_embed.proj.weight  # [D, 3, T, P, P]
        with torch.no_grad():
            for o in range(min(int(spec["colour_filters"]), w.shape[0])):
                w[o] = 0.0
                w[o, o % 3] = spec["colour_filter_gain"] / w[o, 0].numel()  # mean of channel o % 3
        model.save_pretrained(str(model_dir))
    marker.write_text(json.dumps(spec))
    print(f"built a tiny Qwen2.5-VL in {model_dir}")
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
