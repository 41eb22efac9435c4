"""The path a user walks after `make demo`, for every offline recipe: train, eval, plot, report.

Each offline recipe trains a tiny run through the CLI (`vlmgrpo train --recipe NAME --set ...`: two
GRPO steps, a short warm start where the recipe has one), then `vlmgrpo eval`, `vlmgrpo plot` and
`vlmgrpo report` run on its folder as a user would run them. The tiny models and sample data are
built here with the project's builders and passed with `--set model.name_or_path=...`, so the test
works whether or not a recipe builds its own missing model. The fast version keeps every run to
seconds (eval: 1-2 items, few tokens); `test_full_path_with_the_recipes_eval_settings` (slow) runs
longer and evaluates with the recipe's own eval settings.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from vlmgrpo.cli import main

# every packaged recipe is one or the other: a new recipe must be added to one of them
OFFLINE = {"demo", "adversarial", "area-tiny", "img2code-tiny", "geometry-tiny"}
NEEDS_NETWORK_OR_GPU = {
    "adversarial-charxiv",
    "area",
    "area-rotated",
    "area-wide",
    "cycle-charxiv",
    "cycle-charxiv-local",
    "geometry3k",
    "geometry3k-dapo",
    "geometry3k-seed-weights",
    "geometry3k-sr1",
    "img2code",
}
# what each recipe's checkpoint evaluation is graded on, and its headline number
EXPECTED_TASK = {
    "demo": ("scenes-qa", "pass@1"),  # synthetic scenes: questions about held-out scenes, not charts
    "adversarial": ("scenes-qa", "pass@1"),
    "area-tiny": ("area", "score"),
    "img2code-tiny": ("img2code", "score"),
    "geometry-tiny": ("geometry", "pass@1"),
    "geometry3k-sr1": ("geometry", "pass@1"),
}
FAST_EVAL = ["--num-items", "2", "--num-samples", "2", "--max-new-tokens", "8"]


def test_every_packaged_recipe_is_classified():
    from vlmgrpo.config import list_recipes

    names = set(list_recipes())
    unknown = names - OFFLINE - NEEDS_NETWORK_OR_GPU
    assert not unknown, f"classify the new recipe(s) {sorted(unknown)} in this module"
    assert names >= OFFLINE


@pytest.fixture(scope="module")
def built(tmp_path_factory, tiny_vlm_dir, tiny_qwen3_vl_dir, tiny_text_lm_dir) -> dict[str, Path]:
    """The tiny models and data the offline recipes name, built with the project's builders."""
    from vlmgrpo.commands.demo import build_demo_model
    from vlmgrpo.data.img2code import create_sample

    root = tmp_path_factory.mktemp("built")
    demo = build_demo_model(root / "demo-model")
    from vlmgrpo.data.geometry_synthetic import write

    data = create_sample(root / "img2code-data", n=8, seed=0)
    write(root / "geometry-synthetic", n=8, n_eval=4)
    return {"demo": demo, "qwen2_5_vl": tiny_vlm_dir, "qwen3_vl": tiny_qwen3_vl_dir, "lm": tiny_text_lm_dir,
            "img2code_data": data.parent, "geometry_synthetic": root / "geometry-synthetic"}  # fmt: skip


def overrides(recipe: str, built: dict[str, Path], steps: int = 2) -> list[str]:
    """`--set` pairs that point a recipe at the built models and keep its run to seconds."""
    common = [f"train.steps={steps}", f"train.save_every={steps}", "train.log_samples_every=1",
              "train.threads=1", "rollout.prompts_per_step=2"]  # fmt: skip
    per = {
        "demo": [f"model.name_or_path={built['demo']}", "train.eval_every=1", "eval.num_items=4",
                 "warmup.steps=4", "warmup.eval_every=2", "warmup.target_field=scene_colors:2,description"],
        "adversarial": [f"model.name_or_path={built['demo']}", f"extra.adversary.model.name_or_path={built['lm']}",
                        "train.eval_every=2", "eval.num_items=4", "warmup.steps=2",
                        "extra.adversary.warmup.steps=2", "extra.adversary.eval.num_chains=2"],
        "area-tiny": [f"model.name_or_path={built['qwen2_5_vl']}", "train.eval_every=1", "eval.num_items=2"],
        "img2code-tiny": [f"model.name_or_path={built['qwen3_vl']}", f"data.kwargs.path={built['img2code_data']}"],
        "geometry-tiny": [f"model.name_or_path={built['qwen3_vl']}", f"data.kwargs.path={built['geometry_synthetic']}",
                          "warmup.steps=2", "rollout.max_new_tokens=8", "rollout.group_size=2",
                          "train.eval_every=0", "eval.num_items=2"],
        # a GPU recipe on the tiny model and a local InterGPS folder: the geometry family's eval path
        "geometry3k-sr1": [f"model.name_or_path={built['qwen2_5_vl']}", f"data.kwargs.path={built.get('geometry')}",
                           "model.dtype=float32", "rollout.max_new_tokens=8", "rollout.group_size=2",
                           "train.eval_every=0", "eval.num_items=2", "optim.token_budget=0",
                           "optim.share_vision=false"],
    }[recipe]  # fmt: skip
    out = []
    for pair in common + per:
        out += ["--set", pair]
    return out


