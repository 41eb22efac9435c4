"""The report's figures as a reader sees them side by side (walk-through findings)."""

from __future__ import annotations

from pathlib import Path

from vlmgrpo.config import load_config, save_config
from vlmgrpo.report.plots import make_figures
from vlmgrpo.runlog import RunLog


def test_a_one_panel_components_figure_is_as_wide_as_the_others(tmp_path: Path):
    # a single-reward run (the demo's `similarity`) drew a 4.4 in components figure, which the report
    # stretched to page width: its text came out three times the size of the figure above it
    save_config(load_config("demo"), tmp_path / "config.yaml")
    log = RunLog(tmp_path, tensorboard=False)
    for s in range(1, 11):
        r = 0.1 + 0.01 * s
        log.log(s, "grpo", {"reward/mean": r, "reward/similarity/mean": r, "reward/similarity/raw/mean": r})
    log.close()
    figs, _ = make_figures(tmp_path, window=3)
    assert len(figs["components"].axes) == 1
    assert figs["components"].get_figwidth() == figs["training"].get_figwidth()


def test_diagnostics_of_a_two_step_run_have_whole_steps_and_plain_values(tmp_path: Path):
    # img2code-tiny (2 steps): the diagnostics ticks read 1.0, 1.2, ... and the entropy axis
    # "+6.711" over ticks of 0.00012; adversarial runs' panels said "GRPO step" beside "round"
    save_config(load_config("img2code-tiny"), tmp_path / "config.yaml")
    log = RunLog(tmp_path, tensorboard=False)
    for s in (1, 2):
        log.log(s, "grpo", {"reward/mean": -1.0, "loss/entropy": 6.7112 + 1e-4 * s})
    log.close()
    figs, _ = make_figures(tmp_path, window=3)
    fig = figs["diagnostics"]
    fig.canvas.draw()
    ax = fig.axes[0]
    assert ax.get_title() == "token entropy" and ax.get_xlabel() == "GRPO step"
    assert all(float(t).is_integer() for t in ax.get_xticks())
    assert ax.yaxis.get_major_formatter().get_offset() == ""


def test_a_demo_task_report_leads_with_the_task_metric_of_its_summary(tmp_path: Path):
    # `vlmgrpo demo --task geometry` printed "eval/accuracy/mean 0.000 -> 0.005, ceiling 1.000, gap
    # closed 1%" but its report led with "held-out total reward 0.083 -> 0.128", mostly format reward
    import json

    from vlmgrpo.report.headline import headline
    from vlmgrpo.report.rundata import load_run

    save_config(load_config("geometry-tiny"), tmp_path / "config.yaml")
    log = RunLog(tmp_path, tensorboard=False)
    for s in (0, 10, 20):
        log.log(
            s, "grpo", {"reward/mean": 0.1, "eval/reward/mean": 0.08 + s / 400, "eval/accuracy/mean": 0.0}
        )
    log.close()
    summary = {"metric": "eval/accuracy/mean", "first_grpo_eval": 0.0, "last3_eval_mean": 0.25,
               "ceiling": 1.0, "shuffled": 0.0, "gap_closed": 0.25}  # fmt: skip
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    figs = headline(load_run(tmp_path))
    labels = [f.label for f in figs]
    assert labels[:5] == ["gap to the ceiling closed", "held-out accuracy, first eval",
                          "held-out accuracy, last evals", "ceiling", "shuffled control"]  # fmt: skip
    assert figs[0].value == "25%" and figs[2].value == "0.250"
    assert not any("total reward" in lab for lab in labels)
