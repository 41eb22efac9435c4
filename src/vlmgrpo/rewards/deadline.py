"""A time bound that really stops the work: the call runs in a worker process, and a call past its
deadline has its worker killed (SIGKILL) and replaced. Valid from any thread (the trainer's
`rollout.overlap` worker thread included), unlike SIGALRM timeouts, which only work in the main
thread and cannot interrupt C code.

- `call(fn, *args, timeout_s=...)`: run a module-level function in a worker; `DeadlineExceeded`
  past the bound. Used by the geometry grader for symbolic evaluation of untrusted answers.
- `bounded_reward(name, batched, timeout_s, max_memory_gb)`: a reward function with the registry
  signature that runs the reward `name` in a worker (records and context pickled, `ctx.policy`
  left out; the records' `extras` come back). `compute_rewards` uses it for a spec with a time
  bound: a call that runs out of time raises `DeadlineExceeded`, one that allocates past its
  memory bound `MemoryLimitExceeded`; either way the sample is skipped and counted in
  `reward/<name>/failed` (never the "broken reward" stop), and the warning names its sample id.

The memory bound is RLIMIT_DATA, set in the worker for the call (default `DEFAULT_MEMORY_GB`): an
allocation past it fails (MemoryError in Python and numpy, torch's "can't allocate memory"), the
worker is replaced, and the trainer's host keeps its memory. RLIMIT_DATA, not RLIMIT_AS: the
address space also counts glibc's per-thread arena reservations and library mappings, which grow
with the core count without using memory (a worker holding numpy and torch with 128 threads each
measured VmSize 3.8 GB, VmData 2.4 GB, resident 0.34 GB). It is a guard against runaway rewards,
not a sandbox: the reward's own code could raise its soft limit, and a library that aborts
instead of failing an allocation kills its worker, which counts as a crash.

Workers are fresh interpreters (no fork of a process that holds a GPU context, no re-import of the
caller's `__main__`), kept and reused; as many run
as there are concurrent callers (at most `MAX_WORKERS`). Start-up costs ~0.5-1 s (imports), once
per worker and again after each kill. Inside a worker, `call` runs inline under a SIGALRM timer
(the worker's main thread), and the parent's deadline is the hard stop.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

from vlmgrpo.errors import first_line

MAX_WORKERS = 4  # concurrent calls (callers beyond this wait for a free worker)
_IN_WORKER = False  # True inside a worker process
_idle: list[_Worker] = []
_owner = os.getpid()  # the process the idle workers belong to
_lock = threading.Lock()
_slots = threading.BoundedSemaphore(MAX_WORKERS)
_warmups: list[str] = []  # "module:function" run by each worker before it takes calls
_warmed: set[str] = set()  # those run in this process
STARTUP_TIMEOUT_S = 120.0  # a worker's start-up (imports, warm-ups); not part of any call's bound
# memory bound per reward call in a worker (GiB of RLIMIT_DATA) unless its spec says otherwise:
# ~0.3 GB is the worker with numpy and torch loaded (2.4 GB counted with 128 threads each)
DEFAULT_MEMORY_GB = 8.0


def warm_up(target: str) -> None:
    """Run `target` ("module:function", no arguments) in every worker before its first call, so
    that imports and first-use costs (e.g. a parser's grammar) do not count against a deadline."""
    if target not in _warmups:
        _warmups.append(target)


class DeadlineExceeded(TimeoutError):
    """The call ran past its time bound and was stopped."""


class MemoryLimitExceeded(MemoryError):
    """The call allocated past its memory bound and was stopped (its worker is replaced)."""


def _out_of_memory(e: BaseException) -> bool:
    """An allocation refused: Python's and numpy's MemoryError, torch's CPU allocator error, ENOMEM."""
    if isinstance(e, MemoryError):
        return True
    if isinstance(e, OSError) and e.errno == 12:  # ENOMEM, e.g. mmap or fork
        return True
    return isinstance(e, RuntimeError) and "can't allocate memory" in str(e)


_DATA_LIMIT = resource.getrlimit(resource.RLIMIT_DATA)  # (soft, hard) as this process started


def _limit_memory(nbytes: int) -> None:
    """This process's RLIMIT_DATA soft limit: `nbytes` (never above the one it started with), or
    back to the one it started with for 0."""
    soft, hard = _DATA_LIMIT
    if nbytes > 0 and (soft == resource.RLIM_INFINITY or nbytes < soft):
        soft = nbytes
    resource.setrlimit(resource.RLIMIT_DATA, (soft, hard))


# The worker runs `python -c WORKER_MAIN FD WARMUPS`: not multiprocessing's spawn, which re-imports
# the caller's __main__ (a script without an `if __name__ == "__main__"` guard would recurse)
WORKER_MAIN = (
    "import json, os, sys; sys.path[:] = json.loads(os.environ.pop('VLMGRPO_DEADLINE_PATH'));"
    "from vlmgrpo.rewards.deadline import _worker_main; _worker_main(int(sys.argv[1]), json.loads(sys.argv[2]))"
)


def _worker_main(fd: int, warmups: list[str]) -> None:
    parent = os.getppid()

    def orphan_watch() -> None:  # the trainer died while a call was running: stop too
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=orphan_watch, daemon=True).start()
    _serve(Connection(fd), warmups)


