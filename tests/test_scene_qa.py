"""The `scenes-qa` transfer benchmark: questions from the scene generator's ground truth, graded by
rules, and `vlmgrpo eval --task scenes-qa` on a real tiny checkpoint."""

from __future__ import annotations

import json

import numpy as np
import pytest

from vlmgrpo.cli import main
from vlmgrpo.data.scene_qa import CHANCE, grade, mentioned, questions
from vlmgrpo.data.scenes import Scene, SceneObject, describe, draw, random_scene


def _sample(*objects: SceneObject) -> dict:
    scene = Scene(tuple(objects))
    return {"id": "s", "images": [draw(scene, 84)], "description": describe(scene), "scene": scene.to_dict()}


def test_a_true_description_answers_all_three_questions():
    obj = SceneObject(shape="triangle", color="purple", size="large", row=0, col=0)
    qs = questions(_sample(obj))
    assert [(q["attribute"], q["answer"]) for q in qs] == [
        ("colour", "purple"),
        ("shape", "triangle"),
        ("position", "top left"),
    ]
    assert all(len(q["images"]) == 1 and q["question"].endswith("?") for q in qs)
    text = describe(Scene((obj,)))  # "a large purple triangle at the top left"
    assert [grade(text, q["attribute"], q["answer"]) for q in qs] == [
        (1, "purple"),
        (1, "triangle"),
        (1, "top left"),
    ]


def test_every_held_out_style_scene_grades_its_own_description_correct():
    rng = np.random.default_rng(0)
    for _ in range(200):
        s = _sample(*random_scene(rng, max_objects=1).objects)
        assert all(grade(s["description"], q["attribute"], q["answer"])[0] == 1 for q in questions(s))


def test_wrong_hedged_and_empty_answers_score_zero():
    assert grade("blue", "colour", "red") == (0, "blue")
    assert grade("red or blue", "colour", "red") == (0, None)  # a hedge names two values
    assert grade("", "shape", "circle") == (0, None)
    assert grade("redish thing", "colour", "red") == (0, None)  # whole words only
    # positions match longest first: "top left" is one value, not top + left
    assert mentioned("at the top left", "position") == ["top left"]
    assert grade("at the top", "position", "top left") == (0, "top")
    assert grade("top left and bottom", "position", "top left") == (0, None)
    assert grade("In the centre.", "position", "center") == (1, "center")
    assert grade("Two Circles!", "shape", "circle") == (1, "circle")


def test_scenes_with_several_objects_give_no_questions():
    a = SceneObject(shape="circle", color="red", size="small", row=0, col=0)
    b = SceneObject(shape="square", color="blue", size="large", row=2, col=2)
    assert questions(_sample(a, b)) == []
    assert pytest.approx({"colour": 1 / 6, "shape": 1 / 3, "position": 1 / 9}) == CHANCE


def _scenes_run(root, model_dir):
    """A demo-recipe run folder (held-out scenes as eval data) with one checkpoint."""
    from vlmgrpo.checkpoint import save_checkpoint
    from vlmgrpo.config import load_config, save_config
    from vlmgrpo.models import load_policy

    cfg = load_config("demo", [f"model.name_or_path={model_dir}", f"train.output_dir={root}"])
    root.mkdir(parents=True)
    save_config(cfg, root / "config.yaml")
    save_checkpoint(root / "ckpts", 3, {"": load_policy(cfg.model)}, {})
    return root


