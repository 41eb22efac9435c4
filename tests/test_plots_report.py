"""`vlmgrpo plot` and `vlmgrpo report` on run folders written with the real run-log functions.

The HTML report is also opened in headless Chromium (skipped with a reason when it is not
installed): the DOM must show every image decoded (naturalWidth > 0) and a screenshot is taken.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vlmgrpo.cli import main
from vlmgrpo.report.html import build_html, pick_steps, write_report
from vlmgrpo.report.plots import load_run, make_figures, moving_average, plot_run
from vlmgrpo.rewards import RewardRecord
from vlmgrpo.runlog import RunLog, write_samples

FIGURES = {"training", "eval", "checkpoints", "components", "warmup"}


def make_run(root: Path, steps: int = 30, offset: float = 0.0) -> Path:
    """A run folder with warm-up and GRPO metrics, eval rows, checkpoint results and sampled steps."""
    from vlmgrpo.config import load_config, save_config

    root.mkdir(parents=True)
    save_config(load_config("demo"), root / "config.yaml")
    log = RunLog(root, tensorboard=False)
    for s in range(5):
        log.log(s, "warmup", {"warmup/loss": 2.0 - 0.3 * s})
    rng = np.random.default_rng(0)
    for s in range(1, steps + 1):
        sim = 0.2 + offset + 0.01 * s + 0.03 * rng.standard_normal()
        row = {"reward/mean": sim, "reward/similarity/mean": sim, "reward/similarity/raw/mean": sim - 0.1}
        if s % 5 == 0:
            row |= {"eval/reward/mean": sim - 0.02, "eval/similarity/mean": sim - 0.02,
                    "eval/similarity/ceiling": 0.86, "eval/similarity/shuffled": 0.1}  # fmt: skip
        log.log(s, "grpo", row)
    log.close()
    for step, p1 in [(0, 0.1), (10, 0.2 + offset), (20, 0.3 + offset)]:
        name = "base" if step == 0 else f"ckpt-{step}"
        items = [{"pass@1": p1 + d, "graded": 2} for d in (-0.05, 0.05)]
        res = {"name": name, "step": step, "pass@1": p1, "pass@k": {"1": p1, "2": p1 + 0.1}, "items": items,
               "task": "charts", "judge": "rules", "ungraded": 0}  # fmt: skip
        (root / "ckpt_tests").mkdir(exist_ok=True)
        (root / "ckpt_tests" / f"{name}.json").write_text(json.dumps(res))
    colors = ["red", "green", "blue", "orange"]
    for step in (0, 10, 20):
        original = Image.new("RGB", (56, 56), "white")
        original.paste(Image.new("RGB", (20, 20), "purple"), (10, 10))
        records = []
        for i, c in enumerate(colors):
            rec = RewardRecord(prompt="Describe this image.", completion=f"a {c} square <script>x</script>",
                               images=[original], sample={"id": f"s{step}"}, index=i)  # fmt: skip
            img = Image.new("RGB", (56, 56), "white")
            img.paste(Image.new("RGB", (20, 20), c), (5 + 5 * i, 10))
            rec.extras["regenerated"] = img
            records.append(rec)
        rewards = [0.1, 0.7, None, 0.4]
        d = log.sample_dir(step)
        write_samples(d, records, {"similarity": rewards}, rewards, [-1.0, 1.2, 0.0, 0.3])
    return root


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("plots") / "run")


def test_moving_average_is_trailing_and_skips_nan():
    y = [1.0, 3.0, float("nan"), 5.0, 7.0]
    ma = moving_average(y, 2)
    assert ma[0] == 1.0 and ma[1] == 2.0 and ma[2] == 3.0 and ma[3] == 5.0 and ma[4] == 6.0
    assert np.allclose(moving_average([1, 2, 3], 1), [1, 2, 3])
    assert math.isnan(moving_average([float("nan")], 3)[0])


def test_plot_draws_every_figure_in_both_formats_and_themes(run_dir, tmp_path, capsys):
    assert main(["plot", "--output-dir", str(run_dir), "--window", "5"]) == 0
    assert "missing" not in capsys.readouterr().out
    written = {p.name for p in (run_dir / "plots").iterdir()}
    assert written == {f"{n}.{ext}" for n in FIGURES for ext in ("png", "pdf")}
    png = Image.open(run_dir / "plots" / "checkpoints.png")
    assert png.size[0] > 400
    assert (run_dir / "plots" / "training.pdf").read_bytes().startswith(b"%PDF")
    files, notes = plot_run(run_dir, theme="festive", out_dir=tmp_path / "festive", formats=("png",))
    assert {f.stem for f in files} == FIGURES and notes == []


def test_grpo_and_warmup_rows_are_separate(run_dir):
    data = load_run(run_dir)
    assert all(r["phase"] == "grpo" for r in data.grpo) and len(data.warmup) == 5
    steps, vals = data.series("eval/reward/mean")
    assert list(steps) == [5, 10, 15, 20, 25, 30]
    figs, _ = make_figures(run_dir, window=3)
    labels = figs["training"].axes[0].get_legend_handles_labels()[1]
    # one reward: the total is that reward, drawn once; sub-scores go to the components figure
    assert labels == ["total reward = similarity (avg 3)"]
    comp_titles = {ax.get_title() for ax in figs["components"].axes}
    assert {"similarity", "similarity/raw"} <= comp_titles


def test_compare_draws_every_figure_for_every_run_in_its_own_colour(run_dir, tmp_path):
    """Bug: --compare ignored the second run in the training figure and drew only its eval total,
    in the main run's colour."""
    other = make_run(tmp_path / "other", offset=0.1)
    figs, notes = make_figures(run_dir, compare=[other], window=3)
    assert notes == []
    for name in FIGURES:
        colours: dict[str, set[str]] = {"run": set(), "other": set()}
        for ax in figs[name].axes:
            for line in ax.get_lines():
                run = line.get_label().partition(":")[0]
                if run in colours:
                    colours[run].add(line.get_color())
        assert colours["run"] and colours["other"], f"{name}: not both runs, by name in the legend"
        assert not colours["run"] & colours["other"], f"{name}: the runs share a colour"
    labels = figs["checkpoints"].axes[0].get_legend_handles_labels()[1]
    assert {"run: pass@1", "other: pass@1", "run: pass@2", "other: pass@2"} <= set(labels)
    twin = make_run(tmp_path / "b" / "run", offset=0.2)  # the same folder name as the main run
    figs, _ = make_figures(run_dir, compare=[twin], window=3)
    labels = figs["training"].axes[0].get_legend_handles_labels()[1]
    names = {lab.partition(":")[0] for lab in labels}
    assert "b/run" in names and len(names) == 2 and all(n.endswith("/run") for n in names)


