"""Hugging Face datasets in recipes (`data.dataset: hf`): a local parquet file with a reward in the
user's file (TRL signature) trained from the CLI, an imagefolder, the Hub's parquet layout, and the
one-line errors offline (a Hub id, the geometry3k recipe with no local copy)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from vlmgrpo.data import build_dataset
from vlmgrpo.errors import DataError

datasets = pytest.importorskip("datasets")
ROOT = Path(__file__).resolve().parents[1]


def _set(n=6):
    return datasets.Dataset.from_dict(
        {
            "image": [Image.new("RGB", (40, 30), c) for c in ["red", "blue", "green"] * (n // 3)],
            "question": [f"colour {i}?" for i in range(n)],
            "answer": ["red", "blue", "green"] * (n // 3),
            "unused": list(range(n)),
        }
    )


def test_recipe_with_local_parquet_and_a_trl_reward_file_trains_from_the_cli(tiny_vlm_dir, tmp_path):
    _set().to_parquet(str(tmp_path / "colours.parquet"))
    (tmp_path / "my_rewards.py").write_text(
        "def says_answer(prompts, completions, answer, **kwargs):\n"
        "    assert isinstance(completions[0], str) and len(answer) == len(completions)\n"
        "    return [float(a in c) + len(c) / 100 for c, a in zip(completions, answer)]\n"
    )
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        f"""
model: {{name_or_path: {tiny_vlm_dir}}}
data:
  dataset: hf
  kwargs: {{path: {tmp_path / "colours.parquet"}, columns: [question, answer, image]}}
prompt: {{user: "{{question}} Answer with one word."}}
rollout: {{group_size: 2, prompts_per_step: 2, max_new_tokens: 6}}
optim: {{grad_accum: 1}}
rewards:
  - {{name: {tmp_path / "my_rewards.py"}:says_answer, weight: 1.0}}
