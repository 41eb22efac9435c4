"""Errors name the culprit, and the CLI's small habits: a broken reward stops the run with one line
naming it (recipe place and function) and the first bad value or exception; per-sample failures are
one warning per step; NaN counts as a failure; a run whose every update was skipped exits non-zero;
a step with one reward for all samples warns once; zero or negative counts are config errors; YAML
1.1's yes/no/on/off stay words in string fields; `target_modules: all-linear`; a reward file beside
the recipe; `--version`; `train` without `--recipe`; a Hub id without network fails in seconds;
offline recipes build their own tiny model and data."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vlmgrpo.cli import main
from vlmgrpo.config import load_config
from vlmgrpo.errors import ConfigError

TINY = [
    "--set", "rollout.prompts_per_step=1", "--set", "rollout.max_new_tokens=4",
    "--set", "train.eval_every=0", "--set", "eval.num_items=2", "--set", "train.log_samples_every=0",
    "--set", "train.threads=1", "--set", "train.tensorboard=false",
]  # fmt: skip

REWARDS = """
import math

def stringy(rec, ctx):
    return "abc"

def boom(rec, ctx):
    raise ValueError("boom")

def brevity(rec, ctx, target=100):
    return -abs(len(rec.completion) - target)

def first_fails(rec, ctx):
    if rec.index == 0:
        raise KeyError("no such field")
    return float(len(rec.completion))

def first_nan(rec, ctx):
    return math.nan if rec.index == 0 else float(len(rec.completion))

def mostly_none(rec, ctx):
    return 1.0 if rec.index == 0 else None

def constant(rec, ctx):
    return 1.0

def slow(rec, ctx):
    raise TimeoutError("ran past its 1 s bound")

def no_ctx(rec, target=100):
    return -abs(len(rec.completion) - target)
