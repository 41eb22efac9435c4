"""Offline recipes build their own inputs: a missing tiny model or sample data set is made on first
use, with one line saying what was built and where.

A recipe lists them under `build:` as config key -> builder:

    build:
      model.name_or_path: tiny:qwen2_5_vl        # `vlmgrpo tiny-model --arch qwen2_5_vl --out PATH`
      data.kwargs.path: img2code-sample:12       # `vlmgrpo data img2code --create-sample --n 12 --out PATH`
      data.kwargs.path: geometry-synthetic:400   # `vlmgrpo data geometry-synthetic --n 400 --output PATH`
      extra.adversary.model.name_or_path: tiny:qwen2
      model.name_or_path: demo                   # the demo's tiny Qwen3-VL (commands/demo.py)

Only the recipe's own path is built, when nothing is there yet: a path given with `--model` or
`--set` is the user's (a missing one stays the loader's one-line error, never a random model), a
Hugging Face id is never built, and an existing folder is never touched. A build goes to a
temporary folder renamed into place when done, so an interrupted one leaves no half-built model
that a later run would take as complete; under torchrun rank 0 builds and the other ranks wait.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vlmgrpo.errors import ConfigError
from vlmgrpo.sources import is_local_path


def _tiny(arch: str, path: Path) -> str:
    from vlmgrpo.models import tiny

    if arch not in tiny.ARCHS:
        raise ConfigError(f"build: tiny:{arch}: unknown architecture; known: {', '.join(tiny.ARCHS)}")
    if arch == "qwen2":
        tiny.build_tiny_text_lm(path)
    else:
        tiny.build_tiny_vlm(path, arch=arch)
    return f"a tiny random {arch} model"


def _demo(_: str, path: Path) -> str:
    import contextlib
    import io

    from vlmgrpo.commands.demo import build_demo_model

    with contextlib.redirect_stdout(io.StringIO()):  # its own line would repeat ours
        build_demo_model(path)
    return "the demo's tiny qwen3_vl model"


def _img2code_sample(n: str, path: Path) -> str:
    from vlmgrpo.data.img2code import create_sample

    create_sample(path, int(n or 12))
    return f"{n or 12} sample img2code figures"


def _geometry_synthetic(n: str, path: Path) -> str:
    from vlmgrpo.data.geometry_synthetic import write

    counts = write(path, int(n or 400), 50)
    return f"{counts['train']} synthetic geometry diagrams (+ val/test)"


# builder name -> fn(argument after the colon, path) -> what was built, in words
BUILDERS: dict[str, Callable[[str, Path], str]] = {
    "tiny": _tiny,
    "demo": _demo,
    "img2code-sample": _img2code_sample,
    "geometry-synthetic": _geometry_synthetic,
}


def _lookup(cfg_dict: dict[str, Any], key: str) -> Any:
    node: Any = cfg_dict
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def check_builders(build: dict[str, str]) -> None:
    for key, spec in build.items():
        if spec.partition(":")[0] not in BUILDERS:
            raise ConfigError(f"build.{key}: unknown builder '{spec}'; known: {', '.join(BUILDERS)}")


def ensure_inputs(cfg: Any, echo: Callable[[str], None] = print, recipe: Any = None) -> list[Path]:
    """Build each missing input the recipe's `build:` names; returns the paths built. `recipe`: the
    recipe's config before overrides; a value that differs from it was given by the user: not built."""
    check_builders(cfg.build)
    data = cfg.to_dict()
    own = recipe.to_dict() if recipe is not None else data
    built = []
    for key, spec in cfg.build.items():
        value = _lookup(data, key)
        if not isinstance(value, str) or not value or not is_local_path(value) or value != _lookup(own, key):
            continue
        path = Path(value).expanduser()
        if path.exists():
            continue
        if os.environ.get("RANK", "0") != "0":  # torchrun: rank 0 builds it
            _wait_for(path)
            continue
        name, _, arg = spec.partition(":")
        t0 = time.perf_counter()
        tmp = path.with_name(f".{path.name}.building-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            what = BUILDERS[name](arg, tmp)
            tmp.rename(path)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        echo(f"built {what} in {path} ({key} was missing; {time.perf_counter() - t0:.0f} s, offline)")
        built.append(path)
    return built


def _wait_for(path: Path, timeout_s: float = 1800.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        if time.monotonic() > deadline:
            raise ConfigError(f"{path}: rank 0 did not build it within {timeout_s:.0f} s")
        time.sleep(0.5)
