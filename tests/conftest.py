"""Shared fixtures: tiny real-architecture models built offline, once per test session."""

from __future__ import annotations

import os

# No machine here reaches a model hub: fail fast instead of retrying network calls.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402

# per-test limits (pyproject's `timeout` is 300 s): long opt-in runs get more, still never unbounded
_LIMITS = {"slow": 1800, "soak": 4 * 3600}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.get_closest_marker("timeout") is not None:
            continue
        limits = [s for name, s in _LIMITS.items() if item.get_closest_marker(name) is not None]
        if limits:
            item.add_marker(pytest.mark.timeout(max(limits)))


@pytest.fixture(scope="session")
def tiny_vlm_dir(tmp_path_factory):
    """Folder of a tiny random Qwen2.5-VL (model + processor), loadable with the Auto classes."""
    from vlmgrpo.models.tiny import build_tiny_vlm

    return build_tiny_vlm(tmp_path_factory.mktemp("tiny-qwen2_5_vl"), arch="qwen2_5_vl")


@pytest.fixture(scope="session")
def tiny_qwen3_vl_dir(tmp_path_factory):
    """Folder of a tiny random Qwen3-VL (model + processor), loadable with the Auto classes."""
    from vlmgrpo.models.tiny import build_tiny_vlm

    return build_tiny_vlm(tmp_path_factory.mktemp("tiny-qwen3_vl"), arch="qwen3_vl")


@pytest.fixture(scope="session")
def tiny_text_lm_dir(tmp_path_factory):
    """Folder of a tiny random Qwen2ForCausalLM with the same tokenizer."""
    from vlmgrpo.models.tiny import build_tiny_text_lm

    return build_tiny_text_lm(tmp_path_factory.mktemp("tiny-qwen2"))