"""


@pytest.fixture
def rewards_file(tmp_path) -> Path:
    f = tmp_path / "my_rewards.py"
    f.write_text(REWARDS)
    return f


def _train(model: Path, out: Path, reward: str, *extra: str, steps: int = 2, group: int = 2) -> list[str]:
    return ["train", "--recipe", "area-tiny", "--model", str(model), "--output-dir", str(out),
            "--set", f"train.steps={steps}", "--set", f"rollout.group_size={group}", *TINY,
            "--set", f"rewards=[{reward}]", *extra]  # fmt: skip


def _error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = [x for x in err.splitlines() if x.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err[-2000:]
    return lines[0]


# --------------------------------------------------------------------------- broken rewards


def test_a_reward_returning_a_string_stops_with_one_line_naming_it(
    tiny_vlm_dir, tmp_path, rewards_file, capsys
):
    spec = f"{rewards_file}:stringy"
    assert main(_train(tiny_vlm_dir, tmp_path / "run", f"{{name: '{spec}'}}")) == 2
    line = _error_line(capsys)
    assert f"reward rewards[0] ({spec})" in line and "returned str 'abc' for sample 0" in line


def test_a_reward_raising_on_every_sample_stops_with_the_first_exception(
    tiny_vlm_dir, tmp_path, rewards_file, capsys, caplog
):
    spec = f"{rewards_file}:boom"
    caplog.set_level(logging.WARNING)
    assert main(_train(tiny_vlm_dir, tmp_path / "run", f"{{name: '{spec}', label: b}}")) == 2
    line = _error_line(capsys)
    # metrics.jsonl's step: the first training step is 1 (the line said "step 0 (train)")
    assert f"reward rewards[0] ({spec}, logged as b) failed on all 2 samples of step 1 (train)" in line
    assert "; first: ValueError: boom on sample 0 (id " in line
    assert not [r for r in caplog.records if "boom" in r.getMessage()]  # no warning per sample


def test_a_misspelled_reward_kwarg_names_the_reward_and_the_kwarg(
    tiny_vlm_dir, tmp_path, rewards_file, capsys
):
    spec = f"{rewards_file}:brevity"
    assert main(_train(tiny_vlm_dir, tmp_path / "run", f"{{name: '{spec}', kwargs: {{targt: 5}}}}")) == 2
    line = _error_line(capsys)
    assert f"rewards[0] ({spec})" in line and "unexpected keyword argument 'targt'" in line


def test_a_reward_signature_that_cannot_take_the_call_fails_before_the_model_loads(
    tmp_path, rewards_file, capsys
):
    """fn(record, target) has no ctx: the call fn(record, ctx, target=5) cannot bind. That is one
    line naming the reward before anything loads (the model path here does not even exist)."""
    spec = f"{rewards_file}:no_ctx"
    missing_model = tmp_path / "no-model-here"
    assert main(_train(missing_model, tmp_path / "run", f"{{name: '{spec}', kwargs: {{target: 5}}}}")) == 2
    line = _error_line(capsys)
    assert f"rewards[0] ({spec}): cannot be called as fn(record, ctx, **kwargs)" in line
    assert "no-model-here" not in line


def test_time_outs_on_every_sample_are_skipped_not_a_stop(tiny_vlm_dir, tmp_path, rewards_file, capsys):
    """A reward past its time bound is slow, not broken: skipped and counted, never the bug stop
    (here every update is then skipped, so the run ends with that line instead)."""
    assert main(_train(tiny_vlm_dir, tmp_path / "run", f"{{name: '{rewards_file}:slow'}}", steps=1)) == 2
    assert "every update of this run was skipped (1 of 1 steps" in _error_line(capsys)


def test_per_sample_failures_are_one_warning_per_step(tiny_vlm_dir, tmp_path, rewards_file, caplog):
    caplog.set_level(logging.WARNING)
    spec = f"{rewards_file}:first_fails"
    args = _train(
        tiny_vlm_dir, tmp_path / "run", f"{{name: '{spec}'}}", "--set", "optim.grad_accum=2", group=4
    )
    assert main(args) == 0
    said = [r.getMessage() for r in caplog.records if "failed on" in r.getMessage()]
    # 2 steps x 2 micro-batches x 1 failing sample: two lines, one per step, with the step's count
    assert len(said) == 2, said
    for step, msg in enumerate(said, 1):  # metrics.jsonl's steps, 1 and 2
        assert msg.startswith(f"step {step} (train): reward rewards[0] ({spec}) failed on 2 of 8 samples")
        assert "KeyError: 'no such field' on sample 0" in msg


def test_nan_rewards_count_as_failures(tiny_vlm_dir, tmp_path, rewards_file):
    import json

    out = tmp_path / "run"
    assert main(_train(tiny_vlm_dir, out, f"{{name: '{rewards_file}:first_nan'}}", group=4)) == 0
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["reward/first_nan/failed"] for r in rows] == [1.0, 1.0]
    assert [r["reward/skipped"] for r in rows] == [1.0, 1.0]


def test_a_run_whose_every_update_was_skipped_exits_non_zero(tiny_vlm_dir, tmp_path, rewards_file, capsys):
    out = tmp_path / "run"
    assert main(_train(tiny_vlm_dir, out, f"{{name: '{rewards_file}:mostly_none'}}", group=4)) == 2
    line = _error_line(capsys)
    assert "every update of this run was skipped (2 of 2 steps" in line
    assert (out / "ckpts" / "ckpt-2" / "COMPLETE").is_file()  # still saved: nothing is lost


def test_identical_rewards_for_a_whole_step_warn_once(tiny_vlm_dir, tmp_path, rewards_file, caplog):
    caplog.set_level(logging.WARNING)
    assert main(_train(tiny_vlm_dir, tmp_path / "run", f"{{name: '{rewards_file}:constant'}}", steps=3)) == 0
    said = [r.getMessage() for r in caplog.records if "no learning signal" in r.getMessage()]
    assert len(said) == 1 and said[0].startswith("step 1: every sample got the same reward (1)"), said


# --------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    "override",
    ["train.steps=-5", "train.steps=0", "rollout.group_size=0", "rollout.prompts_per_step=0",
     "rollout.max_new_tokens=0", "optim.grad_accum=0", "eval.num_items=0", "eval.num_chains=-1",
     "train.save_every=-1", "train.eval_every=-2", "warmup.steps=-1", "optim.lr=-1e-5"],
)  # fmt: skip
def test_negative_or_zero_counts_are_config_errors_naming_the_key(override):
    key = override.partition("=")[0]
    with pytest.raises(ConfigError, match=rf"^{key}: must be"):
        load_config("area-tiny", [override])


def test_zero_steps_is_a_warm_start_only_run():
    assert load_config("demo", ["train.steps=0"]).train.steps == 0  # the demo warms up first


def test_negative_steps_from_the_cli_is_one_line(capsys):
    assert main(["train", "--recipe", "area-tiny", "--set", "train.steps=-5"]) == 2
    assert _error_line(capsys).startswith("error: train.steps: must be at least 1, got -5")


@pytest.mark.parametrize("word", ["no", "yes", "on", "off", "No", "OFF"])
def test_yaml_boolean_words_stay_words_in_string_fields(word, tmp_path):
    cfg = load_config("area-tiny", [f"prompt.prefill={word}"])
    assert cfg.prompt.prefill == word and type(cfg.prompt.prefill) is str
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"base: area-tiny\nprompt: {{prefill: {word}, system: {word}}}\n")
    cfg = load_config(str(recipe))
    assert (cfg.prompt.prefill, cfg.prompt.system) == (word, word)


def test_yaml_boolean_words_still_mean_booleans_where_a_boolean_is_wanted(tmp_path):
    cfg = load_config("area-tiny", ["train.tensorboard=off", "data.kwargs={size: 56, rotate: yes}"])
    assert cfg.train.tensorboard is False and cfg.data.kwargs["rotate"] is True
    assert load_config("area-tiny", ["train.tensorboard=true"]).train.tensorboard is True


def test_lora_target_modules_all_linear(tiny_vlm_dir):
    from vlmgrpo.models import load_policy

    def lora_layers(target) -> set[str]:
        cfg = load_config("area-tiny", [f"model.name_or_path={tiny_vlm_dir}", "model.lora.enabled=true"])
        cfg.model.lora.target_modules = target
        model, _ = load_policy(cfg.model)
        return {n.rsplit(".", 2)[-2] for n, _ in model.named_modules() if n.endswith("lora_A")}

    cfg = load_config("area-tiny", ["model.lora.target_modules=all-linear"])
    assert cfg.model.lora.target_modules == "all-linear"
    every = lora_layers("all-linear")
    assert lora_layers(["q_proj", "v_proj"]) == {"q_proj", "v_proj"}
    assert {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"} <= every


def test_a_reward_file_beside_the_recipe_is_found(tmp_path, monkeypatch):
    from vlmgrpo.rewards import resolve_reward

    (tmp_path / "recipes").mkdir()
    (tmp_path / "recipes" / "my_rewards.py").write_text(REWARDS)
    recipe = tmp_path / "recipes" / "mine.yaml"
    recipe.write_text("base: area-tiny\nrewards:\n  - {name: my_rewards.py:brevity, kwargs: {target: 3}}\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    cfg = load_config(str(recipe))
    assert cfg.rewards[0].name == f"{(tmp_path / 'recipes' / 'my_rewards.py').resolve()}:brevity"
    assert resolve_reward(cfg.rewards[0].name).fn.__name__ == "brevity"


# --------------------------------------------------------------------------- CLI habits


def test_version(capsys):
    from vlmgrpo import __version__

    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"vlmgrpo {__version__}"


def test_train_without_a_recipe_lists_them_and_fails(capsys):
    assert main(["train"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: train needs --recipe")
    (line,) = [x for x in err.splitlines() if x.split()[:1] == ["area-tiny"]]
    assert "[offline]" in line and "shape-area" in line


def test_recipes_have_descriptions_and_offline_marks(capsys, tmp_path):
    from vlmgrpo.config import list_recipes

    assert main(["recipes"]) == 0
    lines = {x.split(" ", 1)[0]: x.split(" ", 1)[-1].strip() for x in capsys.readouterr().out.splitlines()}
    assert set(lines) == set(list_recipes())
    assert all(len(text) > 20 and text.endswith(".") for text in lines.values()), lines
    offline = {n for n, text in lines.items() if text.startswith("[offline]")}
    assert offline == {"adversarial", "area-tiny", "demo", "geometry-tiny", "img2code-tiny"}
    # a recipe without `description:` is listed with the first sentence of its leading comment
    from vlmgrpo.config import recipe_description

    mine = tmp_path / "mine.yaml"
    mine.write_text("# My own area run. Two lines of\n# notes.\nbase: area-tiny\n")
    assert recipe_description(str(mine)) == "[offline] My own area run."


def test_help_texts_end_their_sentences():
    from vlmgrpo.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    mine = {"train", "recipes", "tiny-model"}
    helps = [a.help for a in parser._actions if a.help and a.help != "==SUPPRESS=="]
    helps += [c.help for c in sub._choices_actions]
    for name in mine:
        helps += [a.help for a in sub.choices[name]._actions if a.help and a.dest != "help"]
    assert helps and all(h.rstrip().endswith((".", ")")) for h in helps), [
        h for h in helps if not h.endswith(".")
    ]


def test_a_hub_id_without_network_fails_in_seconds_with_one_line(tmp_path):
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env.update(HF_ENDPOINT=f"http://127.0.0.1:{sock.getsockname()[1]}", HF_HOME=str(tmp_path / "hf"))
    t0 = time.monotonic()
    r = subprocess.run(
        [sys.executable, "-m", "vlmgrpo.cli", "train", "--recipe", "area-tiny", "--model", "someorg/somemodel",
         "--output-dir", str(tmp_path / "run")],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    sock.close()
    assert r.returncode == 2 and time.monotonic() - t0 < 60  # was 148 s of retries
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert len(lines) == 1, r.stderr[-3000:]
    assert lines[0].startswith("error: someorg/somemodel: not in the local Hugging Face cache, and the Hub")
    assert "Connection refused" in lines[0]


def test_hf_hub_offline_with_an_uncached_id_is_one_line_at_once():
    from vlmgrpo.errors import ModelLoadError
    from vlmgrpo.models import hub_files_only

    with pytest.raises(ModelLoadError, match="HF_HUB_OFFLINE is set"):
        hub_files_only("someorg/not-cached-anywhere")  # conftest sets HF_HUB_OFFLINE=1


# --------------------------------------------------------------------------- offline recipes


def test_an_offline_recipe_builds_its_missing_tiny_model_once(tmp_path):
    from vlmgrpo.offline import ensure_inputs

    model = tmp_path / "runs" / "area-tiny" / "model"
    cfg = load_config("area-tiny", [f"model.name_or_path={model}"])
    said: list[str] = []
    assert ensure_inputs(cfg, said.append) == [model]
    (line,) = said
    assert line.startswith(f"built a tiny random qwen2_5_vl model in {model} (model.name_or_path was missing")
    assert (model / "config.json").is_file()
    assert ensure_inputs(cfg, said.append) == [] and len(said) == 1  # there now: left alone
    # a Hub id is the loader's business, never built; nor is a path the user gave (--model, --set)
    assert ensure_inputs(load_config("area-tiny", ["model.name_or_path=org/name"]), said.append) == []
    given = load_config("area-tiny", [f"model.name_or_path={tmp_path / 'mine'}"])
    assert ensure_inputs(given, said.append, recipe=load_config("area-tiny")) == []
    assert not (tmp_path / "mine").exists()


@pytest.mark.slow
def test_offline_recipes_train_from_nothing(tmp_path, tiny_qwen3_vl_dir):
    """`vlmgrpo train --recipe area-tiny` / `img2code-tiny` in an empty folder: the model and the
    sample data are built, one line each, then it trains."""
    cmd = [sys.executable, "-m", "vlmgrpo.cli", "train", "--set", "train.steps=1", *TINY[:4]]
    r = subprocess.run(
        [*cmd, "--recipe", "area-tiny"], cwd=tmp_path, capture_output=True, text=True, timeout=600
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "built a tiny random qwen2_5_vl model in runs/area-tiny/model" in r.stdout
    r = subprocess.run(
        [*cmd, "--recipe", "img2code-tiny", "--model", str(tiny_qwen3_vl_dir)],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    assert "built 12 sample img2code figures in runs/img2code-tiny/data" in r.stdout
    assert "Warning" not in r.stderr, r.stderr[-3000:]  # transformers' deprecation notes quieted


def test_the_warm_start_has_a_progress_bar(tiny_vlm_dir, tmp_path, capsys):
    args = ["train", "--recipe", "demo", "--model", str(tiny_vlm_dir), "--output-dir", str(tmp_path / "run"),
            "--set", "train.steps=1", "--set", "warmup.steps=2", "--set", "warmup.eval_every=0",
            "--set", "warmup.batch_size=2", "--set", "data.kwargs={n: 16, size: 56}",
            "--set", "data.eval_kwargs={n: 2, size: 56}", "--set", "rollout.group_size=2", *TINY]  # fmt: skip
    assert main([*args, "--set", "train.tensorboard=true"]) == 0
    err = capsys.readouterr().err
    assert "warm start: 100%" in err and "2/2" in err and "nan" not in err
    # TensorBoard: the warm start is a run of its own (its steps count from 1 like GRPO's)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags = {}
    for sub in ("", "warmup"):
        acc = EventAccumulator(str(tmp_path / "run" / "tb" / sub))
        acc.Reload()
        tags[sub] = acc.Tags()["scalars"]
    assert "warmup/loss" in tags["warmup"] and "warmup/loss" not in tags[""]
    assert "reward/mean" in tags[""]


def test_an_interrupted_build_leaves_nothing_a_later_run_would_take_for_a_model(tmp_path, monkeypatch):
    from vlmgrpo import offline

    def half_build(arg: str, path: Path) -> str:
        path.mkdir(parents=True)
        (path / "config.json").write_text("{}")  # the first file of a model, then the crash
        raise KeyboardInterrupt

    monkeypatch.setitem(offline.BUILDERS, "tiny", half_build)
    model = tmp_path / "runs" / "m" / "model"
    with pytest.raises(KeyboardInterrupt):
        offline.ensure_inputs(load_config("area-tiny", [f"model.name_or_path={model}"]), print)
    assert list((tmp_path / "runs" / "m").iterdir()) == []


@pytest.mark.parametrize(
    ("source", "said"),
    [
        ("def f(rec, ctx):\n    return 1 +\n", ":2: cannot import it (SyntaxError: invalid syntax"),
        ("import no_such_module_here\n", ":1: cannot import it (ModuleNotFoundError: No module named"),
        ("x = 1\nraise RuntimeError('set MY_KEY')\n", ":2: cannot import it (RuntimeError: set MY_KEY)"),
    ],
)
def test_a_reward_file_that_cannot_import_is_one_line_with_its_line(tmp_path, source, said):
    """A reward file with a syntax error or a missing import stopped `train` with a traceback."""
    from vlmgrpo.rewards import resolve_reward

    f = tmp_path / "r.py"
    f.write_text(source)
    with pytest.raises(ConfigError) as e:
        resolve_reward(f"{f}:f")
    assert str(e.value).startswith(f"{f}{said}") and "\n" not in str(e.value), str(e.value)
    with pytest.raises(ConfigError, match=r"no_such_pkg.mod: cannot import it \(ModuleNotFoundError"):
        resolve_reward("no_such_pkg.mod:f")


def test_an_unknown_reward_names_its_recipe_place():
    """`rewards: [{name: nosuch}]` said "unknown reward 'nosuch'; known: ..." without the key."""
    from vlmgrpo.rewards.trl_compat import specs_from_entries

    cfg = load_config("area-tiny", ["rewards=[{name: area_format}, {name: area_formt}]"])
    with pytest.raises(
        ConfigError, match=r"^rewards\[1\].name: unknown reward 'area_formt'; did you mean 'area_format'"
    ):
        specs_from_entries(cfg.rewards)