def test_compare_with_another_task_gives_each_metric_its_own_checkpoint_panel(run_dir, tmp_path):
    """Bug: a compared run evaluated on another task (area's score beside charts pass@1) was drawn on
    the main run's axis, under the main run's metric, and the main run's own curve was lost to the
    shared headline key."""
    other = make_run(tmp_path / "area", offset=0.1)
    for p in (other / "ckpt_tests").iterdir():  # area-style results: a score, no pass@1
        r = json.loads(p.read_text())
        r = {k: v for k, v in r.items() if not k.startswith("pass@")} | {"score": 1.5, "task": "area"}
        r["metric"] = "area correctness (-3..3)"
        p.write_text(json.dumps(r))
    figs, _ = make_figures(run_dir, compare=[other], window=3)
    axes = figs["checkpoints"].axes
    assert len(axes) == 2
    by_title = {ax.get_title(): ax.get_legend_handles_labels()[1] for ax in axes}
    assert {"run: pass@1", "run: pass@2"} <= set(by_title["pass@1, offline charts benchmark"])
    assert any(lab.startswith("area:") for lab in by_title["area correctness (-3..3)"])
    assert not any(lab.startswith("area:") for lab in by_title["pass@1, offline charts benchmark"])


def test_missing_metrics_draws_what_exists(tmp_path, capsys):
    run = make_run(tmp_path / "run", steps=6)
    (run / "metrics.jsonl").unlink()
    assert main(["plot", "--output-dir", str(run)]) == 0
    out = capsys.readouterr().out
    assert "missing:" in out and "metrics.jsonl: not found" in out
    assert {p.stem for p in (run / "plots").glob("*.png")} == {"checkpoints"}


