"""Explicit registries: a name -> object dict that rejects duplicates and suggests near misses.

Heavy backends register a *loader path* ("module:attr") instead of the object, so selecting
them imports the backend only then.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, Generic, TypeVar

from vlmgrpo.errors import ConfigError, first_line

T = TypeVar("T")


def import_from_path(spec: str) -> Any:
    """Resolve "package.module:attr" or "path/to/file.py:attr" to the object."""
    target, _, attr = spec.rpartition(":")
    if not target or not attr:
        raise ConfigError(f"'{spec}' is not of the form module:name or path/to/file.py:name")
    if target.endswith(".py"):
        path = Path(target)
        if not path.is_file():
            raise ConfigError(f"{target}: file not found (from '{spec}')")
        mod_spec = importlib.util.spec_from_file_location(f"vlmgrpo_user_{path.stem}", path)
        assert mod_spec and mod_spec.loader
        module = importlib.util.module_from_spec(mod_spec)
        try:
            mod_spec.loader.exec_module(module)
        except Exception as e:  # the user's file: a syntax error, a missing import, a raise at import
            raise ConfigError(
                f"{target}{_line_in(e, path)}: cannot import it ({first_line(e)}) (from '{spec}')"
            ) from None
    else:
        try:
            module = importlib.import_module(target)
        except ImportError as e:
            raise ConfigError(f"{target}: cannot import it ({first_line(e)}) (from '{spec}')") from None
    try:
        return getattr(module, attr)
    except AttributeError:
        raise ConfigError(f"{target} has no attribute '{attr}' (from '{spec}')") from None


def _line_in(e: BaseException, path: Path) -> str:
    """The line of `path` where `e` arose, as ":N" (a SyntaxError's own line, else the innermost
    frame in that file); "" when the traceback never passed through it."""
    if (
        isinstance(e, SyntaxError)
        and e.lineno
        and e.filename
        and Path(e.filename).resolve() == path.resolve()
    ):
        return f":{e.lineno}"
    frames = [
        f for f in traceback.extract_tb(e.__traceback__) if Path(f.filename).resolve() == path.resolve()
    ]
    return f":{frames[-1].lineno}" if frames else ""


class Registry(Generic[T]):
    """A named dict of entries; `get` resolves lazy "module:attr" entries on first use."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T | str] = {}
        self._instances: dict[tuple[str, str], Any] = {}

    def register(self, name: str, obj: T | str | None = None) -> Callable[[T], T] | T | str:
        if name in self._entries:
            raise ValueError(f"{self.kind} '{name}' is already registered")
        if obj is not None:
            self._entries[name] = obj
            return obj

        def deco(fn: T) -> T:
            self._entries[name] = fn
            return fn

        return deco

    def names(self) -> list[str]:
        return sorted(self._entries)

    def get(self, name: str) -> T:
        if name not in self._entries:
            if ":" in name:  # user code: path/to/file.py:fn or package.module:fn
                return import_from_path(name)
            close = difflib.get_close_matches(name, self._entries, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else f"; known: {', '.join(self.names())}"
            raise ConfigError(f"unknown {self.kind} '{name}'{hint}")
        entry = self._entries[name]
        if isinstance(entry, str):
            entry = import_from_path(entry)
            self._entries[name] = entry
        return entry  # type: ignore[return-value]

    def instance(self, name: str, kwargs: dict[str, Any] | None = None) -> Any:
        """One object per (name, kwargs) per process, built by calling the entry with **kwargs:
        pipelines and embedders are loaded once and shared by every reward that names them."""
        import json

        key = (name, json.dumps(kwargs or {}, sort_keys=True))
        if key not in self._instances:
            self._instances[key] = self.get(name)(**(kwargs or {}))
        return self._instances[key]

    def instances(self) -> list[Any]:
        """The shared objects built so far (the trainer moves them between device and host)."""
        return list(self._instances.values())

    def clear_instances(self) -> None:
        """Drop the shared instances (tests; or to reload a changed model folder)."""
        self._instances.clear()
