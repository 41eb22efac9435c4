"""When the sandbox's isolation must hold, for tests: as root (CI) always, so a missing namespace
or limit fails there; without root where bubblewrap can build its namespaces (user namespaces
allowed), and otherwise the test skips with the reason."""

from __future__ import annotations

import os

import pytest

from vlmgrpo.sandbox import bwrap_works

ROOT = os.geteuid() == 0


def require_isolation() -> None:
    """Skip (non-root, no bubblewrap) or return; never skips as root."""
    why = bwrap_works()
    if why and not ROOT:
        pytest.skip(f"no isolation without root here: {why}")


def assert_isolated(isolation: dict, *keys: str) -> None:
    """Every layer in `keys` held for this run (see `SandboxResult.isolation`)."""
    assert isolation.get("backend") == "bwrap", isolation
    missing = [k for k in keys if not isolation.get(k)]
    assert not missing, f"layers that did not hold: {missing}; isolation: {isolation}"