def test_eval_scenes_qa_grades_every_answer_by_the_rules(tmp_path, tiny_vlm_dir):
    run = _scenes_run(tmp_path / "demo", tiny_vlm_dir)
    args = ["eval", "--output-dir", str(run), "--task", "scenes-qa", "--num-items", "2", "--num-samples", "2",
            "--k", "1,2", "--max-new-tokens", "6"]  # fmt: skip
    assert main(args) == 0
    for name in ("base", "ckpt-3"):
        r = json.loads((run / "ckpt_tests" / f"{name}.json").read_text())
        assert r["task"] == "scenes-qa" and "held-out scenes" in r["metric"]
        assert len(r["items"]) == 6 and r["graded"] == 12  # 2 scenes x 3 questions x 2 answers
        assert {it["attribute"] for it in r["items"]} == {"colour", "shape", "position"}
        for it in r["items"]:
            for c in it["completions"]:
                assert (c["score"], c["extracted_answer"]) == grade(
                    c["text"], it["attribute"], it["ground_truth"]
                )
        per = [it["pass@1"] for it in r["items"]]
        assert r["pass@1"] == pytest.approx(sum(per) / len(per))
        assert set(r["by_attribute"]) == {"colour", "shape", "position"}
        assert r["colour"] == r["by_attribute"]["colour"]["pass@1"]
        # the run's own prompt on the same scenes, each description graded for every attribute
        d = r["describe"]
        assert d["prompt"] == "Describe this image." and len(d["items"]) == 2
        for it in d["items"]:
            assert len(it["completions"]) == 2
            for text, g in zip(it["completions"], it["grades"]):
                assert g == {a: grade(text, a, it["truth"][a])[0] for a in ("colour", "shape", "position")}
        for a in ("colour", "shape", "position"):
            mean = sum(g[a] for it in d["items"] for g in it["grades"]) / 4
            assert d["by_attribute"][a] == r[f"describe_{a}"] == pytest.approx(mean)
    # the questions are about the run's own held-out scenes (the demo recipe's eval data)
    from vlmgrpo.config import config_from_file
    from vlmgrpo.data import build_dataset

    cfg = config_from_file(run / "config.yaml")
    first = build_dataset("scenes", cfg.data.eval_kwargs, "test", cfg.train.seed)[0]
    truth = {q["attribute"]: q["answer"] for q in questions(first)}
    assert {it["attribute"]: it["ground_truth"] for it in r["items"][:3]} == truth


def test_eval_scenes_qa_on_a_run_without_scenes_uses_fixed_scenes(tmp_path, tiny_vlm_dir):
    from test_eval import make_area_run

    run = make_area_run(tmp_path / "area", tiny_vlm_dir)
    args = ["eval", "--output-dir", str(run), "--task", "scenes-qa", "--no-base", "--num-items", "1",
            "--num-samples", "1", "--max-new-tokens", "4"]  # fmt: skip
    assert main(args) == 0
    r = json.loads((run / "ckpt_tests" / "ckpt-2.json").read_text())
    assert [it["attribute"] for it in r["items"]] == ["colour", "shape", "position"]
    assert "describe" not in r  # the run's prompt asks about areas, not scenes


def test_describe_scenes_grades_each_description_for_every_attribute():
    """The run's own prompt: a true description scores on all three attributes, a description with
    the wrong shape loses shape only, a hedge on position loses position (rules of `grade`)."""
    from types import SimpleNamespace

    from vlmgrpo.config import load_config
    from vlmgrpo.tasks.scene_qa_eval import describe_scenes

    obj = SceneObject(shape="triangle", color="green", size="small", row=0, col=2)
    sample = _sample(obj)
    true = describe(Scene((obj,)))
    texts = [true, true.replace("triangle", "circle"), "a small green triangle at the top or the center"]
    seen = []

    def generate(model, proc, prompts, n):
        seen.append((prompts, n))
        return [texts]

    cfg = load_config("demo", [])
    ctx = SimpleNamespace(cfg=cfg, opts=SimpleNamespace(num_samples=3), generate=generate)
    d = describe_scenes(None, None, ctx, [sample])
    assert seen[0][1] == 3 and seen[0][0][0].text == "Describe this image."
    assert d["items"][0]["grades"] == [
        {"colour": 1, "shape": 1, "position": 1},
        {"colour": 1, "shape": 0, "position": 1},
        {"colour": 1, "shape": 1, "position": 0},
    ]
    assert d["by_attribute"] == pytest.approx({"colour": 1.0, "shape": 2 / 3, "position": 2 / 3})
