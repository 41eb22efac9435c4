"""bench/gpu_session.py, the GPU plan of issue #20, checked on the CPU before a device is spent on it."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import gpu_session as G  # noqa: E402

from vlmgrpo.config import load_config  # noqa: E402


@pytest.mark.parametrize("recipe", sorted(G.RECIPES))
def test_overrides_resolve_on_every_gpu_recipe(recipe: str, tmp_path: Path) -> None:
    """Every --set the plan passes names a real key and lands where the trainer reads it."""
    ov = G.recipe_overrides(recipe, tmp_path / "pol", tmp_path / "data", tmp_path / "m", 5)
    cfg = load_config(recipe, ov)
    assert cfg.model.name_or_path == str(tmp_path / "pol")
    assert cfg.train.steps == 5 and cfg.train.eval_every == 0
    if recipe in ("cycle-charxiv-local", "adversarial-charxiv"):
        kw = cfg.rewards[0].kwargs
        assert kw["generator"] == "diffusers"
        assert kw["generator_kwargs"]["model"] == str(tmp_path / "m" / "flux")
        assert kw["embedder_kwargs"]["model"] == str(tmp_path / "m" / "dino")
        assert cfg.data.kwargs["path"] == str(tmp_path / "data" / "charxiv")
    if recipe == "geometry3k":
        assert cfg.data.kwargs == {"path": str(tmp_path / "data" / "geometry3k")}


def test_step_costs_and_table_from_metrics(tmp_path: Path) -> None:
    run = tmp_path / "geometry3k" / "run"
    run.mkdir(parents=True)
    rows = [
        {"step": 1, "phase": "grpo", "time/step": 9.0, "time/rollout": 8.0, "time/update": 1.0},
        {"step": 2, "phase": "grpo", "time/step": 2.0, "time/rollout": 1.5, "time/update": 0.5},
        {"step": 3, "phase": "grpo", "time/step": 4.0, "time/rollout": 2.5, "time/update": 1.5},
    ]
    (run / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    c = G.step_costs(run)  # the first step (compilation, capture) is left out
    assert c == {
        "steps_timed": 2,
        "step_s": 3.0,
        "step_s_min_max": [2.0, 4.0],
        "steps_per_s": 0.3333,
        "phases_s": {"rollout": 2.0, "update": 1.0},
    }
    (run.parent / "row.json").write_text(json.dumps({"recipe": "geometry3k", "returncode": 0}))
    failed = tmp_path / "area"
    failed.mkdir()
    (failed / "row.json").write_text(json.dumps({"recipe": "area", "returncode": 1}))
    (failed / "train.log").write_text("...\nConfigError: boom\n")
    adv = tmp_path / "adversarial-charxiv" / "run"
    adv.mkdir(parents=True)
    rows = [{"round_kind": k, "time/step": t, "time/round": t} for k, t in
            [("base", 5.0), ("adversary", 7.0), ("base", 1.0), ("adversary", 3.0)]]  # fmt: skip
    (adv / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    (adv.parent / "row.json").write_text(json.dumps({"recipe": "adversarial-charxiv", "returncode": 0}))
    t = G.table(tmp_path)
    assert "| geometry3k | 3b | 2 | 3.0 (2.0-4.0) | 0.3333 | rollout 2.0, update 1.0 |" in t
    assert "| area | 7b | failed: ConfigError: boom |" in t
    # each kind of adversarial round warms up on its own and gets its own row
    assert "| adversarial-charxiv (base rounds) | 3b | 1 | 1.0 (1.0-1.0) | 1.0 | round 1.0 |" in t
    assert "| adversarial-charxiv (adversary rounds) | 3b | 1 | 3.0 (3.0-3.0) | 0.3333 | round 3.0 |" in t
    G.collect(tmp_path, tmp_path / "back")
    assert sorted(p.name for p in (tmp_path / "back").iterdir()) == [
        "trainer.json",
        "trainer.md",
        "trainer_logs.txt",
    ]
    back = json.loads((tmp_path / "back" / "trainer.json").read_text())
    assert (
        back["geometry3k"]["step_costs"]["None"]["step_s"] == 3.0 and len(back["geometry3k"]["metrics"]) == 3
    )

    # what came back from two calls: the later file's run of a recipe wins only if it finished
    (tmp_path / "later").mkdir()
    later = {
        "geometry3k": {"recipe": "geometry3k", "returncode": 124},  # timed out: the first run stays
        "area": {
            "recipe": "area",
            "returncode": 0,
            "metrics": [{"time/step": 9.0, "time/update": 9.0}, {"time/step": 7.0, "time/update": 7.0}],
        },
    }
    (tmp_path / "later" / "trainer.json").write_text(json.dumps(later))
    tj = G.table_json([tmp_path / "back" / "trainer.json", tmp_path / "later" / "trainer.json"])
    assert "| geometry3k | 3b | 2 | 3.0 (2.0-4.0) | 0.3333 | rollout 2.0, update 1.0 |" in tj
    assert "| area | 7b | 1 | 7.0 (7.0-7.0) | 0.1429 | update 7.0 |" in tj
    assert "failed" not in tj and tj.count("adversarial") == 2


@pytest.mark.slow
def test_tiny_chain_builds_data_and_models_and_times_the_trainer(tmp_path: Path) -> None:
    """The plan's chain with --tiny: synthetic data, a tiny policy, `vlmgrpo train` on geometry3k."""
    data = G.build_data(tmp_path / "data", n=4)
    assert (data / "charxiv" / "train_images").is_dir() and (data / "img2code" / "dataset.jsonl").is_file()
    pol = G.build_policy("3b", tmp_path / "pol", tiny=True)
    ov = G.recipe_overrides("geometry3k", pol, data, tmp_path, 3)
    tiny = ["rollout.max_new_tokens=8", "rollout.group_size=2", "train.device=cpu", "train.threads=1"]
    row = G.run_train("geometry3k", ov, tmp_path / "train" / "geometry3k", tiny)
    assert row["returncode"] == 0, (tmp_path / "train" / "geometry3k" / "train.log").read_text()[-2000:]
    assert G.step_costs(tmp_path / "train" / "geometry3k" / "run")["steps_timed"] == 2
