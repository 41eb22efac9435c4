"""Checkpoint evaluation: the pass@k estimator, and `vlmgrpo eval` on real tiny checkpoints.

Fast tests build a run folder from the tiny Qwen2.5-VL with the real checkpoint writer (full
weights and a LoRA adapter); the slow test trains a real tiny run with `Trainer(cfg).fit()` first.
Judges: `rules` offline, and `llm` against the local test server of test_judges.py (which answers
with malformed JSON, a 500 or a timeout for marked questions).
"""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import pytest
from test_judges import JudgeServer

from vlmgrpo.cli import main
from vlmgrpo.errors import ConfigError
from vlmgrpo.evaluate import EvalOptions, item_stats, pass_at_k, resolve_task, summarize_items

# the charts benchmark on a demo-recipe run (whose default is scenes-qa): `--task charts` still works
FAST = ["--task", "charts", "--num-items", "2", "--num-samples", "2", "--k", "1,2", "--max-new-tokens", "6"]


# --------------------------------------------------------------------------- pass@k


def brute_pass_at_k(n: int, c: int, k: int) -> float:
    """The definition: P(a random k-subset of the n samples holds a correct one)."""
    samples = [1] * c + [0] * (n - c)
    subsets = list(itertools.combinations(range(n), k))
    return sum(any(samples[i] for i in s) for s in subsets) / len(subsets)


def test_pass_at_k_hand_checked_cases():
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)
    assert pass_at_k(5, 2, 2) == pytest.approx(1 - 3 / 10)  # 1 - C(3,2)/C(5,2)
    assert pass_at_k(4, 1, 2) == pytest.approx(0.5)  # 1 - C(3,2)/C(4,2) = 1 - 3/6
    assert pass_at_k(10, 2, 5) == pytest.approx(1 - 56 / 252)  # 1 - C(8,5)/C(10,5)
    assert pass_at_k(10, 0, 10) == 0.0
    assert pass_at_k(10, 10, 1) == 1.0
    assert pass_at_k(5, 4, 2) == 1.0  # n - c < k: every pair holds a correct sample


def test_pass_at_k_matches_the_definition_and_c_over_n():
    for n in range(1, 9):
        for c in range(n + 1):
            assert pass_at_k(n, c, 1) == pytest.approx(c / n)
            for k in range(1, n + 1):
                assert pass_at_k(n, c, k) == pytest.approx(brute_pass_at_k(n, c, k))
    assert math.isfinite(pass_at_k(2000, 7, 100))  # exact integers: no overflow for large n


def test_pass_at_k_rejects_impossible_inputs():
    for n, c, k in [(5, 6, 1), (5, -1, 1), (5, 2, 6), (5, 2, 0)]:
        with pytest.raises(ValueError):
            pass_at_k(n, c, k)


def test_ungraded_samples_are_excluded_from_n():
    st = item_stats([1, 0, -1, -1], ks=(1, 2, 3))
    assert (st["graded"], st["correct"], st["ungraded"], st["pass@1"]) == (2, 1, 2, 0.5)
    assert set(st["pass@k"]) == {"1", "2"}  # pass@3 needs 3 graded samples
    none = item_stats([-1, -1], ks=(1,))
    assert none["pass@1"] is None and none["pass@k"] == {}
    overall = summarize_items([st, none, item_stats([1, 1], (1, 2))], ks=(1, 2))
    assert overall["pass@1"] == pytest.approx(0.75)  # mean over items that have grades
    assert overall["ungraded"] == 4 and overall["items_without_grades"] == 1
    assert overall["pass@k"]["2"] == pytest.approx((1.0 + 1.0) / 2)


# --------------------------------------------------------------------------- run folders


def make_run(root: Path, model_dir: Path, lora: bool = False) -> Path:
    """A run folder like the trainer's: config.yaml and complete checkpoints written by the real
    checkpoint code (ckpt-1; an interrupted ckpt-3 that eval must ignore)."""
    import torch

    from vlmgrpo.checkpoint import save_checkpoint
    from vlmgrpo.config import load_config, save_config
    from vlmgrpo.models import load_policy

    overrides = [f"model.name_or_path={model_dir}", f"train.output_dir={root}", "data.image_max_side=56"]
    cfg = load_config("demo", overrides + (["model.lora.enabled=true"] if lora else []))
    root.mkdir(parents=True)
    save_config(cfg, root / "config.yaml")
    model, proc = load_policy(cfg.model)
    with torch.no_grad():  # make the checkpoint differ from the base model
        for name, p in model.named_parameters():
            if p.requires_grad and (not lora or "lora_B" in name):
                p.add_(0.05)
    save_checkpoint(root / "ckpts", 1, {"": (model, proc)}, {})
    (root / "ckpts" / "ckpt-3").mkdir()  # no COMPLETE marker: an interrupted write
    return root


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_vlm_dir):
    return make_run(tmp_path_factory.mktemp("evalrun") / "run", tiny_vlm_dir)


