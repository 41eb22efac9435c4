"""What a new user meets walking the README: help texts, one-line errors, eval labels."""

from __future__ import annotations


def test_every_command_description_is_whole_sentences():
    # the description was the docstring's first line, which cut wrapped sentences mid-way
    # ("... GRPO on a task's own" for `vlmgrpo demo --help`)
    from vlmgrpo.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    cut = {
        name: p.description
        for name, p in sub.choices.items()
        if not p.description.rstrip().endswith((".", ")"))
    }
    assert not cut, cut
    assert "\n" not in sub.choices["demo"].description


def test_download_hints_name_the_installed_hub_cli():
    # huggingface_hub >= 1.0 ships `hf` only; the one-line "not in the cache" errors told users to
    # run `huggingface-cli download`, a command the installed package no longer has
    import sys
    from pathlib import Path

    import vlmgrpo

    assert (Path(sys.executable).parent / "hf").exists()
    src = Path(vlmgrpo.__file__).parent
    stale = [
        str(p) for p in src.rglob("*") if p.suffix in (".py", ".yaml") and "huggingface-cli" in p.read_text()
    ]
    assert not stale, stale


def test_geometry_eval_says_what_runs_greedy_one_answer():
    # `vlmgrpo eval` on geometry-tiny printed "4 samples, temperature 1.0" (the run's eval settings)
    # and later "sampled at temperature 1", though tasks/geometry_eval.py answers each item once,
    # greedily, whatever those settings say
    from vlmgrpo.config import load_config
    from vlmgrpo.evaluate import EvalOptions, metric_name, settings_line

    cfg = load_config("geometry-tiny")
    assert metric_name("geometry", cfg) == metric_name("geometry", load_config("geometry3k"))
    assert "greedy" in metric_name("geometry", cfg)
    opts = EvalOptions(num_items=16, num_samples=4, temperature=1.0, max_new_tokens=64)
    line = settings_line("geometry", opts, cfg)
    assert "16 items, greedy, 1 answer each" in line and "temperature" not in line
    assert "4 samples, temperature 1.0" in settings_line("area", opts, load_config("area-tiny"))


def test_gradient_checkpointing_loads_without_a_deprecation_warning(tmp_path):
    # the Python API (examples/grpo_vlm_offline.py) printed transformers' FutureWarning
    # "`gradient_checkpointing_enable` is deprecated" from vlmgrpo's own call on every run
    import warnings

    from vlmgrpo.config import ModelConfig
    from vlmgrpo.models import load_policy, tiny

    path = tiny.build_tiny_vlm(tmp_path / "m", arch="qwen2_5_vl", seed=0)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        model, _ = load_policy(ModelConfig(name_or_path=str(path), gradient_checkpointing=True))
    assert model.is_activation_checkpointing
    assert not [w for w in seen if "gradient_checkpointing_enable" in str(w.message)]


def test_export_names_the_checkpoint_it_wrote(tmp_path, capsys):
    # `vlmgrpo export --checkpoint RUN` said only "exported to OUT": which of the run's save_model
    # folder and ckpts/ckpt-N went out was left to guess
    from vlmgrpo.cli import main
    from vlmgrpo.models import tiny

    path = tiny.build_tiny_vlm(tmp_path / "m", arch="qwen2_5_vl", seed=0)
    assert main(["export", "--checkpoint", str(path), "--out", str(tmp_path / "out")]) == 0
    assert capsys.readouterr().out.strip() == f"exported {path} to {tmp_path / 'out'}"


def test_data_builders_take_output_and_show_their_defaults(capsys):
    # `vlmgrpo data img2code` alone wanted --out where the README and the other builders say
    # --output; `vlmgrpo data geometry-synthetic --help` had no description and no defaults
    import pytest

    from vlmgrpo.cli import build_parser

    parser = build_parser()
    args = parser.parse_args(["data", "img2code", "--create-sample", "--output", "figs"])
    assert args.out == "figs"
    with pytest.raises(SystemExit):
        parser.parse_args(["data", "geometry-synthetic", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "Geometry3K-layout diagrams" in text and "training items (default: 400)" in text
    assert "(default: None)" not in text


def test_an_output_dir_that_is_a_file_says_so(tmp_path):
    # "--output-dir afile" said "afile cannot be a folder: choose another path", not why
    import pytest

    from vlmgrpo.errors import ConfigError
    from vlmgrpo.runlog import check_output_dir

    (tmp_path / "afile").write_text("x")
    with pytest.raises(ConfigError, match=r"afile cannot be a folder \(it is a file\)"):
        check_output_dir(tmp_path / "afile")


def test_a_misspelled_recipe_fails_before_torch_loads():
    # `vlmgrpo train --recipe are-tiny` took 6 s on the shared 2-core box to say "did you mean
    # 'area-tiny'?": the accelerate-config check imported torch first, launched by accelerate or not
    import os
    import subprocess
    import sys

    code = (
        "import sys; from vlmgrpo.cli import main; rc = main(['train', '--recipe', 'are-tiny']); "
        "print(rc, 'torch' in sys.modules)"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("ACCELERATE_")}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert "did you mean 'area-tiny'" in r.stderr
    assert r.stdout.split() == ["2", "False"], r.stdout