def _serve(conn: Any, warmups: list[str]) -> None:
    """Worker loop: (fn, args, kwargs, memory bound in bytes or 0) in; ("ok", value),
    ("err", exception) or ("memory", message) out."""
    global _IN_WORKER
    _IN_WORKER = True
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the trainer's to handle
    _warmups[:] = warmups
    _run_warmups()
    conn.send(("ready", None))
    while True:
        try:
            fn, args, kwargs, nbytes = conn.recv()
        except (EOFError, OSError):
            return
        try:
            _limit_memory(nbytes)
            out: tuple[str, Any] = ("ok", fn(*args, **kwargs))
        except BaseException as e:  # noqa: BLE001 - everything goes back to the caller
            out = ("memory", first_line(e, 160)) if nbytes and _out_of_memory(e) else ("err", e)
        finally:
            _limit_memory(0)  # the reply and the next call's arguments are not the call's
        try:
            conn.send(out)
        except Exception as e:  # an unpicklable value or exception
            conn.send(("err", RuntimeError(f"{type(e).__name__}: {e} (result of {fn!r})")))


class _Worker:
    def __init__(self) -> None:
        mine, theirs = socket.socketpair()
        env = dict(os.environ, VLMGRPO_DEADLINE_PATH=json.dumps(sys.path))  # import what we import
        cmd = [sys.executable, "-c", WORKER_MAIN, str(theirs.fileno()), json.dumps(_warmups)]
        try:
            self.proc = subprocess.Popen(cmd, env=env, pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL)
        finally:
            theirs.close()
        self.conn = Connection(mine.detach())
        try:
            ready = self.conn.poll(STARTUP_TIMEOUT_S) and self.conn.recv()[0] == "ready"
        except (EOFError, OSError):
            ready = False
        if not ready:
            self.kill()
            raise RuntimeError(f"a deadline worker did not start within {STARTUP_TIMEOUT_S:g} s")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        with contextlib.suppress(Exception):
            self.proc.kill()
            self.proc.wait(5)
        with contextlib.suppress(Exception):
            self.conn.close()


def _take() -> _Worker:
    global _owner
    with _lock:
        if _owner != os.getpid():  # a forked child must not talk to its parent's workers
            _idle.clear()
            _owner = os.getpid()
        while _idle:
            w = _idle.pop()
            if w.alive():
                return w
            w.kill()
    return _Worker()


def _run_warmups() -> None:
    for target in [t for t in _warmups if t not in _warmed]:
        _warmed.add(target)
        with contextlib.suppress(Exception):
            module, _, name = target.partition(":")
            getattr(importlib.import_module(module), name)()


