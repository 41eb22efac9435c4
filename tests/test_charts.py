"""The offline charts benchmark: deterministic, CharXiv-shaped, answers that follow from the data."""

from __future__ import annotations

import json

import numpy as np
import pytest

from vlmgrpo.data import build_dataset, charts
from vlmgrpo.errors import DataError
from vlmgrpo.judges import JudgeItem
from vlmgrpo.judges.rules import RulesJudge


def test_crossings_counts_sign_changes():
    assert charts.crossings([1, 3, 1, 3], [2, 2, 2, 2]) == 3
    assert charts.crossings([5, 6, 7], [1, 2, 3]) == 0
    assert charts.crossings([1, 9], [9, 1]) == 1


def test_entries_are_deterministic_and_splits_differ():
    a = [charts.make_entry(i, "test", 0) for i in range(8)]
    b = [charts.make_entry(i, "test", 0) for i in range(8)]
    train = [charts.make_entry(i, "train", 0) for i in range(8)]
    assert a == b
    assert [e["spec"] for e in a] != [e["spec"] for e in train]
    assert [e["chart_type"] for e in a] == list(charts.TYPES) * 2


def test_categories_are_balanced_and_valid():
    entries = [charts.make_entry(i, "test", 3) for i in range(40)]
    cats = [e["inst_category"] for e in entries]
    assert sorted(set(cats)) == [1, 2, 3, 4]
    assert all(cats.count(c) == 10 for c in (1, 2, 3, 4))
    for e in entries:
        assert e["reasoning_question"]["inst_category"] == e["inst_category"]
        if e["inst_category"] in (1, 2):  # text answers come with their candidate set
            assert e["reasoning_question"]["answer"] in e["choices"]
        else:
            float(e["reasoning_question"]["answer"])


@pytest.mark.parametrize("seed", range(6))
def test_answers_follow_from_the_data(seed):
    """Recompute every generated question's answer from the chart's data."""
    for kind, maker in charts.MAKERS.items():
        spec, qs = maker(np.random.default_rng(seed))
        by_q = {q: a for q, a, _, _ in qs}
        if kind == "bar":
            labels, vals = spec["labels"], spec["values"]
            assert by_q["Which category has the highest value?"] == labels[int(np.argmax(vals))]
            assert by_q["Which category has the lowest value?"] == labels[int(np.argmin(vals))]
            assert len(set(vals)) == len(vals)
        elif kind == "line":
            series = spec["series"]
            for q, a in by_q.items():
                if q.startswith("How many times do the"):
                    names = [n for n in series if f" {n} " in q]
                    assert int(a) == charts.crossings(series[names[0]], series[names[1]])
                if q.startswith("Which series has the highest value in"):
                    j = spec["x"].index(int(q.rstrip("?").split()[-1]))
                    assert a == max(series, key=lambda n: series[n][j])
        elif kind == "scatter":
            t = spec["threshold"]
            pts = [p for g in spec["groups"].values() for p in g]
            assert int(by_q["How many points lie above the dashed horizontal line?"]) == sum(
                p[1] > t for p in pts
            )
            assert all(abs(p[1] - t) >= 3 for p in pts)  # readable: no point hugs the line
        elif kind == "pie":
            assert sum(spec["values"]) == 100
            assert by_q["Which slice is the largest?"] == spec["labels"][int(np.argmax(spec["values"]))]


def test_rules_judge_grades_ground_truth_right_and_others_wrong():
    judge = RulesJudge()
    entries = [charts.make_entry(i, "test", 1) for i in range(24)]
    right = [
        JudgeItem(
            e["reasoning_question"]["question"],
            f"The answer is {e['reasoning_question']['answer']}.",
            e["reasoning_question"]["answer"],
            e["inst_category"],
            e["choices"],
        )
        for e in entries
    ]
    assert [v.score for v in judge.grade(right)] == [1] * len(entries)
    wrong = []
    for e in entries:
        a = e["reasoning_question"]["answer"]
        other = next((c for c in e["choices"] if c != a), None) if e["choices"] else str(int(float(a)) + 7)
        wrong.append(
            JudgeItem(
                e["reasoning_question"]["question"],
                f"<answer>{other}</answer>",
                a,
                e["inst_category"],
                e["choices"],
            )
        )
    assert [v.score for v in judge.grade(wrong)] == [0] * len(entries)


def test_dataset_registry_entry_renders_images():
    ds = build_dataset("charts", {"n": 4, "width": 240, "height": 180, "max_side": 120}, "test", 0)
    assert len(ds) == 4
    s = ds[1]
    assert s["images"][0].mode == "RGB" and max(s["images"][0].size) == 120
    assert {"id", "question", "answer", "inst_category", "choices"} <= set(s)
    img = np.asarray(s["images"][0])
    assert img.std() > 10  # something was drawn


def test_cli_writes_a_charxiv_shaped_test_set(tmp_path, capsys):
    from vlmgrpo.cli import main

    assert (
        main(["data", "charts", "--output", str(tmp_path), "--n", "5", "--width", "200", "--height", "150"])
        == 0
    )
    assert "wrote 5 charts" in capsys.readouterr().out
    entries = json.loads((tmp_path / "test_set.json").read_text())
    assert len(entries) == 5
    for e in entries:
        assert {
            "figure_id",
            "image_path",
            "descriptive_questions",
            "reasoning_question",
            "inst_category",
        } <= set(e)
        assert (tmp_path / e["image_path"]).is_file()
        assert e["source"] == charts.SOURCE
    ds = charts.read_test_set(tmp_path / "test_set.json")
    assert ds[0]["question"] == entries[0]["reasoning_question"]["question"]
    assert ds[0]["images"][0].size == (200, 150)
    # a second write into the folder refuses (it replaced the set silently), keeping the first
    before = (tmp_path / "test_set.json").read_text()
    assert main(["data", "charts", "--output", str(tmp_path), "--n", "2", "--seed", "7"]) == 2
    assert "already holds a test set (test_set.json)" in capsys.readouterr().err
    assert (tmp_path / "test_set.json").read_text() == before


def test_read_test_set_accepts_short_keys_and_seed_layout(tmp_path):
    (tmp_path / "test_images").mkdir()
    (tmp_path / "test_data").mkdir()
    charts.render(charts.make_entry(0, "test", 0)["spec"], 100, 80).save(tmp_path / "test_images" / "7.png")
    entry = {
        "figure_id": 7,
        "image_path": "test_images/7.png",
        "inst_category": 3,
        "descriptive": [],
        "reasoning": {"question": "q?", "answer": "4"},
    }
    (tmp_path / "test_data" / "test_set.json").write_text(json.dumps([entry]))
    s = charts.read_test_set(tmp_path / "test_data" / "test_set.json")[0]
    assert (s["id"], s["question"], s["answer"], s["inst_category"]) == ("7", "q?", "4", 3)


def test_read_test_set_errors_are_one_line(tmp_path):
    with pytest.raises(DataError, match="not found"):
        charts.read_test_set(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text('[{"figure_id": 1}]')
    with pytest.raises(DataError, match="entry 0 lacks image_path"):
        charts.read_test_set(bad)
