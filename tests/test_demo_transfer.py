"""The cycle demo's transfer check (scenes-qa on base + every checkpoint) and the area demo's warm
start on coarse true areas, end to end on short budgets."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml

from vlmgrpo.cli import main
from vlmgrpo.commands import demo
from vlmgrpo.rewards.area import correctness, has_xml_format, parse_area
from vlmgrpo.warmup import AREA_COARSE_STEP, target_text

SHORT = [
    "train.steps=2", "train.eval_every=1", "train.save_every=1", "train.log_samples_every=0",
    "eval.num_items=2", "eval.num_chains=1", "rollout.prompts_per_step=1", "rollout.group_size=2",
    "rollout.max_new_tokens=6",
]  # fmt: skip


def _sets(values):
    return [a for s in values for a in ("--set", s)]


def test_area_coarse_target_is_a_valid_rounded_answer_that_fits_the_budget(tiny_vlm_dir):
    from transformers import AutoTokenizer

    from vlmgrpo.config import load_config
    from vlmgrpo.data import build_dataset

    cfg = load_config("area-tiny", list(demo.AREA_OVERRIDES))
    assert (cfg.warmup.target_field, cfg.warmup.steps) == ("area_coarse", 300)
    stream = build_dataset("area", cfg.data.kwargs, "train", 0)
    tok = AutoTokenizer.from_pretrained(tiny_vlm_dir)
    rng = np.random.default_rng(0)
    scores = []
    for _ in range(50):
        s = stream.sample(rng)
        t = target_text(s, "area_coarse")
        pred = parse_area(t)
        assert pred is not None and has_xml_format(t) and s["shape"] in t
        assert pred % AREA_COARSE_STEP == 0 and abs(pred - s["answer"]) <= AREA_COARSE_STEP / 2
        # + <|im_end|>: a target the sampler cannot finish would teach an answer GRPO never sees whole
        assert len(tok(t)["input_ids"]) + 1 <= cfg.rollout.max_new_tokens
        scores.append(correctness(pred, s["answer"]))
    assert 2.0 < np.mean(scores) < 3.0  # well above a guess, short of the ceiling: room for GRPO


def test_area_demo_warm_starts_then_runs_grpo(tiny_vlm_dir, tmp_path):
    import shutil

    from vlmgrpo.runlog import read_metrics

    out = tmp_path / "area"
    shutil.copytree(tiny_vlm_dir, out / "model")
    args = ["demo", "--task", "area", "--output-dir", str(out), "--set", "warmup.steps=3"]
    assert main(args + _sets(SHORT)) == 0
    rows = read_metrics(out / "metrics.jsonl")
    warm = [r for r in rows if r.get("phase") == "warmup"]
    assert [r["step"] for r in warm] == [1, 2, 3] and all(r["warmup/loss"] > 0 for r in warm)
    s = json.loads((out / "summary.json").read_text())
    assert s["metric"] == "eval/area_correctness/mean" and s["grpo_steps"] == 2 and s["ceiling"] == 3.0
    assert "transfer" not in s  # the scenes questions belong to the cycle demo
    c = s["ckpt_eval"]  # the task's own checkpoint evaluation, as `vlmgrpo eval` runs it
    assert c["task"] == "area" and list(c["scores"]) == ["base", "ckpt-1", "ckpt-2"]
    for name, score in c["scores"].items():
        r = json.loads((out / "ckpt_tests" / f"{name}.json").read_text())
        assert r["task"] == "area" and r["score"] == score and r["num_items"] == 2


def test_cycle_demo_reports_transfer_for_base_and_every_checkpoint(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(demo.TRANSFER_EVAL, "num_items", 2)
    monkeypatch.setitem(demo.TRANSFER_EVAL, "num_samples", 2)
    monkeypatch.setitem(demo.TRANSFER_EVAL, "ks", (1, 2))
    monkeypatch.setitem(demo.TRANSFER_EVAL, "max_new_tokens", 6)
    out = tmp_path / "demo"
    args = ["demo", "--output-dir", str(out), "--set", "warmup.steps=2", "--set", "warmup.eval_every=0"]
    assert main(args + _sets(SHORT)) == 0
    s = json.loads((out / "summary.json").read_text())
    t = s["transfer"]
    assert t["task"] == "scenes-qa" and t["questions"] == 6  # 2 scenes x 3 questions
    assert list(t["pass@1"]) == ["base", "ckpt-1", "ckpt-2"]
    assert all(0.0 <= v <= 1.0 for v in t["pass@1"].values())
    assert set(t["by_attribute"]["ckpt-2"]) == {"colour", "shape", "position"}
    assert t["chance"]["shape"] == pytest.approx(1 / 3)
    for name in t["pass@1"]:
        r = json.loads((out / "ckpt_tests" / f"{name}.json").read_text())
        assert r["task"] == "scenes-qa" and r["pass@1"] == t["pass@1"][name]
        assert t["describe"][name] == r["describe"]["by_attribute"]  # the demo's own prompt, graded
    printed = capsys.readouterr().out
    assert "transfer, pass@1 on 6 questions" in printed
    line = next(x for x in printed.splitlines() if "own descriptions name the right shape" in x)
    assert f"ckpt-2 {t['describe']['ckpt-2']['shape']:.3f}" in line
    # the report's results table shows both: the questions' and the descriptions' per attribute
    report = (out / "report.html").read_text()
    assert "<th>shape</th>" in report and "<th>describe_shape</th>" in report
    # the cycle demo's model (shape templates), and GRPO with a KL to the warm-started policy
    assert json.loads((out / "model" / "demo_model.json").read_text()) == demo.CYCLE_MODEL
    assert demo.CYCLE_MODEL["shape_filters"] > 0
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["grpo"]["beta"] > 0 and cfg["grpo"]["ref"]["kind"] == "copy"
    # its vision tower stays as built (warm start and GRPO train the rest), and the first stage of
    # the warm start names colour and shape
    from safetensors.torch import load_file

    built, trained = (
        load_file(out / "model" / "model.safetensors"),
        load_file(out / "ckpts" / "ckpt-2" / "model.safetensors"),
    )
    visual = [k for k in built if ".visual." in f".{k}"]
    assert visual and all(torch.equal(built[k], trained[k]) for k in visual)
    assert any(not torch.equal(built[k], trained[k]) for k in built if k not in visual)
    assert cfg["model"]["freeze_vision"] is True and cfg["warmup"]["target_field"].startswith("scene_shapes:")


def test_demo_shape_filters_switch_picks_the_model_and_is_cycle_only(tmp_path, monkeypatch, capsys):
    specs = []

    class Built(Exception):
        pass

    def build(task, model_dir):  # record which model the run would build, then stop before training
        specs.append(task.model_spec)
        raise Built

    monkeypatch.setattr(demo, "_build_model", build)
    for flag, spec in (([], demo.CYCLE_MODEL), (["--shape-filters"], demo.SHAPE_FILTERS_MODEL),
                       (["--no-shape-filters"], demo.DEMO_MODEL)):  # fmt: skip
        with pytest.raises(Built):
            main(["demo", "--output-dir", str(tmp_path / "c"), *flag])
        assert specs.pop() == spec
    assert main(["demo", "--task", "area", "--no-shape-filters", "--output-dir", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert "--[no-]shape-filters" in err and "--task area" in err and len(err.strip().splitlines()) == 1
    assert not specs and not (tmp_path / "a").exists()  # stopped before building or writing anything
