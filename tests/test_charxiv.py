"""Seed A's CharXiv split: the real validation JSON gives the seed's ids; a tiny CharXiv-shaped
copy goes through the CLI into the seed's layout and back out of the `charxiv` dataset."""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import pytest
from tiny_builders import make_charxiv

from vlmgrpo.cli import main as cli_main
from vlmgrpo.data import build_dataset
from vlmgrpo.data.charxiv import DESCRIPTIVE_QUESTIONS, build_split, charxiv_entry, rows_to_json, select_split
from vlmgrpo.errors import DataError

REAL = Path(__file__).parents[2] / "shared" / "data" / "charxiv"


def seed_procedure(descriptive: dict, reasoning: dict) -> tuple[list[int], list[int]]:
    """The seed's build_ds.py, literally (global random state included)."""
    state = random.getstate()
    try:
        random.seed(7111994)
        all_figure_ids = []
        for figure_id_str in descriptive.keys():  # noqa: SIM118 (the seed, literally)
            if figure_id_str in reasoning:
                all_figure_ids.append(int(figure_id_str))
        selected_figure_ids = random.sample(all_figure_ids, 100)
        return selected_figure_ids[:75], selected_figure_ids[75:]
    finally:
        random.setstate(state)


# --------------------------------------------------------------------------- the real JSON files


@pytest.fixture(scope="module")
def real_json():
    if not (REAL / "descriptive_val.json").is_file():
        pytest.skip(f"real CharXiv validation JSON not found at {REAL}")
    return (
        json.loads((REAL / "descriptive_val.json").read_text()),
        json.loads((REAL / "reasoning_val.json").read_text()),
    )


def test_real_split_matches_the_seed(real_json):
    descriptive, reasoning = real_json
    train, test = select_split(descriptive, reasoning)
    exp_train, exp_test = seed_procedure(descriptive, reasoning)
    assert train == exp_train and test == exp_test
    assert len(train) == 75 and len(test) == 25 and not set(train) & set(test)


def test_real_test_entries(real_json):
    descriptive, reasoning = real_json
    _, test = select_split(descriptive, reasoning)
    e = charxiv_entry(test[0], descriptive, reasoning)
    d, r = descriptive[str(test[0])], reasoning[str(test[0])]
    assert e["figure_id"] == test[0] and e["image_path"] == f"test_images/{test[0]}.jpg"
    assert e["descriptive_questions"] == [
        {"question": DESCRIPTIVE_QUESTIONS[q], "answer": a} for q, a in zip(d["qids"], d["answers"])
    ]
    assert e["reasoning_question"] == {
        "question": r["query"],
        "answer": r["answer"],
        "inst_category": r["inst_category"],
    }
    assert len(DESCRIPTIVE_QUESTIONS) == 19


def test_real_json_without_images_names_the_missing_figures(real_json, tmp_path):
    """The shared folder has the JSON but not the charts: one line naming them and where to get them."""
    with pytest.raises(DataError) as e:
        build_split(tmp_path / "out", REAL)
    msg = str(e.value)
    train, test = select_split(*real_json)
    assert "\n" not in msg and "100 CharXiv image(s) missing" in msg and f"{train[0]}.jpg" in msg
    assert "princeton-nlp/CharXiv" in msg and "images.zip" in msg
    assert not (tmp_path / "out" / "test_data").exists()  # nothing half-written


# --------------------------------------------------------------------------- a tiny CharXiv copy


@pytest.mark.parametrize("layout", ["repo", "flat"])
def test_build_split_writes_the_seed_layout(tmp_path, layout):
    descriptive, reasoning = make_charxiv(tmp_path / "charxiv", layout=layout)
    summary = build_split(tmp_path / "out", tmp_path / "charxiv")
    train, test = seed_procedure(descriptive, reasoning)
    assert summary["train_ids"] == train and summary["test_ids"] == test
    out = tmp_path / "out"
    assert sorted(int(p.stem) for p in (out / "train_images").glob("*.jpg")) == sorted(train)
    assert sorted(int(p.stem) for p in (out / "test_images").glob("*.jpg")) == sorted(test)
    entries = json.loads((out / "test_data" / "test_set.json").read_text())
    assert [e["figure_id"] for e in entries] == test
    e = entries[0]
    assert set(e) == {"figure_id", "image_path", "descriptive_questions", "reasoning_question"}
    assert (out / e["image_path"]).is_file()
    assert e["reasoning_question"]["inst_category"] == reasoning[str(test[0])]["inst_category"]


