"""The img2code task: dataset tooling, code extraction, the reward and its summary, the recipes, and
an end-to-end run of the tiny recipe on CPU."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest

from vlmgrpo.config import load_config
from vlmgrpo.data import build_dataset
from vlmgrpo.data import img2code as data
from vlmgrpo.errors import ConfigError, DataError
from vlmgrpo.rewards import RewardContext, RewardRecord, RewardSpec, compute_rewards
from vlmgrpo.rewards.img2code import CLASSES, code_stats, extract_code, score_completions, summarize


@pytest.fixture(scope="module")
def sample_dir(tmp_path_factory):
    """Six sample figures with their code and a 4/1/1 train/eval/test split."""
    out = tmp_path_factory.mktemp("img2code-sample")
    data.create_sample(out, n=6, seed=0)
    return out


def _fence(code: str, lang: str = "python") -> str:
    return f"Here is the code:\n```{lang}\n{code}\n```\nDone."


# ---------------------------------------------------------------------------- code extraction
def test_extract_code_prefers_a_python_block():
    text = "Intro\n```text\nnot code\n```\n```python\nx = 1\n```\n```py\ny = 2\n```"
    assert extract_code(text) == "x = 1"
    assert extract_code(_fence("a = 1", "py")) == "a = 1"
    assert extract_code("```\nplain = 1\n```") == "plain = 1"
    assert extract_code("  z = 3\n") == "z = 3"  # no fence: the whole completion


def test_extract_code_keeps_a_block_cut_off_by_the_token_limit():
    assert extract_code("Sure!\n```python\nimport matplotlib\nplt.plot(") == "import matplotlib\nplt.plot("


def test_code_stats_count_lines_calls_and_imports():
    code = "import matplotlib.pyplot as plt\n# a comment\n\nfig, ax = plt.subplots()\nax.plot([1])\n"
    stats = code_stats(code)
    assert stats["code_lines"] == 4 and stats["code_comment_lines"] == 1
    assert stats["code_plot_calls"] == 2 and stats["code_imports"] == 1


# ---------------------------------------------------------------------------- dataset tooling
def test_sample_programs_are_varied_and_deterministic():
    rows = data.sample_programs(18, seed=4)
    assert rows == data.sample_programs(18, seed=4)
    assert {r["kind"] for r in rows} == set(data.KINDS)
    assert len({r["reference_code"] for r in rows}) == 18


def test_the_short_family_is_two_lines_whose_parameters_vary_and_which_all_draw(tmp_path):
    from vlmgrpo.models.tiny import build_tokenizer

    rows = data.sample_programs(40, seed=1, family="short")
    assert rows == data.sample_programs(40, seed=1, family="short")
    codes = [r["reference_code"] for r in rows]
    assert all(c.startswith(data.SHORT_HEAD) and c.count("\n") == 1 for c in codes)
    assert {c[-3] for c in codes} == set(data.SHORT_COLORS)  # color="X")
    assert {c.count(",") - 1 for c in codes} == {2, 3, 4}  # 2-4 bars: n - 1 commas + 2 around the list
    # the warm-start target without the colour: same code up to the colour, drawn apart from the figure
    blind = [r["colour_blind_code"] for r in rows]
    assert all(b[:-3] == c[:-3] for b, c in zip(blind, codes))
    assert 0.5 < sum(b != c for b, c in zip(blind, codes)) / len(codes) < 0.97
    tok = build_tokenizer()  # the tiny models' tokenizer: short enough for ~40 new tokens
    assert max(len(tok(c)["input_ids"]) for c in codes) <= 40
    with pytest.raises(DataError, match="--family: unknown family 'nope'"):
        data.sample_programs(2, family="nope")
    path = data.create_sample(tmp_path, n=3, seed=0, ratios=None, family="short")
    drawn = data.read_jsonl(path)
    assert [r["kind"] for r in drawn] == ["short_bars"] * 3
    assert all((tmp_path / r["image_path"]).is_file() for r in drawn)  # each ran in the sandbox


def test_create_sample_writes_rows_images_and_split(sample_dir):
    rows = data.read_jsonl(sample_dir / "dataset.jsonl")
    assert len(rows) == 6
    for row in rows:
        assert {"id", "description", "image_path", "reference_code"} <= set(row)
        assert (sample_dir / row["image_path"]).is_file()
    sizes = {s: len(data.read_jsonl(sample_dir / f"dataset_{s}.jsonl")) for s in data.SPLITS}
    assert sizes == {"train": 4, "eval": 1, "test": 1}


def test_loading_a_split_folder_gives_each_split_its_rows(sample_dir):
    train = build_dataset("img2code", {"path": str(sample_dir), "max_side": 64}, "train", 0)
    test = build_dataset("img2code", {"path": str(sample_dir)}, "test", 0)
    assert len(train) == 4 and len(test) == 1
    sample = train[0]
    assert max(sample["images"][0].size) <= 64  # what the policy sees
    assert max(sample["reference_image"].size) > 64  # what the reward compares with
    assert sample["reference_code"].startswith("import matplotlib")


def test_base64_variant_loads_the_same_images(sample_dir, tmp_path):
    b64 = data.to_base64(sample_dir / "dataset.jsonl", tmp_path / "b64.jsonl")
    rows = data.read_jsonl(b64)
    assert all("image_base64" in r and "image_path" not in r for r in rows)
    plain = build_dataset("img2code", {"path": str(sample_dir / "dataset.jsonl")}, "train", 0)
    encoded = build_dataset("img2code", {"path": str(b64)}, "train", 0)
    for i in range(len(plain)):
        assert plain[i]["id"] == encoded[i]["id"]
        assert np.array_equal(np.asarray(plain[i]["images"][0]), np.asarray(encoded[i]["images"][0]))


def test_a_folder_of_images_without_code_loads(sample_dir, tmp_path):
    for p in (sample_dir / "images").glob("*.png"):
        shutil.copy(p, tmp_path / p.name)
    ds = build_dataset("img2code", {"path": str(tmp_path)}, "train", 0)
    assert len(ds) == 6
    assert ds[0]["reference_code"] == "" and ds[0]["images"][0].mode == "RGB"


def test_bad_rows_are_one_line_errors(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "image_path": "x.png"}\n{"id": "b"}\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2: a row needs 'image_path' or 'image_base64'"):
        data.read_jsonl(bad)
    bad.write_text("{not json\n")
    with pytest.raises(DataError, match=r"bad.jsonl:1: not valid JSON"):
        data.read_jsonl(bad)
    with pytest.raises(DataError, match="no such file or folder"):
        build_dataset("img2code", {"path": str(tmp_path / "missing")}, "train", 0)


def test_cli_converts_to_base64_and_splits(sample_dir, tmp_path):
    from vlmgrpo.cli import main

    src = tmp_path / "d.jsonl"
    src.write_text((sample_dir / "dataset.jsonl").read_text().replace('"images/', f'"{sample_dir}/images/'))
    assert main(["data", "img2code", "--to-base64", str(src)]) == 0
    assert (
        main(["data", "img2code", "--split", str(tmp_path / "d_base64.jsonl"), "--ratios", "2", "1", "1"])
        == 0
    )
    sizes = [len(data.read_jsonl(tmp_path / f"d_base64_{s}.jsonl")) for s in data.SPLITS]
    assert sizes == [2, 2, 2]  # 6 rows at 2:1:1, eval and test rounded half to even


def test_cli_create_sample_refuses_a_folder_that_holds_a_set(sample_dir, capsys):
    """`--create-sample` into a folder with a set replaced it silently (the set a run used)."""
    from vlmgrpo.cli import main

    before = (sample_dir / "dataset.jsonl").read_bytes()
    assert main(["data", "img2code", "--create-sample", "--out", str(sample_dir), "--n", "2"]) == 2
    assert "already holds a set" in capsys.readouterr().err
    assert (sample_dir / "dataset.jsonl").read_bytes() == before


# ---------------------------------------------------------------------------- the reward
def test_reward_credits_the_reference_and_penalises_each_failure_class(sample_dir):
    ds = build_dataset("img2code", {"path": str(sample_dir / "dataset.jsonl")}, "train", 0)
    sample, other = ds[0], ds[1]
    completions = [
        _fence(sample["reference_code"]),  # draws exactly the reference
        _fence(other["reference_code"]),  # a different figure
        _fence("import matplotlib.pyplot as plt\nplt.plot([1, 2)"),  # syntax error
        _fence("import matplotlib.pyplot as plt\nplt.plot([1])\nraise ValueError('boom')"),  # runtime
        "print('I will not draw')",  # no figure
    ]
    values, results = score_completions(completions, [sample["reference_image"]] * 5)
    ok, diff, syntax, runtime, nofig = values
    assert ok["exec_success"] == 1.0 and ok["similarity"] == pytest.approx(1.0, abs=1e-9)
    assert ok["score"] == pytest.approx(0.3 + 0.7)
    assert 0.3 < diff["score"] < ok["score"] and diff["ssim"] < 1.0
    assert syntax["score"] == -1.0 and syntax["syntax_error"] == 1.0 and math.isnan(syntax["ssim"])
    assert runtime["score"] == -0.5 and runtime["runtime_error"] == 1.0
    assert nofig["score"] == 0.0 and nofig["no_figure"] == 1.0
    assert [r.status for r in results] == ["ok", "ok", "syntax_error", "runtime_error", "no_figure"]
    for v in values:
        assert sum(v[c] for c in CLASSES) == 1.0


def test_reward_through_compute_rewards_logs_every_component(sample_dir):
    ds = build_dataset("img2code", {"path": str(sample_dir / "dataset.jsonl")}, "train", 0)
    sample = ds[2]
    records = [
        RewardRecord(prompt="p", completion=c, images=sample["images"], sample=sample, group=0, index=i)
        for i, c in enumerate([_fence(sample["reference_code"]), "```python\nfor\n```"])
    ]
    spec = RewardSpec(
        "img2code", kwargs={"metrics": {"ssim": 1.0, "edge": 1.0}, "sandbox": {"timeout_s": 20}}
    )
    res = compute_rewards(records, [spec], RewardContext())
    metrics = res.metrics()
    assert metrics["reward/img2code/mean"] == pytest.approx((1.0 - 1.0) / 2)
    for sub in ("exec_success", "similarity", "penalty", "syntax_error", "ssim", "edge", "code_lines"):
        assert f"reward/img2code/{sub}/mean" in metrics
    assert metrics["reward/img2code/ssim/mean"] == pytest.approx(1.0)  # over successful runs only
    assert records[0].extras["status"] == "ok" and records[0].extras["figure"] is not None
    assert records[1].extras["status"] == "syntax_error"


def test_a_broken_sandbox_skips_the_sample_instead_of_penalising():
    from PIL import Image

    values, results = score_completions(
        ["x = 1"], [Image.new("RGB", (8, 8))], sandbox={"python": "/nonexistent/python"}
    )
    assert values == [None] and results[0].status == "sandbox_error"


def test_a_misspelt_sandbox_setting_is_a_config_error():
    from vlmgrpo.errors import ConfigError
    from vlmgrpo.rewards.img2code import get_sandbox

    with pytest.raises(ConfigError, match="sandbox.timeout: unknown setting; did you mean 'timeout_s'"):
        get_sandbox({"timeout": 5})


def test_prepare_checks_settings_and_probes_the_sandbox_at_start_up():
    from vlmgrpo.errors import ConfigError
    from vlmgrpo.rewards import resolve_reward

    prepare = resolve_reward("img2code").fn.prepare
    with pytest.raises(ConfigError, match="kwargs.w_exce: unknown setting; did you mean 'w_exec'"):
        prepare(w_exce=0.3)
    with pytest.raises(ConfigError, match="unknown image metric"):
        prepare(metrics={"psnr": 1.0})
    prepare(w_exec=0.3, sandbox={"timeout_s": 20})  # runs one plain program


def test_prepare_warns_when_the_sandbox_runs_without_isolation(caplog):
    from vlmgrpo.rewards import resolve_reward

    with caplog.at_level("WARNING", logger="vlmgrpo.rewards.img2code"):
        resolve_reward("img2code").fn.prepare(sandbox={"timeout_s": 20, "isolate": False})
    assert any(
        "only rlimits" in r.getMessage() and "isolate: false" in r.getMessage() for r in caplog.records
    )


@pytest.fixture
def no_bwrap_on_path(tmp_path, monkeypatch):
    """A PATH without bubblewrap (it is installed here and in CI): the lookup finds none."""
    from vlmgrpo.rewards import img2code
    from vlmgrpo.sandbox import bwrap_works

    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(img2code, "_SANDBOXES", {})
    bwrap_works.cache_clear()
    yield
    bwrap_works.cache_clear()


def test_isolation_asked_for_but_unavailable_is_a_one_line_error_unless_allowed(no_bwrap_on_path, caplog):
    """`isolate: true` (the default) without a usable bubblewrap ran the policy's code with rlimits
    only and a warning; a researcher who asked for isolation got none. Now the reward refuses to
    start, in one line; `allow_unisolated: true` is the explicit opt-out (warned, as isolate: false)."""
    from vlmgrpo.rewards import resolve_reward

    prepare = resolve_reward("img2code").fn.prepare
    with pytest.raises(
        ConfigError, match=r"sandbox\.isolate: true, but .*bwrap\) is not installed.*allow_unisolated"
    ):
        prepare(sandbox={"timeout_s": 20})
    with caplog.at_level("WARNING", logger="vlmgrpo.rewards.img2code"):
        prepare(sandbox={"timeout_s": 20, "allow_unisolated": True})
    assert any("only rlimits" in r.getMessage() and "not installed" in r.getMessage() for r in caplog.records)


def test_summarize_gives_rates_similarity_score_and_code_stats():
    nan = math.nan
    base = dict.fromkeys(CLASSES, 0.0)
    rows = [
        {
            **base,
            "ok": 1.0,
            "exec_success": 1.0,
            "similarity": 0.8,
            "score": 0.86,
            "ssim": 0.7,
            "code_lines": 10.0,
        },
        {
            **base,
            "ok": 1.0,
            "exec_success": 1.0,
            "similarity": 0.6,
            "score": 0.72,
            "ssim": 0.5,
            "code_lines": 6.0,
        },
        {
            **base,
            "syntax_error": 1.0,
            "exec_success": 0.0,
            "similarity": 0.0,
            "score": -1.0,
            "ssim": nan,
            "code_lines": 2.0,
        },
        None,
    ]
    s = summarize(rows)
    assert s["n"] == 3 and s["sandbox_errors"] == 1
    assert s["exec_success_rate"] == pytest.approx(2 / 3) and s["syntax_error_rate"] == pytest.approx(1 / 3)
    assert s["similarity"] == pytest.approx(1.4 / 3) and s["similarity_ok"] == pytest.approx(0.7)
    assert s["score"] == pytest.approx(0.58 / 3) and s["ssim"] == pytest.approx(0.6)
    assert s["code_lines"] == pytest.approx(6.0)
    assert summarize([None]) == {"n": 0.0, "sandbox_errors": 1.0}


# ---------------------------------------------------------------------------- recipes
def test_recipes_load_with_the_seed_hyperparameters():
    cfg = load_config("img2code")
    assert cfg.model.name_or_path == "Qwen/Qwen3-VL-8B-Instruct" and cfg.model.dtype == "bfloat16"
    assert cfg.model.gradient_checkpointing and cfg.model.lora.enabled
    assert (cfg.model.lora.r, cfg.model.lora.alpha, cfg.model.lora.dropout) == (16, 32, 0.05)
    assert cfg.rollout.group_size == 4 and cfg.optim.lr == 1e-5
    assert (cfg.grpo.loss, cfg.grpo.clip_low, cfg.grpo.beta, cfg.grpo.ref.kind) == (
        "ppo",
        0.2,
        0.1,
        "adapter",
    )
    kw = cfg.rewards[0].kwargs
    assert (kw["w_exec"], kw["w_sim"], kw["syntax_penalty"], kw["runtime_penalty"]) == (0.3, 0.7, -1.0, -0.5)
    tiny = load_config("img2code-tiny", ["model.name_or_path=/some/model"])
    assert tiny.model.dtype == "float32" and tiny.train.device == "cpu" and tiny.rewards[0].name == "img2code"


def test_tiny_recipe_runs_end_to_end_on_cpu(tiny_qwen3_vl_dir, sample_dir, tmp_path):
    from vlmgrpo.trainer import Trainer

    overrides = [f"model.name_or_path={tiny_qwen3_vl_dir}", f"data.kwargs.path={sample_dir}"]
    # grad_accum 2 as the img2code recipe: fit() accumulates over two rollouts per update
    cfg = load_config(
        "img2code-tiny", [*overrides, f"train.output_dir={tmp_path / 'run'}", "optim.grad_accum=2"]
    )
    assert cfg.train.steps == 2
    Trainer(cfg).fit()
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if r["phase"] == "grpo" and r["step"] > 0]
    assert [r["step"] for r in steps] == [1, 2]
    for row in steps:
        for sub in ("exec_success", "similarity", "penalty", *CLASSES, "code_lines"):
            assert f"reward/img2code/{sub}/mean" in row, sub
        assert row["reward/img2code/failed"] == 0.0
        assert row["update/micro_batches"] == 2
        assert sum(row[f"reward/img2code/{c}/mean"] for c in CLASSES) == pytest.approx(1.0)
    assert (tmp_path / "run" / "samples" / "step-000001" / "samples.json").is_file()