def test_eval_rules_on_checkpoints(run_dir, capsys):
    assert main(["eval", "--output-dir", str(run_dir), *FAST]) == 0
    out = capsys.readouterr().out
    assert "base" in out and "ckpt-1" in out
    results = {p.stem: json.loads(p.read_text()) for p in (run_dir / "ckpt_tests").glob("*.json")}
    assert set(results) == {"base", "ckpt-1"}  # ckpt-3 is incomplete: ignored
    r = results["ckpt-1"]
    assert (r["step"], r["task"], r["judge"], r["num_items"], r["samples_per_item"]) == (
        1,
        "charts",
        "rules",
        2,
        2,
    )
    assert r["temperature"] == 0.7 and r["system"].startswith("You are a helpful assistant that answers")
    assert set(r["pass@k"]) == {"1", "2"} and 0.0 <= r["pass@1"] <= 1.0
    item = r["items"][0]
    assert {"question", "ground_truth", "completions", "pass@1", "inst_category"} <= set(item)
    assert len(item["completions"]) == 2
    assert all({"text", "score", "extracted_answer"} <= set(c) for c in item["completions"])
    assert item["pass@1"] == sum(c["score"] for c in item["completions"]) / 2
    assert results["base"]["items"][0]["question"] == item["question"]  # the same fixed items

    before = (run_dir / "ckpt_tests" / "ckpt-1.json").stat().st_mtime_ns
    assert main(["eval", "--output-dir", str(run_dir), *FAST]) == 0
    assert "already evaluated" in capsys.readouterr().out
    assert (run_dir / "ckpt_tests" / "ckpt-1.json").stat().st_mtime_ns == before
    assert main(["eval", "--output-dir", str(run_dir), *FAST, "--force", "--no-base"]) == 0
    assert (run_dir / "ckpt_tests" / "ckpt-1.json").stat().st_mtime_ns != before


def test_lora_checkpoint_loads_base_plus_adapter(tmp_path, tiny_vlm_dir):
    import torch

    from vlmgrpo.config import config_from_file
    from vlmgrpo.evaluate import load_model

    run = make_run(tmp_path / "lora-run", tiny_vlm_dir, lora=True)
    ckpt = run / "ckpts" / "ckpt-1"
    assert (ckpt / "adapter_config.json").is_file()
    cfg = config_from_file(run / "config.yaml")
    base, _ = load_model(cfg, None, "cpu")
    tuned, _ = load_model(cfg, ckpt, "cpu")
    name = next(n for n, _ in base.named_parameters() if "q_proj.weight" in n and "visual" not in n)
    w_base, w_tuned = dict(base.named_parameters())[name], dict(tuned.named_parameters())[name]
    assert not torch.allclose(w_base, w_tuned)  # the adapter was applied (and merged)
    assert main(["eval", "--output-dir", str(run), *FAST, "--no-base", "--num-items", "1"]) == 0
    assert json.loads((run / "ckpt_tests" / "ckpt-1.json").read_text())["pass@1"] is not None


def write_marked_test_set(root: Path) -> Path:
    """A CharXiv-style test set whose questions carry the test server's markers."""
    from vlmgrpo.data.charts import make_entry, render

    (root / "images").mkdir(parents=True)
    entries = []
    for i, marker in enumerate(["right", "malformed", "500", "timeout"]):
        e = make_entry(i, "test", 0)
        render(e["spec"], 120, 90).save(root / "images" / f"{i}.png")
        entries.append(
            {
                "figure_id": i,
                "image_path": f"images/{i}.png",
                "descriptive_questions": [],
                "reasoning_question": {
                    "question": f"[[{marker}]] What is shown?",
                    "answer": "7",
                    "inst_category": 3,
                },
            }
        )
    (root / "test_set.json").write_text(json.dumps(entries))
    return root / "test_set.json"