def test_cli_builds_and_reports_missing_images(tmp_path, capsys):
    make_charxiv(tmp_path / "cx")
    assert (
        cli_main(["data", "charxiv", "--source", str(tmp_path / "cx"), "--output", str(tmp_path / "o")]) == 0
    )
    assert "75 training and 25 test charts" in capsys.readouterr().out
    descriptive, reasoning = make_charxiv(tmp_path / "partial", with_images=False)
    train, _ = seed_procedure(descriptive, reasoning)
    make_charxiv(tmp_path / "partial", skip_images=tuple(train[:3]))
    rc = cli_main(
        ["data", "charxiv", "--source", str(tmp_path / "partial"), "--output", str(tmp_path / "o2")]
    )
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.count("\n") == 0 and err.startswith("error: ")
    assert "3 CharXiv image(s) missing" in err and all(f"{i}.jpg" in err for i in train[:3])


def test_dataset_entry_reads_the_built_folder(tmp_path):
    descriptive, reasoning = make_charxiv(tmp_path / "cx")
    build_split(tmp_path / "out", tmp_path / "cx")
    train, test = seed_procedure(descriptive, reasoning)
    ds = build_dataset("charxiv", {"path": str(tmp_path / "out"), "max_side": 32}, "train", 0)
    assert len(ds) == 75 and {ds[i]["id"] for i in range(75)} == {str(i) for i in train}
    assert max(ds[0]["images"][0].size) == 32
    ev = build_dataset("charxiv", {"path": str(tmp_path / "out")}, "test", 0)
    assert len(ev) == 25
    s = ev[0]
    r = reasoning[str(test[0])]
    assert s["id"] == str(test[0]) and s["question"] == r["query"] and s["answer"] == r["answer"]
    assert s["inst_category"] == r["inst_category"] and len(s["descriptive"]) == 4
    assert s["images"][0].mode == "RGB"


def test_dataset_entry_errors_name_the_fix(tmp_path):
    with pytest.raises(DataError, match="vlmgrpo data charxiv --source"):
        build_dataset("charxiv", {"path": str(tmp_path / "nothing")}, "train", 0)
    with pytest.raises(DataError, match="vlmgrpo data charxiv --source"):
        build_dataset("charxiv", {"path": str(tmp_path / "nothing")}, "test", 0)
    make_charxiv(tmp_path / "cx")
    build_split(tmp_path / "out", tmp_path / "cx")
    entries = json.loads((tmp_path / "out" / "test_data" / "test_set.json").read_text())
    (tmp_path / "out" / entries[1]["image_path"]).unlink()
    with pytest.raises(DataError) as e:
        build_dataset("charxiv", {"path": str(tmp_path / "out")}, "test", 0)
    assert str(entries[1]["figure_id"]) in str(e.value) and "\n" not in str(e.value)


def test_missing_json_is_one_line(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError) as e:
        build_split(tmp_path / "out", tmp_path / "empty")
    assert "descriptive_val.json" in str(e.value) and "github.com/princeton-nlp/CharXiv" in str(e.value)


def test_hub_rows_convert_to_the_json_layout():
    rows = [
        {
            "figure_path": f"images/{fid}.jpg",
            **{f"descriptive_q{i}": i + fid % 3 for i in range(1, 5)},
            **{f"descriptive_a{i}": f"a{fid}.{i}" for i in range(1, 5)},
            "reasoning_q": f"q{fid}",
            "reasoning_a": f"r{fid}",
            "reasoning_a_type": 1 + fid % 4,
            "reasoning_q_source": 2,
            "image": {"bytes": b"jpeg", "path": None},
        }
        for fid in (12, 3, 7)
    ]
    descriptive, reasoning, images = rows_to_json(rows)
    assert list(descriptive) == ["3", "7", "12"] == list(reasoning)  # figure id order, as the JSON files
    assert descriptive["7"] == {
        "figure_id": 7,
        "qids": [2, 3, 4, 5],
        "answers": ["a7.1", "a7.2", "a7.3", "a7.4"],
    }
    assert reasoning["12"]["query"] == "q12" and reasoning["12"]["inst_category"] == 1
    assert images[3] == {"bytes": b"jpeg", "path": None}


def test_hub_without_datasets_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # an import of it fails
    with pytest.raises(DataError) as e:
        build_split(tmp_path / "out", hub=True)
    assert "`datasets` package" in str(e.value) and "\n" not in str(e.value)
