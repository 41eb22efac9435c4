"""Local path or Hub id (`vlmgrpo/sources.py`): one rule, pinned by a table, and every loader that
asks (policy, image embedder/generator, `hf` data source, offline builders) answers alike."""

from __future__ import annotations

import pytest

from vlmgrpo import offline, sources
from vlmgrpo.data.hf import load_args
from vlmgrpo.embed.hf import check_local_source
from vlmgrpo.errors import DataError, ModelLoadError
from vlmgrpo.models import _check_source

# value -> local path (True) or Hub id (False), for names that do not exist on disk
TABLE = [
    ("runs/demo/model", True),  # relative, two levels
    ("./model", True),
    ("../model", True),
    (".model", True),  # the Hub forbids a leading dot
    ("/abs/model", True),
    ("~/model", True),
    ("model/", True),  # trailing slash: a folder
    ("org/name/", True),
    ("C:\\models\\tiny", True),  # Windows-ish
    ("models\\tiny", True),
    ("C:/models", True),
    ("org/na me", True),  # the Hub allows no spaces
    ("org/name", False),
    ("Qwen/Qwen2.5-VL-3B-Instruct", False),
    ("gpt2", False),  # a bare Hub name, when no such folder is here
]


@pytest.mark.parametrize("value,local", TABLE)
def test_rule_table(value, local, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert sources.is_local_path(value) is local


@pytest.mark.parametrize("value", ["org/name", "gpt2"])
def test_an_existing_folder_wins_over_the_hub(value, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / value).mkdir(parents=True)
    assert sources.is_local_path(value)
    assert sources.is_local_path(value + "/")


def test_hub_id_shape_agrees_with_huggingface_hub():
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    for value, _ in TABLE:
        try:
            validate_repo_id(value)
            valid = True
        except HFValidationError:
            valid = False
        assert sources.is_hub_id(value) is valid, value


def _raises(fn, exc) -> bool:
    try:
        fn()
    except exc:
        return True
    return False


@pytest.mark.parametrize("value,local", TABLE)
def test_every_loader_applies_the_same_rule(value, local, tmp_path, monkeypatch):
    """A missing local path is a one-line error in every loader; a Hub id goes on to the Hub."""
    monkeypatch.chdir(tmp_path)
    assert _raises(lambda: _check_source(value), ModelLoadError) is local
    assert (
        _raises(lambda: check_local_source(value, "the embedder's", "hf download"), ModelLoadError) is local
    )
    assert _raises(lambda: load_args(value), DataError) is local
    assert offline.is_local_path is sources.is_local_path  # the builders ask the same function