def test_eval_llm_judge_counts_ungraded_and_finishes(run_dir, tmp_path, capsys):
    data = write_marked_test_set(tmp_path / "marked")
    results = tmp_path / "results"
    with JudgeServer(slow_s=3.0) as srv:
        args = ["eval", "--output-dir", str(run_dir), "--data", str(data), "--results-dir", str(results),
                "--num-items", "4", "--num-samples", "2", "--k", "1,2", "--max-new-tokens", "6", "--no-base",
                "--judge-base-url", srv.url, "--judge-timeout", "1.0", "--judge-attempts", "2",
                "--judge-backoff", "0.01"]  # fmt: skip
        assert main(args) == 0
        assert "6 completion(s) ungraded" in capsys.readouterr().out
        r = json.loads((results / "ckpt-1.json").read_text())
        assert (r["task"], r["judge"]) == ("charxiv", "llm")  # a plain test set: CharXiv defaults
        assert r["ungraded"] == 6 and r["graded"] == 2 and r["items_without_grades"] == 3
        assert r["pass@1"] == 1.0 and r["pass@k"] == {"1": 1.0, "2": 1.0}  # over graded items only
        by_q = {it["question"][:12]: it for it in r["items"]}
        assert by_q["[[right]] Wh"]["pass@1"] == 1.0
        assert all(c["score"] == -1 and c["error"] for c in by_q["[[500]] What"]["completions"])
        assert any("unparsable" in e for e in r["judge_errors"]) and any(
            "timed out" in e for e in r["judge_errors"]
        )
        assert srv.counts["timeout"] >= 2  # retried
        assert (run_dir / "judge_cache").is_dir()  # default cache: RUN/judge_cache

        right_before, failing_before = srv.counts["right"], srv.counts["500"]
        assert main([*args, "--regrade"]) == 0
        assert srv.counts["right"] == right_before  # graded answers are not asked again
        assert srv.counts["500"] > failing_before  # ungraded ones are
    assert "re-graded" in capsys.readouterr().out


def test_task_resolution(run_dir, tmp_path):
    from vlmgrpo.config import config_from_file
    from vlmgrpo.data.charts import write_test_set

    cfg = config_from_file(run_dir / "config.yaml")
    # bug: a run on the synthetic scenes (a scene describer) defaulted to the charts benchmark
    assert resolve_task(EvalOptions(), cfg) == "scenes-qa"
    cfg.data.dataset = "folder"  # other data without questions keep the offline charts benchmark
    assert resolve_task(EvalOptions(), cfg) == "charts"
    path = write_test_set(tmp_path / "charts", 1, width=100, height=80)
    assert resolve_task(EvalOptions(data=str(path)), cfg) == "charts"
    with pytest.raises(ConfigError, match="unknown eval task"):
        resolve_task(EvalOptions(task="chrts"), cfg)


def test_eval_on_a_folder_without_config_is_a_one_line_error(tmp_path, capsys):
    assert main(["eval", "--output-dir", str(tmp_path)]) == 2
    assert "no config.yaml" in capsys.readouterr().err


@pytest.mark.slow
def test_eval_on_a_real_trained_run(tmp_path, tiny_vlm_dir, capsys):
    """The issue's end-to-end: train a tiny demo run, then evaluate its checkpoints (rules and llm)."""
    from vlmgrpo.config import load_config
    from vlmgrpo.trainer import Trainer

    run = tmp_path / "run"
    cfg = load_config(
        "demo",
        [f"model.name_or_path={tiny_vlm_dir}", f"train.output_dir={run}", "train.steps=2", "train.save_every=1",
         "warmup.steps=0", "eval.num_items=4", "rollout.prompts_per_step=2"],
    )  # fmt: skip
    Trainer(cfg).fit()
    assert main(["eval", "--output-dir", str(run), *FAST]) == 0
    names = sorted(p.stem for p in (run / "ckpt_tests").glob("*.json"))
    assert names == ["base", "ckpt-1", "ckpt-2"]
    data = write_marked_test_set(tmp_path / "marked")
    with JudgeServer(slow_s=3.0) as srv:
        assert main(["eval", "--output-dir", str(run), "--data", str(data), "--results-dir", str(tmp_path / "llm"),
                     "--num-items", "4", "--num-samples", "2", "--max-new-tokens", "6", "--judge", "llm",
                     "--judge-base-url", srv.url, "--judge-timeout", "1.0", "--judge-attempts", "2",
                     "--judge-backoff", "0.01"]) == 0  # fmt: skip
    for name in names:
        r = json.loads((tmp_path / "llm" / f"{name}.json").read_text())
        assert r["ungraded"] == 6 and r["pass@1"] == 1.0
    from vlmgrpo.report.plots import plot_run

    files, notes = plot_run(run, window=2)
    assert {f.stem for f in files} >= {"training", "checkpoints"}


