"""Synthetic Geometry3K (`vlmgrpo data geometry-synthetic`) and the offline `geometry-tiny` recipe."""

from __future__ import annotations

import json
import math
import random
import re
from fractions import Fraction

import pytest

from vlmgrpo.cli import main
from vlmgrpo.data import geometry_synthetic as gs
from vlmgrpo.data.geometry3k import build
from vlmgrpo.rewards.geometry import is_correct, structure

# ------------------------------------------------------------------ an independent solver

_LEN = re.compile(r"Equals\(LengthOf\(Line\((\w), (\w)\)\), (\w+)\)")
_ANG = re.compile(r"Equals\(MeasureOf\(Angle\((\w), (\w), (\w)\)\), (\w+)\)")
_PERP = re.compile(r"Perpendicular\(Line\((\w), (\w)\), Line\((\w), (\w)\)\)")


def solve(logic: list[str], question: str, graph: str) -> Fraction:
    """The answer from the diagram's relations alone, by the textbook rule for each question."""
    lengths = {frozenset(m[1] + m[2]): m[3] for f in logic if (m := _LEN.fullmatch(f))}
    angles = [m[4] for f in logic if (m := _ANG.fullmatch(f))]
    perps = [m for f in logic if (m := _PERP.fullmatch(f))]
    known = [int(v) for v in lengths.values() if v != "x"]
    if "perimeter" in question.lower():
        a, b = known
        return Fraction(2 * (a + b))
    if "area" in question.lower():
        a, b = known
        return Fraction(a * b) if graph == "Rectangle" else Fraction(a * b, 2)
    if angles:
        given = [int(v) for v in angles if v != "x"]
        return Fraction(180 - sum(given) - (90 if perps else 0))
    (m,) = perps
    vertex = ({m[1], m[2]} & {m[3], m[4]}).pop()  # the right angle's vertex
    hyp = next(s for s in lengths if vertex not in s)  # the side facing the right angle
    if lengths[hyp] == "x":
        return Fraction(math.isqrt(sum(v * v for v in known)))
    legs = [int(v) for s, v in lengths.items() if s != hyp and v != "x"]
    return Fraction(math.isqrt(int(lengths[hyp]) ** 2 - legs[0] ** 2))


# ------------------------------------------------------------------------------- the data


def test_cli_writes_intergps_folders_that_the_real_loader_reads(tmp_path):
    out = tmp_path / "geo"
    assert (
        main(
            ["data", "geometry-synthetic", "--output", str(out), "--n", "40", "--n-eval", "6", "--seed", "3"]
        )
        == 0
    )
    kinds, ids = set(), set()
    for split, n in (("train", 40), ("validation", 6), ("test", 6)):
        ds = build({"path": str(out)}, split, 0)
        assert len(ds) == n and ds.dropped == 0
        for i in range(n):
            s = ds[i]
            ids.add(s["id"])
            raw = json.loads(
                (
                    out / {"validation": "val"}.get(split, split) / s["id"].rsplit("-", 1)[1] / "data.json"
                ).read_text()
            )
            kinds.add(raw["source"])
            values = [Fraction(c) for c in s["choices"]]
            assert len(set(values)) == 4 and values == sorted(values) and min(values) > 0
            assert s["choices"]["ABCD".index(s["answer_letter"])] == s["answer"]
            assert Fraction(s["answer"]) == solve(
                s["diagram_logic_form"], s["question"], raw["problem_type_graph"][0]
            )
            assert s["images"][0].size == (320, 240) and s["images"][0].mode == "RGB"
    assert len(ids) == 52  # ids run on over the splits, as Geometry3K's
    assert len(kinds) == len(gs.KINDS)