def test_partial_metrics_file_is_reported(tmp_path, capsys):
    run = make_run(tmp_path / "run", steps=6)
    shutil.rmtree(run / "ckpt_tests")
    lines = (run / "metrics.jsonl").read_text().splitlines()
    kept = [ln for ln in lines if "eval/" not in ln]  # no eval rows at all
    (run / "metrics.jsonl").write_text(
        "\n".join(kept) + '\n{"step": 7, "phase": "grpo", "rew'
    )  # torn last line
    assert main(["plot", "--output-dir", str(run)]) == 0
    out = capsys.readouterr().out
    assert "1 unreadable line(s) skipped" in out
    assert "no held-out evaluation during training" in out and "no checkpoint evaluation" in out
    assert {p.stem for p in (run / "plots").glob("*.png")} == {"training", "components", "warmup"}


def test_empty_run_folder_plots_nothing(tmp_path, capsys):
    assert main(["plot", "--output-dir", str(tmp_path)]) == 1
    assert "nothing to plot" in capsys.readouterr().out
    assert main(["plot", "--output-dir", str(tmp_path / "nope")]) == 2


def test_pick_steps_keeps_first_and_last():
    dirs = [Path(f"step-{i:06d}") for i in range(50)]
    picked = pick_steps(dirs, 5)
    assert picked[0] == dirs[0] and picked[-1] == dirs[-1] and len(picked) == 5
    assert pick_steps(dirs[:3], 5) == dirs[:3] and pick_steps(dirs, 0) == dirs


def test_report_is_self_contained_and_sorted(run_dir):
    page, notes = build_html(run_dir, window=3)
    assert notes == []
    srcs = re.findall(r'src="([^"]*)"', page)
    assert srcs and all(s.startswith("data:image/") for s in srcs)
    assert not re.search(r'(href|src)="(https?:)?//', page)  # no external assets
    assert "<link" not in page and "@import" not in page
    assert "&lt;script&gt;x&lt;/script&gt;" in page and "<script>x</script>" not in page
    step10 = page[page.index('id="step-10"') : page.index('id="step-20"')]
    order = [m for m in re.findall(r"a (red|green|blue|orange) square", step10)]
    assert order == ["green", "orange", "red", "blue"]  # by reward 0.7, 0.4, 0.1, then None
    assert step10.count('alt="regenerated"') == 4 and step10.count('alt="original"') == 1
    assert page.count('class="curve"') == len(FIGURES)
    assert "pass@2" in page