def _inline(fn: Callable[..., Any], args: tuple, kwargs: dict, timeout_s: float) -> Any:
    """Inside a worker: a SIGALRM timer (interrupts Python code; the parent kills the rest)."""
    _run_warmups()  # registered after this worker started (e.g. by a reward module it imported)
    if threading.current_thread() is not threading.main_thread():
        return fn(*args, **kwargs)

    def alarm(*_: Any) -> None:
        raise DeadlineExceeded(f"{getattr(fn, '__name__', fn)} ran past {timeout_s:g} s")

    old = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, timeout_s)
    try:
        return fn(*args, **kwargs)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def call(
    fn: Callable[..., Any], *args: Any, timeout_s: float, max_memory_gb: float = 0.0, **kwargs: Any
) -> Any:
    """`fn(*args, **kwargs)` in a worker process, stopped after `timeout_s` seconds (wall clock,
    from when a worker takes it; worker start-up is not counted) or when it allocates past
    `max_memory_gb` GiB of data (0: no memory bound). `fn` must be importable by name (a
    module-level function); its exceptions are re-raised here."""
    if _IN_WORKER:  # nested (a grader's own bound): the worker's memory bound already applies
        return _inline(fn, args, kwargs, timeout_s)
    nbytes = int(max_memory_gb * 2**30) if max_memory_gb > 0 else 0
    with _slots:
        worker = _take()
        try:
            worker.conn.send((fn, args, kwargs, nbytes))
            ready = worker.conn.poll(timeout_s)
            status, value = worker.conn.recv() if ready else ("timeout", None)
        except (EOFError, OSError) as e:  # the worker died (OOM killer, a crash in C code)
            worker.kill()
            raise RuntimeError(f"{getattr(fn, '__name__', fn)}: its worker process died ({e})") from None
        except BaseException:
            worker.kill()
            raise
        if status == "timeout":
            worker.kill()
            raise DeadlineExceeded(f"ran past its {timeout_s:g} s bound and was stopped")
        if status == "memory":  # its heap may hold what it got before the refusal: a fresh one
            worker.kill()
            raise MemoryLimitExceeded(f"allocated past its {max_memory_gb:g} GiB memory bound ({value})")
        with _lock:
            _idle.append(worker)
    if status == "err":
        raise value
    return value


def shutdown() -> None:
    """Stop the idle workers (they also end with the trainer: daemonic)."""
    with _lock:
        while _idle:
            _idle.pop().kill()


# ----------------------------------------------------------------------------------- rewards
def _run_reward(name: str, batched: bool, records: Any, ctx: Any, kwargs: dict) -> tuple[Any, Any]:
    """In the worker: the reward's value(s) and the records' extras (which it may have set)."""
    from vlmgrpo.rewards.base import _run, resolve_reward

    fn = resolve_reward(name).fn
    value = _run(fn(records, ctx, **kwargs))
    extras = [r.extras for r in records] if batched else records.extras
    if batched:
        value = list(value)
    return value, extras


def bounded_reward(
    name: str, batched: bool, timeout_s: float, max_memory_gb: float = DEFAULT_MEMORY_GB
) -> Callable[..., Any]:
    """A reward function (registry signature) that runs reward `name` in a worker process with a
    bound of `timeout_s` seconds and `max_memory_gb` GiB (0: none) per call (per sample, or per
    batch for batched rewards)."""

    def fn(records: Any, ctx: Any, **kwargs: Any) -> Any:
        light = dataclasses.replace(ctx, policy=None)  # a policy handle does not cross processes
        value, extras = call(
            _run_reward,
            name,
            batched,
            records,
            light,
            kwargs,
            timeout_s=timeout_s,
            max_memory_gb=max_memory_gb,
        )
        if batched:
            for rec, ex in zip(records, extras):
                rec.extras.update(ex)
        else:
            records.extras.update(extras)
        return value

    fn.batched = batched  # type: ignore[attr-defined]
    return fn


def default_timeout(reward_fn: Callable[..., Any]) -> float:
    """The bound a reward declares for itself (`fn.timeout_s`, set on the pure graders), else 0
    (none: a reward that uses the policy, a GPU model or its own timeouts runs in-process)."""
    return float(getattr(reward_fn, "timeout_s", 0.0) or 0.0)