# --------------------------------------------------------------------------- the run's own task and settings


def make_area_run(root: Path, model_dir: Path) -> Path:
    """An area-tiny run folder with one checkpoint (the base weights), as the trainer writes it."""
    from vlmgrpo.checkpoint import save_checkpoint
    from vlmgrpo.config import load_config, save_config
    from vlmgrpo.models import load_policy

    cfg = load_config("area-tiny", [f"model.name_or_path={model_dir}", f"train.output_dir={root}"])
    root.mkdir(parents=True)
    save_config(cfg, root / "config.yaml")
    save_checkpoint(root / "ckpts", 2, {"": load_policy(cfg.model)}, {})
    return root


def test_eval_uses_the_runs_own_eval_settings(tmp_path, tiny_vlm_dir, capsys):
    """Bug: on an area run `vlmgrpo eval` used temperature 0.7, 512 tokens and 10 items instead of the
    recipe's 0, 24 and 16, and recorded the chart assistant's system prompt."""
    from vlmgrpo.config import config_from_file

    run = make_area_run(tmp_path / "area", tiny_vlm_dir)
    cfg = config_from_file(run / "config.yaml")
    assert main(["eval", "--output-dir", str(run), "--no-base"]) == 0
    assert "pass@5" not in capsys.readouterr().out  # no note about k the user did not ask for
    r = json.loads((run / "ckpt_tests" / "ckpt-2.json").read_text())
    assert (r["task"], r["temperature"], r["max_new_tokens"]) == ("area", 0.0, 24)
    assert (r["num_items"], r["samples_per_item"]) == (cfg.eval.num_items, cfg.eval.num_chains) == (16, 1)
    assert r["system"] == cfg.prompt.system and "charts" not in r["system"]
    assert r["grader"] == "seed's strict area rewards" and "area rewards" in r["metric"]
    assert len(r["items"]) == 16 and isinstance(r["score"], float)
    # the command line wins
    args = ["eval", "--output-dir", str(run), "--no-base", "--force", "--num-items", "2", "--temperature", "0.5",
            "--max-new-tokens", "5", "--system", "Be brief."]  # fmt: skip
    assert main(args) == 0
    r = json.loads((run / "ckpt_tests" / "ckpt-2.json").read_text())
    assert (r["num_items"], r["temperature"], r["max_new_tokens"], r["system"]) == (2, 0.5, 5, "Be brief.")


