"""A run folder is never silently reused, and nothing a run wrote is lost: training into a folder
that holds another run refuses (one line) unless --resume or --overwrite; --overwrite moves the old
files aside; --resume-from keeps the rows and checkpoints it cuts; TensorBoard holds no duplicate
steps after a resume; a damaged checkpoint names itself and the newest intact one; a file where a
folder should be is one line before any model loads.

Runs go through the CLI's `main` in this process (the `area-tiny` recipe on the session's tiny
Qwen2.5-VL, 1 prompt x 2 samples x 4 tokens per step: about a second per run)."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from vlmgrpo.cli import main

TINY = [
    "--set", "rollout.group_size=2", "--set", "rollout.prompts_per_step=1",
    "--set", "rollout.max_new_tokens=4", "--set", "train.eval_every=0", "--set", "eval.num_items=2",
    "--set", "train.log_samples_every=1", "--set", "train.threads=1",
]  # fmt: skip


def _train(model: Path, out: Path, steps: int, *extra: str) -> list[str]:
    return ["train", "--recipe", "area-tiny", "--model", str(model), "--output-dir", str(out),
            "--set", f"train.steps={steps}", *TINY, *extra]  # fmt: skip


def _snapshot(root: Path, skip: tuple[str, ...] = ()) -> dict[str, str]:
    """relative path -> sha256 of every file under `root` (but the top-level names in `skip`)."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.relative_to(root).parts[0] not in skip
    }


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = [x for x in err.splitlines() if x.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err[-2000:]
    return lines[0]


def test_rerun_into_an_existing_run_folder_refuses_then_overwrite_loses_nothing(
    tiny_vlm_dir, tmp_path, capsys
):
    out = tmp_path / "run"
    model = out / "model"  # an input inside the run folder (as the offline recipes keep theirs)
    shutil.copytree(tiny_vlm_dir, model)
    assert main(_train(model, out, 2, "--set", "train.save_every=1")) == 0
    first = _snapshot(out, skip=("model",))
    assert {"config.yaml", "metrics.jsonl", "ckpts/ckpt-1/COMPLETE", "ckpts/ckpt-2/COMPLETE"} <= set(first)
    assert any(k.startswith("tb/") for k in first) and any(k.startswith("samples/") for k in first)
    assert "eval=nan" not in capsys.readouterr().err  # no evaluation ran: the bar shows none

    # the same command again: one line, nothing written or moved
    assert main(_train(model, out, 2, "--set", "train.save_every=1")) == 2
    line = _error_line(capsys)
    assert str(out) in line and "--resume" in line and "--overwrite" in line
    assert _snapshot(out, skip=("model",)) == first

    # --overwrite: the first run's files, byte for byte, under overwritten/<time>/; the model stays
    assert main(_train(model, out, 3, "--overwrite")) == 0
    (moved,) = (out / "overwritten").iterdir()
    assert f"moved to {moved}" in capsys.readouterr().out
    assert _snapshot(moved) == first
    assert (model / "config.json").is_file() and not (moved / "model").exists()
    assert [r["step"] for r in _rows(out / "metrics.jsonl")] == [1, 2, 3]
    assert sorted(p.name for p in (out / "ckpts").iterdir()) == ["ckpt-3"]

    # a second --overwrite keeps both earlier runs
    assert main(_train(model, out, 1, "--overwrite")) == 0
    assert len(list((out / "overwritten").iterdir())) == 2


@pytest.fixture(scope="module")
def four_steps(tiny_vlm_dir, tmp_path_factory):
    """A 4-step run with ckpt-2 and ckpt-4 and TensorBoard events; tests work on copies."""
    out = tmp_path_factory.mktemp("four") / "run"
    assert main(_train(tiny_vlm_dir, out, 4, "--set", "train.save_every=2")) == 0
    return out


def _tb_steps(run: Path) -> dict[str, list[int]]:
    """tag -> steps, as TensorBoard reads the folder (it honours the writers' purge_step)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tb"), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [e.step for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_resume_from_keeps_cut_rows_and_checkpoints_and_tensorboard_has_no_duplicates(
    four_steps, tiny_vlm_dir, tmp_path, capsys
):
    out = tmp_path / "run"
    shutil.copytree(four_steps, out)
    rows = _rows(out / "metrics.jsonl")
    ckpt4 = _snapshot(out / "ckpts" / "ckpt-4")
    assert _tb_steps(out)["reward/mean"] == [1, 2, 3, 4]

    (out / "ckpt_tests").mkdir()  # `vlmgrpo eval` results of the timeline being replaced
    for name in ("base", "ckpt-2", "ckpt-4"):
        (out / "ckpt_tests" / f"{name}.json").write_text(f'{{"model": "{name}"}}')
    assert main(_train(tiny_vlm_dir, out, 4, "--resume-from", "ckpt-2")) == 0
    said = capsys.readouterr().out
    # the cut ckpt-4's evaluation goes with it: it must not stand for the new ckpt-4 in the report
    assert sorted(p.name for p in (out / "ckpt_tests").glob("*.json")) == ["base.json", "ckpt-2.json"]
    assert (out / "ckpt_tests" / "cut-2" / "ckpt-4.json").read_text() == '{"model": "ckpt-4"}'
    assert "resuming from ckpt-2 (step 2)" in said and "metrics.cut-2.jsonl" in said
    assert [r["step"] for r in _rows(out / "metrics.jsonl")] == [1, 2, 3, 4]
    assert _rows(out / "metrics.cut-2.jsonl") == rows[2:]  # the cut rows, as they were
    # the replaced timeline's ckpt-4, intact, out of the way of a later --resume
    assert _snapshot(out / "ckpts" / "cut-2" / "ckpt-4") == ckpt4
    steps = _tb_steps(out)
    assert steps and all(s == sorted(set(s)) for s in steps.values()), steps
    assert steps["reward/mean"] == [1, 2, 3, 4]

    # a second cut at the same step: a new backup, the first one untouched
    first_cut = (out / "metrics.cut-2.jsonl").read_text()
    assert main(_train(tiny_vlm_dir, out, 3, "--resume-from", "ckpt-2")) == 0
    assert (out / "metrics.cut-2.jsonl").read_text() == first_cut
    assert [r["step"] for r in _rows(out / "metrics.cut-2-2.jsonl")] == [3, 4]
    assert (out / "ckpts" / "cut-2-2" / "ckpt-4").is_dir()


def test_resuming_a_finished_run_says_there_is_nothing_to_train(tiny_vlm_dir, tmp_path, capsys):
    """--resume on a run at its train.steps (or with a lower one) printed only "run folder: ..."
    and wrote its last checkpoint again."""
    out = tmp_path / "run"
    assert main(_train(tiny_vlm_dir, out, 2)) == 0
    state = out / "ckpts" / "ckpt-2" / "trainer_state.pt"
    before = (state.stat().st_mtime_ns, hashlib.sha256(state.read_bytes()).hexdigest())
    rows = (out / "metrics.jsonl").read_text()
    capsys.readouterr()
    assert main(_train(tiny_vlm_dir, out, 1, "--resume")) == 0
    said = capsys.readouterr().out
    assert "nothing to train: ckpt-2 is at step 2 and train.steps is 1; raise it" in said, said
    assert (state.stat().st_mtime_ns, hashlib.sha256(state.read_bytes()).hexdigest()) == before
    assert (out / "metrics.jsonl").read_text() == rows


def test_starting_over_never_replaces_an_earlier_metrics_backup(tiny_vlm_dir, tmp_path):
    """--resume with no checkpoint starts from step 0 and moves the earlier rows aside: a second
    such start keeps the first backup (it used to overwrite metrics.prev.jsonl)."""
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.jsonl").write_text('{"step": 1, "phase": "grpo", "attempt": 1}\n')
    assert main(_train(tiny_vlm_dir, out, 1, "--resume")) == 0
    assert _rows(out / "metrics.prev.jsonl") == [{"step": 1, "phase": "grpo", "attempt": 1}]
    second = (out / "metrics.jsonl").read_text()
    shutil.rmtree(out / "ckpts")  # killed before its first checkpoint, say
    assert main(_train(tiny_vlm_dir, out, 1, "--resume")) == 0
    assert _rows(out / "metrics.prev.jsonl") == [{"step": 1, "phase": "grpo", "attempt": 1}]
    assert (out / "metrics.prev-2.jsonl").read_text() == second
    assert (out / "tb.prev-2").is_dir()  # its TensorBoard events went with its rows


@pytest.mark.parametrize("damage", ["model.safetensors", "trainer_state.pt"])
def test_damaged_latest_checkpoint_names_itself_and_the_newest_intact_one(
    four_steps, tiny_vlm_dir, tmp_path, capsys, damage
):
    out = tmp_path / "run"
    shutil.copytree(four_steps, out)
    f = out / "ckpts" / "ckpt-4" / damage
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])  # cut short after its COMPLETE marker
    assert main(_train(tiny_vlm_dir, out, 6, "--resume")) == 2
    line = _error_line(capsys)
    assert f"{out / 'ckpts' / 'ckpt-4'}: checkpoint is damaged ({damage}" in line
    assert line.endswith("resume from the newest intact one with --resume-from ckpt-2")
    # and that advice works
    assert main(_train(tiny_vlm_dir, out, 3, "--resume-from", "ckpt-2")) == 0


def test_a_file_where_the_run_folder_should_be_is_one_line_before_any_model_loads(tmp_path, capsys):
    blocker = tmp_path / "taken"
    blocker.write_text("not a folder")
    missing_model = tmp_path / "no-such-model"  # were the model loaded first, this would be the error
    for out in (blocker, blocker / "run"):
        assert main(_train(missing_model, out, 1)) == 2
        line = _error_line(capsys)
        assert line.startswith(f"error: train.output_dir: {out} cannot be a folder"), line
    assert blocker.read_text() == "not a folder"
    assert main(["tiny-model", "--out", str(blocker / "m")]) == 2
    assert _error_line(capsys).startswith(f"error: --out: {blocker / 'm'} cannot be a folder")


def test_resume_and_overwrite_together_is_an_error(tiny_vlm_dir, tmp_path, capsys):
    assert main(_train(tiny_vlm_dir, tmp_path / "run", 1, "--resume", "--overwrite")) == 2
    assert "choose one" in _error_line(capsys)


def test_config_yaml_records_relative_inputs_as_absolute_paths(tiny_vlm_dir, tmp_path, monkeypatch):
    """A model folder given relative to where training ran (`--model m`) was written to config.yaml
    as typed, so `vlmgrpo eval` / `export` / `--resume` from any other folder could not find it."""
    import yaml

    work = tmp_path / "work"
    shutil.copytree(tiny_vlm_dir, work / "m")
    monkeypatch.chdir(work)
    assert main(_train(Path("m"), Path("run"), 1)) == 0
    cfg = yaml.safe_load((work / "run" / "config.yaml").read_text())
    assert cfg["model"]["name_or_path"] == str((work / "m").resolve())
    monkeypatch.chdir(tmp_path)  # elsewhere: the recorded path still loads
    from vlmgrpo.config import config_from_file

    assert Path(config_from_file(work / "run" / "config.yaml").model.name_or_path).is_dir()


def test_absolute_inputs_leaves_hub_ids_and_missing_paths_alone(tmp_path, monkeypatch):
    from vlmgrpo.commands.train import absolute_inputs
    from vlmgrpo.config import Config

    monkeypatch.chdir(tmp_path)
    (tmp_path / "evalset").mkdir()
    cfg = Config()
    cfg.model.name_or_path = "Qwen/Qwen2.5-VL-3B-Instruct"
    cfg.data.kwargs = {"path": "missing/folder"}
    cfg.data.eval_kwargs = {"path": "evalset"}
    cfg.extra = {"adversary": {"model": {"name_or_path": "evalset"}}}
    assert absolute_inputs(cfg) == ["data.eval_kwargs.path", "extra.adversary.model.name_or_path"]
    assert cfg.model.name_or_path == "Qwen/Qwen2.5-VL-3B-Instruct"
    assert cfg.data.kwargs["path"] == "missing/folder"
    assert cfg.data.eval_kwargs["path"] == str(tmp_path / "evalset")
    assert cfg.extra["adversary"]["model"]["name_or_path"] == str(tmp_path / "evalset")


def test_a_folder_with_only_config_yaml_says_so_and_resume_starts_it_again(tiny_vlm_dir, tmp_path, capsys):
    """A start that stopped before its first step (a reward raising at the step-0 evaluation, W&B
    without a key) leaves only config.yaml; the refusal now says so and what --resume does."""
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.yaml").write_text("recipe: area-tiny\n")
    assert main(_train(tiny_vlm_dir, out, 1)) == 2
    err = capsys.readouterr().err
    assert "holds only config.yaml, from a start that stopped before its first step" in err
    assert main(_train(tiny_vlm_dir, out, 1, "--resume")) == 0
    assert (out / "metrics.jsonl").is_file() and "train" in (out / "config.yaml").read_text()