@pytest.mark.parametrize("kind", list(gs.ALL_KINDS))
def test_every_kind_is_drawn_to_scale_with_an_exact_answer(kind):
    for i in range(25):
        p = gs.ALL_KINDS[kind](random.Random(i), 30)
        pt = {k: complex(*v) for k, v in p.points.items()}
        assert Fraction(gs.fmt(p.answer)) == p.answer == solve(p.logic, p.text, p.graph)
        lengths = [(m[1], m[2], m[3]) for f in p.logic if (m := _LEN.fullmatch(f))]
        unit = [abs(pt[a] - pt[b]) / int(v) for a, b, v in lengths if v != "x"]
        assert all(u == pytest.approx(unit[0]) for u in unit)  # labelled lengths in proportion
        for a, b, v in lengths:  # and the unknown drawn at the length of the answer
            if v == "x":
                assert abs(pt[a] - pt[b]) == pytest.approx(unit[0] * float(p.answer))
        for f in p.logic:
            if m := _ANG.fullmatch(f):
                u, w = pt[m[1]] - pt[m[2]], pt[m[3]] - pt[m[2]]
                drawn = abs(math.degrees(math.atan2((w / u).imag, (w / u).real)))
                assert drawn == pytest.approx(float(p.answer) if m[4] == "x" else int(m[4]))
        assert p.answer in gs.choices_of(p)


def _from_text(question: str) -> Fraction:
    """The answer of a `GIVEN_KINDS` question from its text alone, by its rule."""
    v = [int(n) for n in re.findall(r"\d+", question)]
    q = question.lower()
    if "perimeter" in q:
        return Fraction(4 * v[0])
    if "area" in q:
        return Fraction(v[0] * v[1])
    return Fraction((90 if "right triangle" in q else 180) - sum(v))


def test_given_kinds_are_answered_from_the_question_text(tmp_path):
    """The demo's kinds: the givens are in the question (the tiny model cannot read the diagram's
    digits), agree with the diagram's relations, and take few values (a table a tiny model learns)."""
    gs.write(tmp_path, 200, 0, seed=0, kinds=tuple(gs.GIVEN_KINDS))
    ds = build({"path": str(tmp_path)}, "train", 0)
    questions: dict[str, set[str]] = {}
    for i in range(len(ds)):
        s = ds[i]
        raw = json.loads((tmp_path / "train" / str(i) / "data.json").read_text())
        graph = raw["problem_type_graph"][0]
        assert (
            Fraction(s["answer"])
            == _from_text(s["question"])
            == solve(s["diagram_logic_form"], s["question"], graph)
        )
        questions.setdefault(raw["source"], set()).add(s["question"])
    assert {k.split("(")[1][:-1] for k in questions} == set(gs.GIVEN_KINDS)
    assert all(len(q) <= 36 for q in questions.values()), {k: len(q) for k, q in questions.items()}
    assert gs.sr1_target(ds[0]).endswith("</answer>") and "Find" in ds[0]["question"]


def test_the_blind_warm_start_prompt_is_the_blind_pass_prompt(tmp_path):
    """`warmup.target_field: geometry_blind` trains the prompt the blind pass asks (the recipe's
    template around the scan, no image) with a think/answer target that grades correct."""
    from vlmgrpo.config import load_config
    from vlmgrpo.rewards.geometry import blind_prompt
    from vlmgrpo.warmup import DERIVED_PROMPTS, field_at, parse_stages, target_text

    gs.write(tmp_path, 4, 0, seed=0, kinds=tuple(gs.GIVEN_KINDS))
    cfg = load_config("geometry-tiny", [f"data.kwargs.path={tmp_path}"])
    template = next(r for r in cfg.rewards if r.name == "geometry_blind").kwargs["template"]
    s = build({"path": str(tmp_path)}, "train", 0)[0]
    prompt = DERIVED_PROMPTS["geometry_blind"](s, cfg)
    scan = gs.sr1_target(s).split("</scan>")[0]
    assert prompt.images == [] and prompt.prefill == ""
    assert prompt.messages == blind_prompt(scan, s, template) and scan in prompt.messages[-1]["content"]
    target = target_text(s, "geometry_blind")
    assert target.startswith("<think>") and structure(target) == "think_answer" and is_correct(target, s)
    # "a|b" alternates step by step within its stage; the stage after it is plain
    stages = parse_stages("geometry_sr1|geometry_blind:4,geometry_sr1", 6)
    assert [field_at(stages, k) for k in range(1, 7)] == ["geometry_sr1", "geometry_blind"] * 2 + [
        "geometry_sr1"
    ] * 2