train: {{steps: 2, eval_every: 2, save_every: 0, tensorboard: false, output_dir: {tmp_path / "run"}}}
eval: {{num_items: 2, num_chains: 1, max_new_tokens: 4}}
"""
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.run(
        [sys.executable, "-m", "vlmgrpo.cli", "train", "--recipe", str(recipe)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    last = rows[-1]
    assert last["step"] == 2 and last["reward/trl/says_answer/mean"] is not None
    assert last["eval/trl/says_answer/mean"] is not None  # the file has no test split: train rows
    assert (tmp_path / "run" / "ckpts" / "ckpt-2" / "COMPLETE").is_file()
    samples = json.loads((tmp_path / "run" / "samples" / "step-000001" / "samples.json").read_text())
    assert samples[0]["prompt"].startswith("colour ") and samples[0]["prompt"].endswith("one word.")


def test_columns_template_and_hub_parquet_layout(tmp_path):
    layout = tmp_path / "copy" / "data"
    layout.mkdir(parents=True)
    _set().to_parquet(str(layout / "train-00000-of-00001.parquet"))
    _set(3).to_parquet(str(layout / "test-00000-of-00001.parquet"))
    train = build_dataset("hf", {"path": str(tmp_path / "copy"), "columns": ["answer"]}, "train", 0)
    test = build_dataset("hf", {"path": str(tmp_path / "copy"), "max_side": 20}, "test", 0)
    assert (len(train), len(test)) == (6, 3)
    assert set(train[0]) == {"answer", "id", "images"}  # only the kept columns (+ id, images)
    assert test[1]["images"][0].size == (20, 15) and test[1]["unused"] == 1
    stream = build_dataset("hf", {"path": str(tmp_path / "copy"), "streaming": True}, "train", 0)
    import numpy as np

    rng = np.random.default_rng(0)
    assert {stream.sample(rng)["answer"] for _ in range(12)} == {"red", "blue", "green"}


def test_imagefolder_and_jsonl(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    meta = []
    for i, c in enumerate(["red", "blue"]):
        Image.new("RGB", (16, 16), c).save(folder / f"{i}.png")
        meta.append({"file_name": f"{i}.png", "prompt": f"what colour is image {i}?", "answer": c})
    (folder / "metadata.jsonl").write_text("".join(json.dumps(m) + "\n" for m in meta))
    ds = build_dataset("hf", {"path": str(folder)}, "train", 0)
    s = sorted((ds[i] for i in range(len(ds))), key=lambda s: s["answer"])
    assert [x["answer"] for x in s] == ["blue", "red"]
    assert s[0]["_messages"][0]["content"][0] == {"type": "image"} and s[0]["images"][0].size == (16, 16)
    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"prompt": "hi", "n": 1}\n')
    text = build_dataset("hf", {"path": str(rows)}, "train", 0)
    assert text[0]["images"] == [] and text[0]["n"] == 1


def test_offline_hub_id_and_geometry3k_fail_in_one_line_saying_how_to_work_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True, raising=False)
    with pytest.raises(DataError) as e:
        build_dataset("hf", {"path": "someone/some-set"}, "train", 0)
    msg = str(e.value)
    assert "\n" not in msg and "set data.kwargs.path to that folder" in msg
    with pytest.raises(DataError) as e:
        build_dataset("geometry3k", {"hf_id": "hiyouga/geometry3k"}, "train", 0)
    msg = str(e.value)
    assert "\n" not in msg and "set data.kwargs.path to a folder of its parquet files" in msg
    with pytest.raises(Exception, match=r"no such file or folder"):
        build_dataset("hf", {"path": "./missing.parquet"}, "train", 0)


def test_a_missing_data_file_named_without_a_folder_is_not_asked_of_the_hub(monkeypatch, tmp_path):
    """`path: rows.jsonl` (beside the recipe, but the run started elsewhere) has a Hub id's shape:
    it went to the Hub (offline: ~30 s of retries) and the line advised `hf download`."""
    import time

    monkeypatch.chdir(tmp_path)
    t0 = time.perf_counter()
    with pytest.raises(
        DataError, match=r"rows.jsonl: data.kwargs.path: no such file or folder \(a relative path"
    ):
        build_dataset("hf", {"path": "rows.jsonl"}, "train", 0)
    assert time.perf_counter() - t0 < 5


def test_a_data_hub_id_without_network_fails_in_seconds_with_one_line(tmp_path):
    """A data.kwargs.path of the Hub's shape (a local folder name misspelled, or a set never
    downloaded) with no network: datasets retried for ~30 s with two warning lines per retry, then
    one line; the Hub is now probed first (as for models) and the set read from the cache only."""
    import socket

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env.update(HF_ENDPOINT=f"http://127.0.0.1:{sock.getsockname()[1]}", HF_HOME=str(tmp_path / "hf"))
    recipe = tmp_path / "r.yaml"
    recipe.write_text("base: area-tiny\ndata: {dataset: hf, kwargs: {path: my-vqa-set}}\n")
    t0 = time.monotonic()
    r = subprocess.run(
        [sys.executable, "-m", "vlmgrpo.cli", "train", "--recipe", str(recipe), "--output-dir", str(tmp_path / "run")],
        capture_output=True, text=True, env=env, timeout=120, cwd=tmp_path,
    )  # fmt: skip
    sock.close()
    assert r.returncode == 2 and time.monotonic() - t0 < 20, r.stderr[-3000:]
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert len(lines) == 1, r.stderr[-3000:]
    assert lines[0].startswith("error: my-vqa-set: cannot load with datasets.load_dataset (")
    assert (
        "the Hub is out of reach (127.0.0.1:" in lines[0]
        and f"no local folder my-vqa-set is in {tmp_path}" in lines[0]
    )


def test_geometry3k_from_the_hub_without_network_fails_in_seconds_with_one_line(tmp_path):
    """geometry3k's own Hub loader had the same ~30 s of retries offline as `hf` data had."""
    import socket

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env.update(HF_ENDPOINT=f"http://127.0.0.1:{sock.getsockname()[1]}", HF_HOME=str(tmp_path / "hf"))
    code = (
        "from vlmgrpo.data.geometry3k import load_hf_records\n"
        "from vlmgrpo.errors import DataError\n"
        "try:\n    load_hf_records('hiyouga/geometry3k', 'train')\n"
        "except DataError as e:\n    print(e)\n"
    )
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    sock.close()
    assert time.monotonic() - t0 < 20, r.stderr[-2000:]
    lines = [x for x in r.stdout.splitlines() if x.strip()]
    assert len(lines) == 1 and "the Hub is out of reach (127.0.0.1:" in lines[0], (r.stdout, r.stderr[-2000:])
