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
    assert "no eval/*/mean metrics" in out and "no checkpoint evaluation" in out
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