def test_exact_decimals():
    assert [gs.fmt(Fraction(v)) for v in (12, Fraction(15, 2), Fraction(1, 4))] == ["12", "7.5", "0.25"]
    with pytest.raises(ValueError):
        gs.fmt(Fraction(1, 3))


def test_the_warm_start_target_earns_format_and_accuracy(tmp_path):
    gs.write(tmp_path, 14, 0, seed=1)
    ds = build({"path": str(tmp_path)}, "train", 0)
    for i in range(len(ds)):
        s = ds[i]
        text = "<scan>" + gs.sr1_target(s)  # the recipe's prefill + the target
        assert structure(text) == "scan_think_answer"
        assert is_correct(text, s)
        assert not is_correct(text.replace(f"<answer>{s['answer']}<", "<answer>0.5<"), s)
    assert gs.scan_text(["Equals(LengthOf(Line(C, B)), 5)", "Perpendicular(Line(A, C), Line(B, C))"]) == (
        "CB = 5, angle ACB = 90"
    )


def test_bad_options_are_one_line_and_nothing_is_overwritten(tmp_path, capsys):
    out = tmp_path / "geo"
    assert main(["data", "geometry-synthetic", "--output", str(out), "--kinds", "circle"]) == 2
    assert capsys.readouterr().err.strip().count("\n") == 0
    gs.write(out, 3, 1, seed=0)
    before = (out / "train" / "0" / "data.json").read_text()
    assert main(["data", "geometry-synthetic", "--output", str(out), "--n", "5", "--seed", "9"]) == 2
    err = capsys.readouterr().err
    assert "already holds items" in err and err.strip().count("\n") == 0
    assert (out / "train" / "0" / "data.json").read_text() == before


# --------------------------------------------------------------------- the offline recipe


def test_geometry_tiny_blind_pass_fires_and_rewards_spread(tiny_qwen3_vl_dir, tmp_path):
    """`vlmgrpo train --recipe geometry-tiny` (shortened): after the warm start the real SR1
    rewards see correct answers, the blind pass runs on them, and some group's rewards differ."""
    data, run = tmp_path / "data", tmp_path / "run"
    gs.write(data, 32, 2, seed=0, kinds=("right_angle", "triangle_angle"))
    sets = [
        f"model.name_or_path={tiny_qwen3_vl_dir}",
        f"data.kwargs.path={data}",
        f"train.output_dir={run}",
        "train.steps=4",
        "train.eval_every=0",
        "train.log_samples_every=1",
        "warmup.steps=60",
        "warmup.lr=5e-3",
        "warmup.batch_size=8",
        "rollout.prompts_per_step=4",
    ]
    assert main(["train", "--recipe", "geometry-tiny", *[a for s in sets for a in ("--set", s)]]) == 0
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    warm = [r for r in rows if r["phase"] == "warmup"]
    grpo = [r for r in rows if r["phase"] == "grpo"]
    assert len(warm) == 60 and warm[-1]["warmup/loss"] < 0.5 * warm[0]["warmup/loss"]
    assert len(grpo) == 4
    assert max(r["reward/blind/attempted/mean"] for r in grpo) > 0  # the blind pass fired
    assert max(r["reward/format/mean"] for r in grpo) > 0.3
    spreads = []
    for step in range(1, 5):
        samples = json.loads((run / "samples" / f"step-{step:06d}" / "samples.json").read_text())
        totals = [s["reward"] for s in samples]
        spreads.append(max(totals) - min(totals))
    assert max(spreads) > 0  # a group with a learning signal


def test_a_folder_without_logic_forms_loads_with_an_empty_list(tmp_path):
    gs.write(tmp_path, 2, 0, seed=0)
    f = tmp_path / "train" / "1" / "data.json"
    raw = json.loads(f.read_text())
    del raw["logic_form"]  # older InterGPS exports keep the logic forms in another file
    f.write_text(json.dumps(raw))
    ds = build({"path": str(tmp_path)}, "train", 0)
    assert ds[0]["diagram_logic_form"] and ds[1]["diagram_logic_form"] == []
    target = gs.sr1_target(ds[1])  # the scan falls back to the question
    assert target.startswith(ds[1]["question"] + "</scan>") and is_correct("<scan>" + target, ds[1])
