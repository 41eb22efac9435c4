"""`vlmgrpo demo --task T`: the summary's numbers and the geometry task end to end (short)."""

from __future__ import annotations

import json
import math
import shutil

import pytest

from vlmgrpo.cli import main
from vlmgrpo.commands import demo


def _write_metrics(run, rows):
    run.mkdir(parents=True, exist_ok=True)
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_summary_reads_the_task_metric_and_the_gap(tmp_path):
    rows = [{"step": 5, "phase": "warmup", "eval/accuracy/mean": 0.9}]  # warm-up evals do not count
    rows += [
        {"step": s, "phase": "grpo", "eval/accuracy/mean": v, "eval/format/mean": 1.0}
        for s, v in ((0, 0.2), (25, 0.3), (50, 0.4), (75, 0.5), (100, 0.6))
    ]
    rows.append({"step": 101, "phase": "grpo", "reward/mean": 0.0})  # a step without an evaluation
    _write_metrics(tmp_path, rows)
    s = demo.summarize(tmp_path, "accuracy", ceiling=1.0, shuffled=0.1)
    assert s["metric"] == "eval/accuracy/mean" and s["grpo_steps"] == 100
    assert s["first_grpo_eval"] == 0.2 and s["last3_eval_mean"] == pytest.approx(0.5)
    assert s["gap_closed"] == pytest.approx(0.3 / 0.8) and s["shuffled"] == 0.1
    assert math.isnan(demo.gap_closed(1.0, 1.0, 1.0))


def test_cycle_summary_takes_ceiling_and_shuffled_from_the_metrics(tmp_path):
    rows = [
        {"step": s, "phase": "grpo", "eval/similarity/mean": v, "eval/similarity/ceiling": 0.9,
         "eval/similarity/shuffled": 0.2}
        for s, v in ((0, 0.5), (25, 0.6), (50, 0.7))
    ]  # fmt: skip
    _write_metrics(tmp_path, rows)
    s = demo.summarize(tmp_path)
    assert s["ceiling"] == pytest.approx(0.9) and s["shuffled"] == pytest.approx(0.2) == s["shuffled_last3"]
    assert s["gap_closed"] == pytest.approx((0.6 - 0.5) / 0.4) and s["last3_evals"] == 3
    # a short run with two evaluations: the mean says it has two, the first among them
    _write_metrics(tmp_path, rows[:2])
    s = demo.summarize(tmp_path)
    assert s["last3_evals"] == 2 and s["last3_eval_mean"] == pytest.approx(0.55)


def test_geometry_ceiling_is_the_graded_reference_and_shuffled_is_lower(tmp_path):
    from vlmgrpo.config import load_config
    from vlmgrpo.data.geometry_synthetic import write

    write(tmp_path, 4, 16, seed=0)
    cfg = load_config("geometry-tiny", [f"data.kwargs.path={tmp_path}", "eval.num_items=16"])
    ceiling, shuffled = demo.reference_scores(cfg, "accuracy", demo._geometry_reference)
    assert ceiling == 1.0  # every reference answer grades correct through the real reward
    assert 0.0 <= shuffled < 0.5  # another item's answer is mostly wrong


def test_img2code_ceiling_is_the_reference_code_and_shuffled_is_lower(tmp_path):
    """The img2code demo's ceiling runs each held-out figure's reference code in the sandbox
    (the same figure: similarity 1) and its control the next figure's code (another bar chart)."""
    from vlmgrpo.config import load_config
    from vlmgrpo.data.img2code import create_sample

    create_sample(tmp_path, 4, 0, (0.0, 0.0, 1.0), family="short")  # 4 held-out figures
    sets = [f"data.kwargs.path={tmp_path}", *demo.IMG2CODE_OVERRIDES, "eval.num_items=4"]
    cfg = load_config("img2code-tiny", sets)
    ceiling, shuffled = demo.reference_scores(cfg, "img2code/similarity", demo._img2code_reference)
    assert ceiling == pytest.approx(1.0)
    assert 0.3 < shuffled < 0.95  # another bar chart: alike in layout, not in colour or heights


def test_demo_geometry_writes_a_summary_per_seed(tiny_qwen3_vl_dir, tmp_path, capsys):
    from vlmgrpo.data.geometry_synthetic import GIVEN_KINDS, write

    out = tmp_path / "demo"
    shutil.copytree(tiny_qwen3_vl_dir, out / "model")  # what the demo builds (same builder, seed 0)
    # the demo keeps data it finds (its own 400 items take ~5 s)
    write(out / "data-given", 8, 2, seed=0, kinds=tuple(GIVEN_KINDS))
    sets = [
        "warmup.steps=4", "train.steps=2", "train.eval_every=1", "train.save_every=0",
        "train.log_samples_every=0", "eval.num_items=2", "eval.num_chains=1",
        "rollout.prompts_per_step=1", "rollout.group_size=2", "rollout.max_new_tokens=8",
    ]  # fmt: skip
    args = ["demo", "--task", "geometry", "--output-dir", str(out), "--seeds", "1,2"]
    assert main(args + [a for s in sets for a in ("--set", s)]) == 0
    for seed in (1, 2):
        s = json.loads((out / f"seed-{seed}" / "summary.json").read_text())
        assert s["metric"] == "eval/accuracy/mean" and s["ceiling"] == 1.0 and s["grpo_steps"] == 2
        assert {"first_grpo_eval", "last3_eval_mean", "shuffled", "gap_closed"} <= set(s)
        # the checkpoint evaluation ran (bug: only the cycle demo's did; the report said it was missing)
        c = s["ckpt_eval"]
        assert c["task"] == "geometry" and list(c["scores"]) == ["base", "ckpt-2"]
        for name, score in c["scores"].items():
            r = json.loads((out / f"seed-{seed}" / "ckpt_tests" / f"{name}.json").read_text())
            assert r["task"] == "geometry" and r["pass@1"] == score and 0.0 <= score <= 1.0
            assert r["num_items"] == 2 and r["samples_per_item"] == 1  # the run's eval settings
        assert "no checkpoint evaluation" not in (out / f"seed-{seed}" / "report.html").read_text().lower()
    assert set(json.loads((out / "summary.json").read_text())) == {"1", "2"}
    assert (out / "data-given" / "test").is_dir() and "gap closed" in capsys.readouterr().out