def test_a_damaged_checkpoint_is_one_line_and_the_others_are_evaluated(tmp_path, tiny_vlm_dir, capsys):
    """Bug: a checkpoint cut short after its COMPLETE marker (disk full, a copy) stopped `vlmgrpo
    eval` with safetensors' traceback, before the later checkpoints were evaluated."""
    from vlmgrpo.checkpoint import save_checkpoint
    from vlmgrpo.config import config_from_file
    from vlmgrpo.models import load_policy

    run = make_area_run(tmp_path / "area", tiny_vlm_dir)
    save_checkpoint(run / "ckpts", 4, {"": load_policy(config_from_file(run / "config.yaml").model)}, {})
    weights = run / "ckpts" / "ckpt-2" / "model.safetensors"
    with open(weights, "r+b") as f:
        f.truncate(1000)
    args = ["eval", "--output-dir", str(run), "--no-base", "--num-items", "2", "--max-new-tokens", "4"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "ckpt-2: checkpoint is damaged (model.safetensors: truncated" in err[0], err
    assert sorted(p.stem for p in (run / "ckpt_tests").glob("*.json")) == ["ckpt-4"]  # the later one ran


def test_a_greedy_task_records_the_settings_it_ran_with(tmp_path, tiny_vlm_dir, capsys):
    """Bug: geometry is evaluated greedily, one answer per item (the line printed said so), but its
    result file recorded the run's eval settings (geometry-tiny: 4 samples at temperature 1.0)."""
    from vlmgrpo.checkpoint import save_checkpoint
    from vlmgrpo.config import load_config, save_config
    from vlmgrpo.data import geometry_synthetic
    from vlmgrpo.models import load_policy

    run = tmp_path / "geo"
    geometry_synthetic.write(tmp_path / "data", 2, 2, seed=0)
    cfg = load_config("geometry-tiny", [f"model.name_or_path={tiny_vlm_dir}", f"train.output_dir={run}",
                                        f"data.kwargs.path={tmp_path / 'data'}"])  # fmt: skip
    assert (cfg.eval.num_chains, cfg.eval.temperature) == (4, 1.0)  # what the file used to claim
    run.mkdir()
    save_config(cfg, run / "config.yaml")
    save_checkpoint(run / "ckpts", 1, {"": load_policy(cfg.model)}, {})
    args = ["eval", "--output-dir", str(run), "--no-base", "--num-items", "1", "--max-new-tokens", "4"]
    assert main(args) == 0
    assert "1 items, greedy, 1 answer each" in capsys.readouterr().out
    r = json.loads((run / "ckpt_tests" / "ckpt-1.json").read_text())
    assert (r["task"], r["samples_per_item"], r["temperature"]) == ("geometry", 1, 0.0)


def test_a_python_api_run_asks_for_a_task_instead_of_grading_scenes(tmp_path, capsys):
    """A GRPOTrainer run's config.yaml keeps the schema's default data.dataset (scenes): `vlmgrpo
    eval` graded its checkpoints on synthetic-scene questions, naming them as the run's own task."""
    from vlmgrpo import GRPOConfig
    from vlmgrpo.config import save_config

    run = tmp_path / "api-run"
    run.mkdir()
    save_config(GRPOConfig(output_dir=str(run), use_cpu=True).to_config(n_rows=8), run / "config.yaml")
    assert main(["eval", "--output-dir", str(run)]) == 2
    err = capsys.readouterr().err
    assert f"{run / 'config.yaml'}: trained from Python (GRPOTrainer)" in err and "--task charts" in err
    assert not (run / "ckpt_tests").exists()


def test_eval_will_not_mix_two_tasks_in_one_results_folder(run_dir, capsys):
    assert main(["eval", "--output-dir", str(run_dir), *FAST]) == 0  # charts (or already there)
    assert main(["eval", "--output-dir", str(run_dir), *FAST, "--task", "rewards"]) == 2
    err = capsys.readouterr().err
    assert "holds a 'charts' evaluation" in err and "--results-dir" in err


def test_resolve_options_benchmark_keeps_seed_a_defaults(run_dir):
    from vlmgrpo.config import config_from_file
    from vlmgrpo.evaluate import SYSTEM_PROMPT, resolve_options

    cfg = config_from_file(run_dir / "config.yaml")
    o, _ = resolve_options(EvalOptions(), cfg, "charts")
    assert (o.num_items, o.num_samples, o.temperature, o.max_new_tokens) == (10, 10, 0.7, 512)
    assert o.system == SYSTEM_PROMPT and o.ks == (1, 5, 10)
    o, run_cfg = resolve_options(EvalOptions(num_samples=2), cfg, "rewards")
    assert (o.num_items, o.num_samples, o.temperature) == (cfg.eval.num_items, 2, cfg.eval.temperature)
    assert o.ks == (1,) and run_cfg.eval.num_chains == 2 and cfg.eval.num_chains != 2  # a copy


def test_resolve_options_scenes_qa_takes_the_demo_transfer_check_settings(run_dir):
    from vlmgrpo.commands.demo import TRANSFER_EVAL
    from vlmgrpo.config import config_from_file
    from vlmgrpo.evaluate import resolve_options

    cfg = config_from_file(run_dir / "config.yaml")
    o, _ = resolve_options(EvalOptions(), cfg, "scenes-qa")
    assert (o.num_items, o.num_samples, o.temperature, o.max_new_tokens) == (32, 4, 1.0, 24)
    assert o.ks == (1, 4) == TRANSFER_EVAL["ks"] and o.system == cfg.prompt.system
    o, _ = resolve_options(EvalOptions(num_items=2, num_samples=2, ks=(1, 2, 4)), cfg, "scenes-qa")
    assert (o.num_items, o.num_samples, o.ks) == (2, 2, (1, 2))  # the command line wins