def walk(recipe: str, run: Path, built: dict[str, Path], capsys, eval_args: list[str], steps: int = 2) -> str:
    """train -> eval -> plot -> report through the CLI; returns the report page. Checks what a user sees."""
    assert (
        main(["train", "--recipe", recipe, "--output-dir", str(run), *overrides(recipe, built, steps)]) == 0
    )
    capsys.readouterr()
    assert main(["eval", "--output-dir", str(run), *eval_args]) == 0
    out = capsys.readouterr().out
    results = {p.stem: json.loads(p.read_text()) for p in (run / "ckpt_tests").glob("*.json")}
    assert set(results) == {"base", f"ckpt-{steps}"}, out
    task, key = EXPECTED_TASK[recipe]
    for r in results.values():
        assert r["task"] == task and isinstance(r[key], float), r
        assert r["grader"] and "None" not in r["grader"]
    assert main(["plot", "--output-dir", str(run), "--formats", "png"]) == 0
    out = capsys.readouterr().out
    assert "no checkpoint evaluation" not in out and "pass@1 results" not in out
    figures = {p.stem for p in (run / "plots").glob("*.png")}
    assert {"training", "checkpoints"} <= figures, figures  # components: only those that changed
    assert main(["report", "--output-dir", str(run)]) == 0
    page = (run / "report.html").read_text()
    # the headline leads, the evaluation table has the task and its grader, never "None"
    assert page.index('id="headline"') < page.index('id="curves"') < page.index('id="eval"')
    assert re.search(r'class="headline".*?<b>', page, re.S)
    assert f"<td class='l'>{task} / " in page and "/ None" not in page
    assert "no checkpoint evaluation" not in page.lower()
    return page


@pytest.mark.parametrize("recipe", sorted(OFFLINE))
def test_train_eval_plot_report(recipe, tmp_path, built, capsys):
    page = walk(recipe, tmp_path / recipe, built, capsys, FAST_EVAL)
    if recipe in ("demo", "adversarial"):  # cycle runs: gap closed, ceiling and shuffled lead
        head = page[page.index('id="headline"') : page.index('id="curves"')]
        for label in ("gap to the ceiling closed", "first eval", "last evals", "ceiling", "shuffled control"):
            assert label in head
    if recipe == "demo":
        assert (tmp_path / recipe / "plots" / "warmup.png").is_file()
    if recipe == "adversarial":
        assert (tmp_path / recipe / "plots" / "adversary.png").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("recipe", sorted(OFFLINE))
def test_full_path_with_the_recipes_eval_settings(recipe, tmp_path, built, capsys):
    """Longer runs, evaluated with no eval options: the recipe's own settings are used and recorded."""
    from vlmgrpo.config import config_from_file

    run = tmp_path / recipe
    walk(recipe, run, built, capsys, [], steps=6)
    cfg = config_from_file(run / "config.yaml")
    r = json.loads((run / "ckpt_tests" / "ckpt-6.json").read_text())
    if EXPECTED_TASK[recipe][0] == "scenes-qa":  # the cycle demo's transfer-check settings
        from vlmgrpo.tasks.scene_qa_eval import SCENE_QA_DEFAULTS as d

        assert (r["temperature"], r["samples_per_item"]) == (d["temperature"], d["num_samples"])
        assert r["max_new_tokens"] == d["max_new_tokens"] and r["system"] == cfg.prompt.system
    elif EXPECTED_TASK[recipe][0] != "charts":  # a benchmark keeps seed A's settings
        assert r["temperature"] == cfg.eval.temperature and r["samples_per_item"] == cfg.eval.num_chains
        assert r["max_new_tokens"] == (cfg.eval.max_new_tokens or cfg.rollout.max_new_tokens)
        assert r["system"] == cfg.prompt.system


def test_geometry_family_with_local_data(tmp_path, built, capsys):
    """geometry3k-sr1 needs the hub's data and a GPU; with a local InterGPS folder and the tiny model its
    train -> eval (greedy, graded like the rewards) -> plot -> report path runs here."""
    from test_geometry import write_intergps

    root = tmp_path / "g3k"
    for split in ("train", "test"):
        write_intergps(root, split, 3)
    walk("geometry3k-sr1", tmp_path / "run", built | {"geometry": root}, capsys, FAST_EVAL)
    r = json.loads((tmp_path / "run" / "ckpt_tests" / "ckpt-2.json").read_text())
    assert r["grader"] == "geometry grader" and len(r["predictions"]) == 2