def _chromium() -> str | None:
    return next(
        (shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None
    )


def _chromium_args(binary: str, profile: Path) -> list[str]:
    return [
        binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={profile}", "--hide-scrollbars", "--virtual-time-budget=10000",
    ]  # fmt: skip


@pytest.mark.skipif(_chromium() is None, reason="chromium not installed (apt-get install chromium)")
def test_report_renders_in_headless_chromium(tmp_path):
    run = make_run(tmp_path / "run")
    path, _ = write_report(run, window=3, theme="festive")
    url = path.resolve().as_uri()
    binary = _chromium()
    dom = subprocess.run(
        [*_chromium_args(binary, tmp_path / "p1"), "--dump-dom", url],
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    widths = [int(w) for w in re.findall(r'data-natural-width="(\d+)"', dom)]
    n_img = len(re.findall(r"<img ", dom))
    assert n_img >= len(FIGURES) + 3 * 5  # curves + (original + 4 regenerated) per sampled step
    assert len(widths) == n_img and min(widths) > 0, "an image did not decode"
    assert 'data-images-broken="0"' in dom and f'data-images-loaded="{n_img}"' in dom
    shot = tmp_path / "report.png"
    subprocess.run(
        [*_chromium_args(binary, tmp_path / "p2"), "--window-size=1400,2400", f"--screenshot={shot}", url],
        capture_output=True, timeout=120,
    )  # fmt: skip
    img = np.asarray(Image.open(shot).convert("RGB"), dtype=float)
    assert img.shape[:2] == (2400, 1400)
    assert img.std() > 20  # not a blank page
    # the festive header band (red to green) is at the top
    top = img[10:60, 10:200].mean(axis=(0, 1))
    assert top[0] > top[2]


# --------------------------------------------------------------------------- plots and report fit the task


def write_run(root: Path, recipe: str, rows: list[tuple[int, str, dict]], results: list[dict] = ()) -> Path:
    """A run folder of `recipe`'s config with the given (step, phase, metrics) rows and eval results."""
    from vlmgrpo.config import load_config, save_config

    root.mkdir(parents=True)
    save_config(load_config(recipe), root / "config.yaml")
    log = RunLog(root, tensorboard=False)
    for step, phase, metrics in rows:
        log.log(step, phase, metrics)
    log.close()
    for r in results:
        (root / "ckpt_tests").mkdir(exist_ok=True)
        (root / "ckpt_tests" / f"{r['name']}.json").write_text(json.dumps(r))
    return root


def area_run(root: Path) -> Path:
    """An area-tiny run: three rewards, eval rows, and `vlmgrpo eval` results with a score, no pass@1."""
    rng = np.random.default_rng(1)
    rows = []
    for s in range(1, 31):
        c, f, x = -3 + 0.05 * s + 0.1 * rng.random(), 0.02 * s, 0.01 * s + 0.05 * rng.random()
        row = {"reward/mean": c + f + x, "reward/area_correctness/mean": c, "reward/area_format/mean": f,
               "reward/xml_format/mean": x, "reward/area_format/strict/mean": 0.0, "loss/kl": 0.0}  # fmt: skip
        if s % 10 == 0:
            row |= {"eval/reward/mean": c + f, "eval/area_correctness/mean": c, "eval/area_format/mean": f}
        rows.append((s, "grpo", row))
    results = [{"name": n, "step": st, "task": "area", "judge": None, "score": sc, "answered_rate": 0.5,
                "mae": 40.0, "within_10pct": 0.25}
               for n, st, sc in [("base", 0, -3.0), ("ckpt-10", 10, -2.5), ("ckpt-30", 30, -2.0)]]  # fmt: skip
    return write_run(root, "area-tiny", rows, results)


def test_titles_name_the_tasks_metric_and_score_results_are_plotted(tmp_path, capsys):
    """Bugs: area/img2code plots were titled "similarity" and "pass@1 on chart reasoning questions";
    after a successful eval whose results have a score (no pass@1), plot still said "no pass@1 results"."""
    run = area_run(tmp_path / "area")
    figs, notes = make_figures(run, window=3)
    titles = {name: fig.get_suptitle() for name, fig in figs.items()}
    for name in ("training", "eval", "components"):
        assert "area_correctness + area_format + xml_format" in titles[name]
    assert "area rewards" in titles["checkpoints"] and "chart" not in titles["checkpoints"]
    assert not any("similarity" in t for t in titles.values())
    eval_labels = figs["eval"].axes[0].get_legend_handles_labels()[1]
    assert eval_labels[0] == "total reward" and "area_correctness" in eval_labels  # the total first
    assert not any("pass@1" in n or "checkpoint evaluation" in n for n in notes)
    (line,) = [ln for ln in figs["checkpoints"].axes[0].get_lines() if ln.get_label() == "score"]
    assert list(line.get_ydata()) == [-3.0, -2.5, -2.0]
    assert main(["plot", "--output-dir", str(run), "--formats", "png"]) == 0
    assert "no pass@1" not in capsys.readouterr().out


def test_report_names_the_grader_and_the_tasks_own_columns(tmp_path):
    """Bug: the report's task/judge column said "area / None"."""
    run = area_run(tmp_path / "area")
    page, _ = build_html(run)
    table = page[page.index('id="eval"') :]
    assert "None" not in table and "<td class='l'>area</td>" in table
    assert "<th>mae</th>" in table and "<th>pass@1</th>" not in table  # no pass@1 columns of dashes
    r = json.loads((run / "ckpt_tests" / "base.json").read_text()) | {"grader": "seed's strict area rewards"}
    (run / "ckpt_tests" / "base.json").write_text(json.dumps(r))
    assert "area / seed&#x27;s strict area rewards" in build_html(run)[0]


def demo_rows(n_evals: int = 17, every: int = 25, warm: bool = True) -> list[tuple[int, str, dict]]:
    """A demo-like run: one reward (total = similarity = similarity/raw), controls, warm-start evals."""
    rows = []
    if warm:
        for s in range(1, 121):
            row = {"warmup/loss": (3.0 - s / 60) + (1.5 if s > 60 else 0.0)}  # the stage switch jumps
            if s % 20 == 0 and s > 60:
                row |= {"eval/reward/mean": 0.3 + s / 1000, "eval/similarity/mean": 0.3 + s / 1000,
                        "eval/similarity/ceiling": 0.99}  # fmt: skip
            rows.append((s, "warmup", row))
    last = (n_evals - 1) * every
    for s in range(0, last + 1):
        sim = 0.4 + 0.3 * s / max(1, last)
        row = {} if s == 0 else {"reward/mean": sim, "reward/similarity/mean": sim,
                                 "reward/similarity/raw/mean": sim, "loss/kl": 0.0}  # fmt: skip
        if s % every == 0:
            ev = 0.55 + 0.2 * (s / max(1, last)) + (0.03 if (s // every) % 2 else -0.03)
            row |= {"eval/reward/mean": ev, "eval/similarity/mean": ev, "eval/similarity/raw/mean": ev,
                    "eval/similarity/ceiling": 0.99, "eval/similarity/shuffled": 0.15}  # fmt: skip
        rows.append((s, "grpo", row))
    return rows


def _lines(fig, label_part: str):
    return [ln for ax in fig.axes for ln in ax.get_lines() if label_part in ln.get_label()]


def test_identical_series_are_drawn_once_and_eval_curves_are_not_averaged_away(tmp_path):
    """Bugs: similarity = total = similarity/raw were drawn on top of each other; the demo's eval curve
    was a 10-point moving average over 17 points, so its end disagreed with the summary."""
    run = write_run(tmp_path / "demo", "demo", demo_rows())
    figs, _ = make_figures(run, window=10)
    labels = [ln.get_label() for ln in figs["eval"].axes[0].get_lines() if not ln.get_label().startswith("_")]
    assert labels[0] == "total reward = similarity = similarity/raw"
    assert len(labels) == 3  # + the ceiling and shuffled controls
    (line,) = _lines(figs["eval"], "total reward")
    assert len(line.get_xdata()) == 17 and line.get_ydata()[-1] == pytest.approx(0.72)  # the last eval itself
    # a long series is averaged, and its raw values stay visible underneath
    train = figs["training"].axes[0].get_lines()
    assert any(len(ln.get_xdata()) == 400 and ln.get_alpha() and ln.get_alpha() < 1 for ln in train)
    assert any("(avg 10)" in ln.get_label() for ln in train)


def test_constant_and_empty_series_are_not_drawn():
    """Bugs: metrics constant for the run (kl, clip fractions, ratio under `pg`) were plotted; the
    img2code components figure had empty panels."""
    from vlmgrpo.report.plots import distinct_series

    x = np.arange(1.0, 6.0)
    lines, constant = distinct_series(
        [
            ("total", x, x / 10),
            ("kl", x, 0 * x),
            ("ratio", x, 1 + 0 * x),
            ("same", x, x / 10),
            ("empty", x[:0], x[:0]),
        ]
    )
    assert [ln.label for ln in lines] == ["total = same"] and constant == ["kl = 0", "ratio = 1"]
    lines, constant = distinct_series([("flat total", x, 0 * x - 1)], always=1)
    assert [ln.label for ln in lines] == ["flat total"] and constant == []  # a headline stays, even flat


def test_components_figure_has_no_empty_or_constant_panels(tmp_path):
    rows = []
    for s in range(1, 11):
        row = {"reward/mean": -1 + 0.01 * s, "reward/img2code/mean": -1 + 0.01 * s, "reward/img2code/ssim/mean": None,
               "reward/img2code/timeout/mean": 0.0, "reward/img2code/code_lines/mean": float(s % 3)}  # fmt: skip
        rows.append((s, "grpo", row))
    run = write_run(tmp_path / "img2code", "img2code-tiny", rows)
    figs, _ = make_figures(run, window=3)
    fig = figs["components"]
    assert sorted(ax.get_title() for ax in fig.axes) == ["img2code", "img2code/code_lines"]
    assert all(ax.get_lines() for ax in fig.axes)  # no blank axes left in the grid
    assert "img2code/timeout = 0" in fig.get_supxlabel()


def test_eval_figure_keeps_sub_scores_off_the_rewards_scale(tmp_path):
    """Seen in the img2code report: code lengths (~80) beside the reward (-1..1) flattened it."""
    rows = [
        (
            s,
            "grpo",
            {
                "reward/mean": -1.0 + 0.1 * s,
                "eval/reward/mean": -1 + 0.1 * s,
                "eval/img2code/mean": -1 + 0.1 * s,
                "eval/img2code/code_chars/mean": 80.0 - s,
                "eval/img2code/raw/mean": 0.1 * s,
            },
        )  # fmt: skip
        for s in range(0, 4)
    ]
    figs, _ = make_figures(write_run(tmp_path / "i2c", "img2code-tiny", rows))
    labels = figs["eval"].axes[0].get_legend_handles_labels()[1]
    assert labels == ["total reward = img2code", "img2code/raw"]


def test_one_evaluation_gets_a_readable_axis(tmp_path):
    """Bug: a run with one evaluation plotted seven dots on an x-axis from -0.04 to 0.04."""
    rows = [(s, "grpo", {"reward/mean": 0.1 * s}) for s in range(1, 5)]
    rows[-1][2].update({"eval/reward/mean": 0.3, "eval/similarity/mean": 0.3, "eval/similarity/raw/mean": 0.3,
                        "eval/similarity/ceiling": 0.9, "eval/similarity/shuffled": 0.1})  # fmt: skip
    run = write_run(tmp_path / "one", "demo", rows)
    figs, _ = make_figures(run)
    ax = figs["eval"].axes[0]
    lo, hi = ax.get_xlim()
    assert lo <= 0 and hi >= 4
    assert len([ln for ln in ax.get_lines() if not ln.get_label().startswith("_")]) == 3
    assert [t.get_text() for t in ax.texts] == ["0.3"]  # a lone point carries its value
    (run / "ckpt_tests").mkdir()
    (run / "ckpt_tests" / "base.json").write_text(json.dumps({"name": "base", "step": 0, "score": 0.2}))
    lo, hi = make_figures(run)[0]["checkpoints"].axes[0].get_xlim()
    assert lo < 0 and hi >= 4  # the base model alone: the axis still spans the run


def test_warm_start_stages_and_evals_are_marked_apart_from_grpo(tmp_path):
    """Bugs: the warm start's switch of targets (a loss jump by design) looked like divergence;
    warm-start evaluations were mixed with GRPO's."""
    from vlmgrpo.config import load_config, save_config

    run = write_run(tmp_path / "demo", "demo", demo_rows())
    cfg = load_config("demo", ["warmup.steps=120", "warmup.target_field=scene_colors:60,description"])
    save_config(cfg, run / "config.yaml")
    figs, _ = make_figures(run)
    loss_ax, eval_ax = figs["warmup"].axes
    marks = [ln for ln in loss_ax.get_lines() if list(ln.get_xdata()) == [60, 60]]
    assert marks and any("targets -> description" in t.get_text() for t in loss_ax.texts)
    (avg,) = [ln for ln in loss_ax.get_lines() if "(avg" in ln.get_label()]
    x, y = avg.get_xdata(), avg.get_ydata()
    assert y[list(x).index(61)] == pytest.approx(3.0 - 61 / 60 + 1.5)  # restarts: the jump is not smeared
    assert eval_ax.get_title() == "held-out evaluation during the warm start"
    assert list(_lines(figs["warmup"], "total reward")[0].get_xdata()) == [80, 100, 120]
    (grpo_eval,) = _lines(figs["eval"], "total reward")
    assert min(grpo_eval.get_xdata()) == 0 and len(grpo_eval.get_xdata()) == 17  # GRPO rows only


def test_report_leads_with_the_headline_at_page_width(tmp_path):
    """Bug: the report never stated the headline result and put its plots at half the page width."""
    from vlmgrpo.commands.demo import summarize

    run = write_run(tmp_path / "demo", "demo", demo_rows())
    page, _ = build_html(run)
    head = page[page.index('id="headline"') : page.index('id="curves"')]
    s = summarize(run)
    assert f"{round(100 * s['gap_closed'])}%" in head
    for value in (s["first_grpo_eval"], s["last3_eval_mean"], s["ceiling"], s["shuffled_last3"]):
        assert f"<b>{value:.3f}</b>" in head
    assert page.index('id="headline"') < page.index('id="curves"')
    assert re.search(r"\.curves img\{width:100%", page)
    area = build_html(area_run(tmp_path / "area"))[0]
    head = area[area.index('id="headline"') : area.index('id="curves"')]
    assert "held-out total reward, first eval" in head and "-3.000 -&gt; -2.000" in head


def test_plain_theme_is_the_default_and_festive_keeps_snow_off_the_data(run_dir):
    """Bug: the default festive theme's snowflakes looked like data points on an all-zero plot."""
    figs, _ = make_figures(run_dir, window=3)
    assert figs["training"].get_facecolor()[:3] == (1.0, 1.0, 1.0)
    assert "\u2744" not in figs["training"].get_suptitle()
    festive, _ = make_figures(run_dir, theme="festive", window=3)
    assert "\u2744" in festive["training"].get_suptitle()
    assert not any("\u2744" in t.get_text() for f in festive.values() for ax in f.axes for t in ax.texts)


def test_adversary_control_terms_equal_up_to_float32_are_drawn_once(tmp_path):
    """Bug: in the adversary plot, discount = solvability were drawn on top of each other (the logged
    values differ in float32's last bits)."""
    rows = []
    for s in range(1, 9):
        solv = [0.625, 0.5, 0.75, 0.875][s % 4]
        rows.append((s, "grpo", {"round_kind": "adversary", "adversary/reward/mean": 0.5 + 0.1 * s,
                                 "adversary/discount/mean": solv, "adversary/solvability/mean": solv - 2.2e-8,
                                 "adversary/realism/mean": 0.1 * (s % 3)}))  # fmt: skip
    figs, _ = make_figures(write_run(tmp_path / "adv", "adversarial", rows), window=3)
    labels = figs["adversary"].axes[0].get_legend_handles_labels()[1]
    assert labels == ["total reward", "discount = solvability", "realism"]
    assert figs["adversary"].axes[0].get_xlabel() == "round"


def test_no_eval_note_says_evaluation_was_off_when_the_config_says_so(tmp_path):
    """img2code-tiny sets train.eval_every: 0; plot and report printed "missing: ... no eval/*/mean
    metrics (train.eval_every = 0?)", a guess the run's config.yaml answers."""
    rows = [
        (s, "grpo", {"reward/mean": -1.0 + 0.1 * s, "reward/img2code/mean": -1.0 + 0.1 * s}) for s in (1, 2)
    ]
    run = write_run(tmp_path / "img2code", "img2code-tiny", rows)
    _, notes = make_figures(run, window=3)
    assert (
        "metrics.jsonl: no held-out evaluation during training (train.eval_every is 0 in config.yaml)"
        in notes
    )


def test_a_python_api_runs_eval_hint_names_data(tmp_path):
    """`vlmgrpo eval --output-dir RUN` alone stops on a GRPOTrainer run (no datasets in its
    config.yaml); the report's hint gave that command as it is."""
    from vlmgrpo import GRPOConfig
    from vlmgrpo.config import save_config

    run = tmp_path / "api"
    run.mkdir()
    save_config(GRPOConfig(output_dir=str(run), use_cpu=True).to_config(n_rows=8), run / "config.yaml")
    log = RunLog(run, tensorboard=False)
    log.log(1, "grpo", {"reward/mean": 0.5})
    log.close()
    _, notes = make_figures(run, window=3)
    assert (
        f"{run / 'ckpt_tests'}: no checkpoint evaluation (run `vlmgrpo eval --output-dir {run} --data TEST_SET.json`)"
        in notes
    )
