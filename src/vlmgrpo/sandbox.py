"""Run untrusted matplotlib programs (policy completions), one process each, and keep the figure.

A launcher per program (`python -I sandbox.py SPEC`, own session) reads the program through a
descriptor, compiles it (syntax errors return at once), sets rlimits, imports matplotlib (Agg),
forks the program and saves its current figure (`plt.gcf()`) through a descriptor opened by the
parent. The timeout starts after this setup, so import time on a loaded machine is no timeout.
Statuses: `STATUSES` (`sandbox_error` = the sandbox failed, not the program; the reward skips
it). `run_many` runs programs on a thread pool sized to the machine. Linux only.

Isolation is bubblewrap's (`bwrap`, Debian package `bubblewrap`), where it can build namespaces
(as root; without root where user namespaces are allowed). It gives the launcher a fresh root
with only what a Python program needs: /usr and its symlinks, a few /etc files (library cache,
fonts), the interpreter's prefixes and the launcher, all read-only; a size-capped private tmpfs
at /sbx/work as the working directory (its path exists inside, so `os.path.abspath` works) and
another at /tmp; new /proc
and /dev; new mount, PID, network, IPC and UTS namespaces. The launcher joins a fresh session
keyring. As root the program also runs as a leased unprivileged uid (RLIMIT_NPROC per program,
every process of the uid killed after the run). Without bubblewrap, or with `isolate: false`,
only the "always" list holds: own session, rlimits (memory, CPU, file size, open files, no
core), an environment built from scratch, own cwd. Limit hits (MemoryError, EFBIG, EMFILE,
EAGAIN from fork, ENOSPC) are `resource_limit`. `SandboxResult.isolation` records, per run,
which layers held (namespaces compared by inode with the trainer's). A program can misreport
its class, but "ok" still needs a readable figure, which is all that is scored.
Details and the table of guarantees: docs/img2code.md.
"""

from __future__ import annotations

import builtins
import contextlib
import ctypes
import errno
import fcntl
import functools
import io
import json
import linecache
import os
import resource
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

STATUSES = ("ok", "syntax_error", "runtime_error", "timeout", "resource_limit", "no_figure", "sandbox_error")
# launcher exit codes (before the setup report: syntax / setup; after it: the program's outcome)
EXIT_OK, EXIT_SYNTAX, EXIT_RUNTIME, EXIT_NO_FIGURE, EXIT_RESOURCE, EXIT_SETUP = 0, 10, 11, 12, 13, 20
PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_SET_CHILD_SUBREAPER, PR_SET_NO_NEW_PRIVS = 1, 4, 36, 38
CLONE_NEWIPC, CLONE_NEWUSER = 0x08000000, 0x10000000
# soft CPU / file-size limits; SIGKILL not sent by us: the hard CPU limit or the OOM killer
LIMIT_SIGNALS = (signal.SIGXCPU, signal.SIGXFSZ, signal.SIGKILL)
# errors that mean a limit was hit: fork/thread (EAGAIN), memory, file size, open files, tmpfs full
LIMIT_ERRNOS = {
    errno.EAGAIN,
    errno.ENOMEM,
    errno.EFBIG,
    errno.EMFILE,
    errno.ENFILE,
    errno.ENOSPC,
    errno.EDQUOT,
}
NAMESPACES = ("mnt", "pid", "net", "ipc", "uts", "user", "cgroup")
NS_KEYS = {"mnt": "mount_ns", "pid": "pid_ns", "net": "network", "ipc": "ipc_ns", "uts": "uts_ns"}
SYS_KEYCTL = {"x86_64": 250, "aarch64": 219}
# paths inside the bwrap view: the launcher, matplotlib's font list (read-only), a writable copy
# the cwd is not /tmp: an interpreter below /tmp (a CI clone's venv) puts its mount point there
SBX_LAUNCHER, SBX_MPL_CACHE, SBX_MPL, SBX_WORK = "/sbx/launcher.py", "/sbx/mpl-cache", "/sbx/mpl", "/sbx/work"
# what a Python program may need besides its interpreter: the shared libraries' cache, fonts
ETC_FILES = ("/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d", "/etc/fonts", "/etc/localtime")
# the zygote's writable folders inside the view (everything else is read-only): emptied after every
# program, with their own modes restored
SCRATCH = (SBX_WORK, "/tmp", "/dev/shm", SBX_MPL)
UID_POOL = 1024  # uids leased to concurrent runs: base .. base + UID_POOL - 1


@dataclass
class SandboxConfig:
    """Limits of one program run; the reward's `sandbox:` kwargs map onto these fields."""

    timeout_s: float = 30.0  # wall clock for the program, after setup (seed E: 30 s)
    cpu_s: float = 0.0  # CPU seconds per process; 0 = timeout_s
    memory_mb: int = 1024  # address space per process (RLIMIT_AS); matplotlib needs ~300
    max_procs: int = 8  # tasks (processes + threads) of the program, where enforceable
    disk_mb: int = 64  # size of each private tmpfs (working directory, /tmp, /dev/shm), with bwrap
    max_file_mb: int = 64  # largest file a program may write (RLIMIT_FSIZE)
    max_open_files: int = 64
    dpi: int = 100  # figure saved at this dpi ...
    max_side: int = 1024  # ... or less, so that its longest side is at most this many pixels
    workers: int = 0  # parallel programs in run_many; 0 = the CPUs this process may use
    network: bool = False  # True: leave the network namespace alone (debugging only)
    isolate: bool = True  # bwrap view + namespaces (+ uid drop as root); False: only the "always" list
    # isolate but bwrap unusable here: False = the img2code reward refuses to start (one line);
    # True = run with the "always" list only, warned. `Sandbox` itself records it in `isolation`
    allow_unisolated: bool = False
    setup_timeout_s: float = 120.0  # launcher setup (imports) before the program starts
    # bwrap only: one long-lived launcher per worker imports matplotlib once and forks a clean
    # child per program (own IPC namespace, session, rlimits; everything it leaves killed and wiped
    # before the next); False = a fresh bwrap + interpreter per program (~0.4 s more each)
    zygote: bool = True
    uid_base: int = 0  # first uid of the lease pool; 0 = near the top of the mapped range
    python: str = sys.executable


@dataclass
class SandboxResult:
    status: str  # one of STATUSES
    image: Any = None  # PIL image as saved (RGBA PNG) when status == "ok"
    error: str = ""  # why it failed: the last lines of stderr, or the sandbox's reason
    stdout: str = ""  # the program's output (last 4 kB)
    elapsed_s: float = 0.0  # wall clock of the program, setup excluded
    isolation: dict[str, Any] = field(default_factory=dict)  # what held for this run

    @property
    def ok(self) -> bool:
        return self.status == "ok"


# ====================================================================== launcher (child side)
def _libc() -> Any:
    return ctypes.CDLL(None, use_errno=True)


def _check(rc: int, what: str) -> None:
    if rc != 0:
        raise OSError(ctypes.get_errno(), f"{what}: {os.strerror(ctypes.get_errno())}")


def _set_limits(spec: dict) -> None:
    r, mb = resource, 1 << 20
    limits = {r.RLIMIT_AS: spec["memory_mb"] * mb, r.RLIMIT_FSIZE: spec["max_file_mb"] * mb}
    limits.update({r.RLIMIT_NOFILE: spec["max_open_files"], r.RLIMIT_CORE: 0, r.RLIMIT_NPROC: spec["nproc"]})
    for lim, value in limits.items():
        resource.setrlimit(lim, (value, value))


def _ns_inodes() -> dict[str, int]:
    """Inode of each namespace this process is in: equal inodes = the same namespace."""
    out = {}
    for name in NAMESPACES:
        with contextlib.suppress(OSError):
            out[name] = os.stat(f"/proc/self/ns/{name}").st_ino
    return out


def _new_session_keyring(libc: Any) -> bool:
    """Join a fresh, empty, anonymous session keyring (keyctl(KEYCTL_JOIN_SESSION_KEYRING, NULL)):
    keys the trainer's session holds are out of reach."""
    nr = SYS_KEYCTL.get(os.uname().machine)
    return nr is not None and libc.syscall(nr, 1, None) > 0


def _copy_font_list() -> None:
    """matplotlib's font list, built by the trainer, copied to the writable private MPLCONFIGDIR."""
    mpl = os.environ["MPLCONFIGDIR"]
    for name in os.listdir(SBX_MPL_CACHE):
        if name.endswith(".json"):
            Path(mpl, name).write_bytes(Path(SBX_MPL_CACHE, name).read_bytes())


def _view_report(spec: dict) -> dict[str, bool]:
    """Which of bwrap's layers hold in this process: namespaces compared by inode with the
    trainer's (a namespace that is not new fails the test), the host's run folder absent."""
    ns, report = _ns_inodes(), {}
    for name, key in NS_KEYS.items():
        report[key] = name in ns and ns[name] != spec["host_ns"].get(name)
    report["fs_view"] = not os.path.exists(spec["rundir"])
    return report


def _read_program(fd: int) -> tuple[str, Any]:
    """(source, code object) of the program in descriptor `fd`; a program that does not compile
    has its error written to stderr and the process exits with EXIT_SYNTAX."""
    with os.fdopen(fd, "rb") as f:
        src = f.read().decode("utf-8", errors="replace")
    try:
        return src, compile(src, "<program>", "exec", dont_inherit=True)
    except (SyntaxError, ValueError, OverflowError, RecursionError, MemoryError):
        sys.stderr.write("".join(traceback.format_exception_only(*sys.exc_info()[:2])))
        sys.stderr.flush()
        os._exit(EXIT_SYNTAX)


def _launcher(spec: dict) -> None:
    """Runs as `python -I sandbox.py SPEC` (inside bwrap where available): read, compile, limit,
    import matplotlib, fork the program, report."""
    report: dict[str, Any] = {"backend": spec["backend"], "uid": None}
    try:
        os.umask(0o022)
        _set_limits(spec)
        src, code = _read_program(spec["program_fd"])
        libc = _libc()
        if spec["backend"] == "bwrap":
            _copy_font_list()
            report.update(_view_report(spec))
            report["keyring"] = _new_session_keyring(libc)
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        os.chdir(spec["workdir"])
        pid = os.fork()
    except Exception as e:
        sys.stderr.write(f"sandbox setup failed: {type(e).__name__}: {e}\n")
        os._exit(EXIT_SETUP)
    if pid == 0:
        _program(code, src, spec, report, spec["uid"], spec["figure_fd"], libc, plt)
    # on the parent's timeout, kill and reap the program here: init may never reap an orphan
    signal.signal(signal.SIGTERM, lambda *_: os.kill(pid, signal.SIGKILL))
    os.close(spec["report_fd"])
    os.close(spec["figure_fd"])
    _, status = os.waitpid(pid, 0)
    os._exit(os.WEXITSTATUS(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status))


def _is_resource_error(exc: BaseException | None) -> bool:
    """A limit hit, anywhere in the exception's chain: memory, file size, open files, processes,
    the scratch tmpfs full."""
    seen = 0
    while exc is not None and seen < 20:
        if isinstance(exc, MemoryError) or (isinstance(exc, OSError) and exc.errno in LIMIT_ERRNOS):
            return True
        if isinstance(exc, RuntimeError) and "can't start new thread" in str(exc):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


def _program(
    code: Any, src: str, spec: dict, report: dict, uid: int | None, fig_fd: int, libc: Any, plt: Any
) -> None:
    """The forked child: drop to the leased uid, report, run, save."""
    try:
        if uid is not None:
            os.setgroups([])
            os.setresgid(uid, uid, uid)
            os.setresuid(uid, uid, uid)  # clears every capability
            report["uid"] = uid
        _check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)  # after setuid: it clears this
        # the program's own CPU seconds: what this process used in its setup is not counted
        used = sum(resource.getrusage(resource.RUSAGE_SELF)[:2])
        cpu = int(used + spec["cpu_s"] + 0.999)
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
        os.write(spec["report_fd"], json.dumps(report).encode() + b"\n")
        os.close(spec["report_fd"])  # EOF: the parent starts the program's clock
    except Exception as e:
        sys.stderr.write(f"sandbox setup failed: {type(e).__name__}: {e}\n")
        os._exit(EXIT_SETUP)
    home = spec["workdir"]
    os.environ.update(HOME=home, TMPDIR=home)
    if "tempfile" in sys.modules:
        sys.modules["tempfile"].tempdir = None
    linecache.cache["<program>"] = (len(src), None, src.splitlines(True), "<program>")
    plt.close = lambda *args, **kwargs: None  # "savefig, then close" must still leave its figure
    sys.argv, rc = ["<program>"], EXIT_OK
    try:
        try:
            exec(code, {"__name__": "__main__", "__file__": "<program>", "__builtins__": builtins})
        except SystemExit as e:
            if e.code not in (None, 0):
                raise RuntimeError(f"the program exited with {e.code!r}") from None
        if plt.get_fignums():
            fig = plt.gcf()
            dpi = min(float(spec["dpi"]), spec["max_side"] / max(float(max(fig.get_size_inches())), 1e-3))
            with os.fdopen(fig_fd, "wb") as f:
                f.seek(0)
                f.truncate()  # the program may have written to this descriptor
                fig.savefig(f, format="png", dpi=dpi)
        else:
            print("the program left no open matplotlib figure", file=sys.stderr)
            rc = EXIT_NO_FIGURE
    except BaseException as e:
        traceback.print_exc()
        rc = EXIT_RESOURCE if _is_resource_error(e) else EXIT_RUNTIME
    with contextlib.suppress(Exception):
        sys.stdout.flush(), sys.stderr.flush()
    os._exit(rc)


# ====================================================================== zygote (child side)
# One launcher per worker (`python -I sandbox.py --zygote SPEC`, inside bwrap): imports matplotlib
# once, then per program forks a child that runs it. The zygote itself never runs untrusted code,
# and nothing a program chose ever enters its memory (which the next child inherits): the program
# arrives as a descriptor (SCM_RIGHTS) that only the child reads; its output and figure go to
# memfds that the zygote hands to the trainer unread; a helper process forked for the purpose
# empties the scratch folders (the zygote never lists a file name a program chose). Between two
# programs every other process of the PID namespace is killed (kill(-1), the zygote subreaper);
# the scratch folders must then be empty and the zygote's own limits and scheduling unchanged, or
# it exits after its answer and the trainer starts a fresh one.
MAX_MSG = 1 << 16  # one message on the zygote's socket (SOCK_SEQPACKET): JSON, no program text


def _send(sock: socket.socket, obj: dict, fds: Sequence[int] = ()) -> None:
    socket.send_fds(sock, [json.dumps(obj).encode()], list(fds))


def _recv(sock: socket.socket, deadline: float | None = None) -> tuple[dict, list[int]] | None:
    """(message, descriptors) or None at EOF or past the deadline (monotonic; None = no deadline)."""
    if deadline is not None:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([sock], [], [], left)[0]:
            return None
    data, fds, _, _ = socket.recv_fds(sock, MAX_MSG, 4)
    if not data:
        for fd in fds:
            os.close(fd)
        return None
    return json.loads(data), fds


def _own_state() -> list:
    """What a program running as the zygote's own uid (no root) could change in the zygote without
    ptrace (which no_dumpable blocks): its rlimits, priority, CPU affinity, scheduling policy."""
    rl = [resource.getrlimit(getattr(resource, n)) for n in dir(resource) if n.startswith("RLIMIT_")]
    return [rl, os.getpriority(os.PRIO_PROCESS, 0), sorted(os.sched_getaffinity(0)), os.sched_getscheduler(0)]


Entry = tuple[int, int, bool]  # (mode, uid, is a mount point)


def _tree(folder: str) -> dict[str, Entry]:
    """Everything under `folder` by relative path, without descending into mount points: the
    interpreter's folders that bwrap binds below a scratch tmpfs (a venv under /tmp) appear as
    mount points, with the folders bwrap made on their way."""
    dev, out = os.lstat(folder).st_dev, {}
    for top, dirs, files in os.walk(folder):
        for name in [*dirs, *files]:
            path = os.path.join(top, name)
            with contextlib.suppress(OSError):
                st = os.lstat(path)
                out[os.path.relpath(path, folder)] = (st.st_mode, st.st_uid, st.st_dev != dev)
        dirs[:] = [
            d for d in dirs if not out.get(os.path.relpath(os.path.join(top, d), folder), (0, 0, 1))[2]
        ]
    return out


def _scratch_state() -> dict[str, tuple[int, int, dict[str, Entry]]]:
    """Each scratch folder's mode and owner, and what must stay in it between programs: the mount
    points of bound interpreter folders and the folders on their way (nothing else, normally)."""
    state = {}
    for d in SCRATCH:
        tree = _tree(d)
        mounts = [r for r, e in tree.items() if e[2]]
        keep = {r for m in mounts for r in tree if r == m or m.startswith(r + os.sep)}
        state[d] = (os.lstat(d).st_mode, os.lstat(d).st_uid, {r: tree[r] for r in keep})
    return state


def _empty(folder: str, keep: dict[str, Entry], prefix: str = "") -> None:
    """Remove everything inside `folder` but `keep` (relative paths; mount points left alone, the
    folders on their way emptied and given back their modes); no link followed; folders a program
    closed are opened (chmod) first."""
    for entry in os.scandir(folder):
        rel = os.path.join(prefix, entry.name)
        if rel in keep:
            if not keep[rel][2]:  # a folder on the way to a mount point: empty it, restore its mode
                with contextlib.suppress(OSError):
                    os.chmod(entry.path, 0o700, follow_symlinks=False)
                _empty(entry.path, keep, rel)
                with contextlib.suppress(OSError):
                    os.chmod(entry.path, keep[rel][0] & 0o7777, follow_symlinks=False)
        elif entry.is_dir(follow_symlinks=False):
            with contextlib.suppress(OSError):
                os.chmod(entry.path, 0o700, follow_symlinks=False)
            for top, dirs, _ in os.walk(entry.path):  # top-down: each folder opened before it is listed
                for d in dirs:
                    with contextlib.suppress(OSError):
                        os.chmod(os.path.join(top, d), 0o700, follow_symlinks=False)
            shutil.rmtree(entry.path, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                os.unlink(entry.path)


def _reap(pid: int) -> int:
    """Wait for `pid`, a child of the zygote; its wait status."""
    while True:
        with contextlib.suppress(InterruptedError):
            return os.waitpid(pid, 0)[1]


def _kill_others(pid: int) -> int:
    """SIGKILL every process of the namespace but init and the zygote, reap them all; the wait
    status of `pid` (the program's first process)."""
    me, status = os.getpid(), None
    for _ in range(100000):
        with contextlib.suppress(OSError):
            os.kill(-1, signal.SIGKILL)  # all we may signal but ourselves and init
        while True:
            try:
                p, st = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if p == 0:
                break
            if p == pid:
                status = st
        left = [d for d in os.listdir("/proc") if d.isdigit() and int(d) not in (1, me)]
        if not left and status is not None:
            return status
        time.sleep(0.001)
    raise OSError("processes of the program survive SIGKILL")


def _clean_scratch(state: dict[str, tuple[int, int, dict[str, Entry]]]) -> str:
    """Empty the scratch folders in a forked helper (file names stay out of the zygote's memory)
    but what `state` keeps (`_scratch_state`), and restore their modes. "" or what is left."""
    sys.stdout.flush(), sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        try:
            for d, (mode, _, keep) in state.items():
                os.chmod(d, mode & 0o7777)  # a program of the same uid may have closed it
                _empty(d, keep)  # matplotlib's font list too: the zygote read it at its import
        finally:
            os._exit(0)
    _reap(pid)
    for d, (_, _, keep) in state.items():
        if _tree(d) != keep:
            return f"{d} could not be emptied"
    return "" if _scratch_state() == state else "a scratch folder's owner or mode changed"


def _zygote_child(spec: dict, base: dict, fds: dict, plt: Any, libc: Any) -> None:
    """The forked child: own session, its descriptors only, own IPC namespace, limits, read and
    compile the program, then `_program` (uid drop, no_new_privs, report, run, save)."""
    try:
        os.setsid()
        libc.prctl(PR_SET_DUMPABLE, 1, 0, 0, 0)  # its own /proc files are its own again
        null = os.open("/dev/null", os.O_RDONLY)
        os.dup2(null, 0), os.dup2(fds["stdout"], 1), os.dup2(fds["stderr"], 2)
        keep = {0, 1, 2, fds["report"], fds["figure"], fds["program"]}
        for name in os.listdir("/proc/self/fd"):  # the zygote's socket to the trainer among them
            if int(name) not in keep:
                with contextlib.suppress(OSError):
                    os.close(int(name))
        # a fresh IPC namespace: System V objects and POSIX queues of earlier programs are out of
        # reach, and its own die with it. Without root that needs a user namespace of its own
        # (its uid mapped to itself, every capability dropped right after)
        if spec["uid"] is not None:
            _check(libc.unshare(CLONE_NEWIPC), "unshare(ipc)")
        else:
            uid, gid = os.getuid(), os.getgid()
            _check(libc.unshare(CLONE_NEWUSER | CLONE_NEWIPC), "unshare(user, ipc)")
            Path("/proc/self/setgroups").write_text("deny")
            Path("/proc/self/uid_map").write_text(f"{uid} {uid} 1")
            Path("/proc/self/gid_map").write_text(f"{gid} {gid} 1")
            hdr, data = (ctypes.c_uint32 * 2)(0x20080522, 0), (ctypes.c_uint32 * 6)()
            _check(libc.capset(hdr, data), "capset")  # no capability, in any namespace
        _set_limits(spec)
        src, code = _read_program(fds["program"])
        report = dict(base, keyring=_new_session_keyring(libc))
        os.chdir(SBX_WORK)
        if "numpy" in sys.modules:  # forked children would all draw the same "random" numbers
            sys.modules["numpy"].random.seed()
    except BaseException as e:
        sys.stderr.write(f"sandbox setup failed: {type(e).__name__}: {e}\n")
        sys.stderr.flush()
        os._exit(EXIT_SETUP)
    _program(code, src, spec, report, spec["uid"], fds["figure"], libc, plt)


def _zygote_one(program_fd: int, spec: dict, base: dict, plt: Any, libc: Any) -> tuple[dict, list[int]]:
    """Fork, time and end one program. (result, [stdout, stderr, figure] memfds)."""
    report_r, report_w = os.pipe()
    fds = {n: os.memfd_create(n) for n in ("stdout", "stderr", "figure")}
    fds.update(report=report_w, program=program_fd)
    sys.stdout.flush(), sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        os.close(report_r)
        _zygote_child(dict(spec, report_fd=report_w), base, fds, plt, libc)
    os.close(report_w), os.close(program_fd)
    t0 = time.monotonic()
    try:
        report, in_time = _read_report(report_r, spec["setup_timeout_s"])
        t0 = time.monotonic()
        timed_out = not in_time or not _wait_exit(pid, spec["timeout_s"] if report else 5.0)
    finally:
        os.close(report_r)
    elapsed = time.monotonic() - t0
    status = _kill_others(pid)  # nothing of the program runs any more: its descriptors are final
    rc = os.WEXITSTATUS(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status)
    out = dict(rc=rc, report=report, timed_out=timed_out, elapsed=elapsed)
    return out, [fds["stdout"], fds["stderr"], fds["figure"]]


def _zygote(spec: dict) -> None:
    """The zygote's loop: set up once, then one program per message until EOF."""
    libc, sock = _libc(), socket.socket(fileno=spec["sock_fd"])
    try:
        os.umask(0o022)
        # no ptrace, no /proc/<pid>/mem by a program of the same uid (no root); orphans come here
        _check(libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0), "dumpable")
        _check(libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0), "subreaper")
        _copy_font_list()
        base = dict(_view_report(spec), backend="bwrap", uid=None)
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pylab  # noqa: F401  (`from pylab import *` programs)
        import matplotlib.pyplot as plt

        # one figure drawn and saved here (trusted code) loads the fonts and the renderer's caches
        # once for every program; it is closed before the first fork
        fig = plt.figure(figsize=(2, 2))
        fig.gca().bar([0, 1], [1, 2], color="c"), fig.gca().set_title("warm-up")
        fig.savefig(io.BytesIO(), format="png", dpi=50)
        plt.close("all")
        own, scratch = _own_state(), _scratch_state()
    except Exception as e:
        sys.stderr.write(f"sandbox setup failed: {type(e).__name__}: {e}\n")
        os._exit(EXIT_SETUP)
    _send(sock, {"ready": True})
    base["zygote"], n = os.urandom(6).hex(), 0  # which zygote ran a program, and as its how-manyth
    while (msg := _recv(sock)) is not None:
        _send(sock, {"ack": True})  # the program reached a live zygote (a death from here is its)
        (head, fds), n = msg, n + 1
        base["zygote_run"] = n
        out, memfds = _zygote_one(fds[0], dict(spec, nproc=head["nproc"]), base, plt, libc)
        try:
            why = _clean_scratch(scratch)
            if _own_state() != own:
                why = why or "the launcher's limits or scheduling were changed"
        except OSError as e:
            why = f"cleanup failed: {e}"
        _send(sock, dict(out, recycle=why), memfds)
        for fd in memfds:
            os.close(fd)
        if why:
            break
    os._exit(0)


# ====================================================================== parent side
def _uid_base() -> int:
    """Sandbox uids start at 0x70000000 (unused in practice); where a user namespace maps fewer
    uids (containers), near the top of the mapped range instead."""
    maps = [line.split() for line in Path("/proc/self/uid_map").read_text().splitlines()]
    top = max(int(inside) + int(count) for inside, _, count in maps)
    return 0x70000000 if top > 0x70000000 + UID_POOL else max(1000, top - 2 * UID_POOL - 2)


def _kill_uid(uid: int) -> None:
    """SIGKILL every process of `uid` (kill(-1) as that uid never hits the caller or other uids)."""
    null, cmd = subprocess.DEVNULL, ["/bin/sh", "-c", "kill -9 -1 2>/dev/null; exit 0"]
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        subprocess.run(
            cmd, user=uid, group=uid, extra_groups=[], env={}, stdin=null, stdout=null, stderr=null
        )


def _lease_uid(base: int) -> tuple[int, int]:
    """(uid, lock fd): an unused uid held by an flock so that concurrent sandboxes (threads or
    other processes on this machine) never share one; leftovers of a crashed run are killed first."""
    locks = Path("/tmp/.vlmgrpo-sandbox-uids")  # not $TMPDIR: every process must see the same locks
    locks.mkdir(mode=0o700, exist_ok=True)
    for uid in range(base, base + UID_POOL):
        fd = os.open(locks / f"{uid}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        _kill_uid(uid)
        return uid, fd
    raise OSError(f"all {UID_POOL} sandbox uids from {base} are in use")


def _release_uid(uid: int, fd: int) -> None:
    _kill_uid(uid)
    os.close(fd)  # releases the lock


@contextlib.contextmanager
def _uid_lease(base: int) -> Iterator[int]:
    """An unused uid for one run (`_lease_uid`), its processes killed and the lock released after."""
    uid, fd = _lease_uid(base)
    try:
        yield uid
    finally:
        _release_uid(uid, fd)


def _user_tasks() -> int:
    """Tasks (threads) of this uid: RLIMIT_NPROC counts them all when we cannot switch uid."""
    uid, n = str(os.getuid()), 0
    for p in Path("/proc").iterdir():
        with contextlib.suppress(OSError, IndexError, ValueError):
            status = dict(line.split(":", 1) for line in (p / "status").read_text().splitlines())
            n += int(status["Threads"]) if status["Uid"].split()[0] == uid else 0
    return n


def _mpl_cache() -> str:
    """Matplotlib's font list for the launchers (built once by the trainer, read in the sandbox)."""
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "vlmgrpo" / "matplotlib"
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError:
        root = Path(tempfile.mkdtemp(prefix="vlmgrpo-mpl-"))
    return str(root)


@functools.lru_cache(maxsize=8)
def _interpreter(python: str, mpl_cache: str) -> tuple[tuple[str, ...], str]:
    """(directories the interpreter `python` needs, "" or why it cannot run). Runs it once, as the
    trainer (trusted code), which also builds matplotlib's font list in `mpl_cache` so that the
    sandboxed launchers only read it. Only the interpreter's prefixes and the `sys.path` entries
    inside them (or /usr) are kept: a `.pth` pointing into a checkout does not make it visible."""
    probe = (
        "import json, sys, matplotlib\nmatplotlib.use('Agg')\nimport matplotlib.pyplot\n"
        "print(json.dumps([sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix, *sys.path]))"
    )
    env = dict(PATH="/usr/local/bin:/usr/bin:/bin", MPLCONFIGDIR=mpl_cache, MPLBACKEND="Agg")
    try:
        out = subprocess.run(
            [python, "-I", "-c", probe], env=env, capture_output=True, timeout=300, check=True, text=True
        ).stdout
        found = json.loads(out.splitlines()[-1])
        prefixes, path = found[:4], found[4:]
    except (OSError, subprocess.SubprocessError, ValueError, IndexError) as e:
        return (), f"cannot run {python}: {type(e).__name__}: {e}"
    roots = {p for q in prefixes for p in (os.path.abspath(q), os.path.realpath(q))}
    keep = set(roots)
    for q in path:
        for r in {os.path.abspath(q), os.path.realpath(q)} if q else ():
            if os.path.isdir(r) and any(
                r == x or r.startswith(x.rstrip("/") + "/") for x in roots | {"/usr"}
            ):
                keep.add(r)
    keep = {d for d in keep if os.path.isdir(d) and not d.startswith("/usr/")}
    return tuple(sorted(d for d in keep if not any(d.startswith(o + "/") for o in keep if o != d))), ""


@functools.lru_cache(maxsize=1)
def bwrap_works() -> str:
    """ "" when bubblewrap can build a sandbox here, else why not (the sandbox then runs without
    namespaces; docs/img2code.md says what still holds)."""
    exe = shutil.which("bwrap")
    if exe is None:
        return "bubblewrap (bwrap) is not installed"
    user = [] if os.geteuid() == 0 else ["--unshare-user"]
    cmd = [exe, "--ro-bind", "/", "/", *user, "--unshare-ipc", "--unshare-pid", "--unshare-net"]
    cmd += ["--unshare-uts", "--die-with-parent", "--proc", "/proc", "--dev", "/dev"]
    cmd += ["--size", "1048576", "--perms", "1777", "--tmpfs", "/tmp", "true"]  # bwrap >= 0.8
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as e:
        return f"bwrap failed: {e}"
    return "" if r.returncode == 0 else f"bwrap cannot create namespaces here: {r.stderr.strip()[-300:]}"


def _bwrap_args(dirs: Sequence[str], mpl_cache: str, c: SandboxConfig, root: bool) -> list[str]:
    """bubblewrap's command line: a fresh root with only the OS libraries, the interpreter's
    directories, fonts and the launcher (all read-only), a size-capped private /sbx/work as the cwd
    and another private /tmp,
    new /proc and /dev, and new mount, PID, network (unless `network`), IPC and UTS namespaces."""
    disk = str(c.disk_mb << 20)
    args = [shutil.which("bwrap") or "bwrap", "--unshare-ipc", "--unshare-pid", "--unshare-uts"]
    args += ["--unshare-cgroup-try", "--hostname", "sandbox", "--die-with-parent", "--new-session"]
    args += [] if c.network else ["--unshare-net"]
    # as root the launcher keeps CAP_SETUID/SETGID to drop the program to its leased uid; without
    # root bwrap needs a user namespace
    args += ["--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"] if root else ["--unshare-user"]
    for top in ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(top):
            args += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            args += ["--ro-bind", top, top]
    for f in ETC_FILES:
        args += ["--ro-bind-try", f, f]
    args += ["--proc", "/proc", "--dev", "/dev", "--size", disk, "--perms", "1777", "--tmpfs", "/dev/shm"]
    args += ["--size", disk, "--perms", "1777", "--tmpfs", "/tmp", "--perms", "0755", "--dir", "/sbx"]
    args += ["--size", disk, "--perms", "1777", "--tmpfs", SBX_WORK]
    made = {"/", "/usr", "/tmp", "/sbx"}
    for d in [*dirs, SBX_LAUNCHER]:  # parents bwrap would create 0700 (closed to the leased uid)
        for parent in reversed(Path(d).parents):
            if str(parent) not in made:
                made.add(str(parent))
                args += ["--perms", "0755", "--dir", str(parent)]
    for d in dirs:  # after /tmp: an interpreter below /tmp (a CI checkout's venv) is mounted on top
        args += ["--ro-bind", d, d]
    args += ["--ro-bind", os.path.abspath(__file__), SBX_LAUNCHER, "--ro-bind", mpl_cache, SBX_MPL_CACHE]
    args += ["--size", str(16 << 20), "--tmpfs", SBX_MPL, "--chdir", SBX_WORK]
    # the rest of the fresh root (/, /sbx, /dev, ...: bwrap's tmpfs, the user's own without root)
    # read-only: what a program may write is the scratch tmpfs above (`SCRATCH`), wiped between programs
    args += ["--remount-ro", "/dev", "--remount-ro", "/"]
    return args


def _wait_exit(pid: int, timeout: float) -> bool:
    """True once `pid` has exited; it is not reaped, so its process group id stays reserved for
    the killpg that follows (pidfd: Linux >= 5.3)."""
    fd = os.pidfd_open(pid)
    try:
        return bool(select.select([fd], [], [], max(0.0, timeout))[0])
    finally:
        os.close(fd)


def _read_report(fd: int, timeout: float) -> tuple[dict | None, bool]:
    """Read the launcher's setup report up to EOF. (report or None, finished in time)."""
    buf, deadline = b"", time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            return None, False
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        buf += chunk
    with contextlib.suppress(ValueError, IndexError):
        return json.loads(buf.decode().splitlines()[-1]), True
    return None, True


def _tail(f: Any, n: int = 4000) -> str:
    f.seek(max(0, f.seek(0, os.SEEK_END) - n))
    return f.read().decode("utf-8", errors="replace")


def _read_figure(path: Path, max_side: int) -> tuple[Any, str]:
    """(PIL image as saved, "") or (None, why): no links or FIFOs followed, size checked first."""
    try:
        with open(os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK), "rb") as f:
            return _image(f.read(64 << 20), max_side)
    except Exception as e:
        return None, f"no readable figure ({type(e).__name__}: {e})"


def _image(png: bytes, max_side: int) -> tuple[Any, str]:
    """(PIL image of the PNG bytes, "") or (None, why); size checked before decoding."""
    try:
        img = Image.open(io.BytesIO(png))
        if img.width * img.height > 4 * max_side**2:
            raise ValueError(f"{img.width}x{img.height} pixels")
        img.load()
        return img, ""
    except Exception as e:
        return None, f"no readable figure ({type(e).__name__}: {e})"


def _env(home: str, mpl: str) -> dict[str, str]:
    """The launcher's environment, built from scratch: nothing of the trainer's (keys, tokens,
    proxies)."""
    env = dict(PATH="/usr/local/bin:/usr/bin:/bin", LANG="C.UTF-8", LC_ALL="C.UTF-8", HOME=home)
    env.update(TMPDIR=home, MPLBACKEND="Agg", MPLCONFIGDIR=mpl)
    env.update(OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return env


class _Zygote:
    """The trainer's handle on one zygote (`_zygote`): a bwrap with a launcher that imported
    matplotlib, a socket to it, and (as root) the uid its programs run as, leased for its life."""

    def __init__(self, box: Sandbox, dirs: Sequence[str]) -> None:
        c = box.config
        self.uid, self.lock = _lease_uid(box.uid_base) if box.root else (None, None)
        self.rundir = tempfile.mkdtemp(prefix="vlmgrpo-zyg-")
        self.err = tempfile.TemporaryFile()  # noqa: SIM115  (lives as long as the zygote; closed in close())
        self.proc: subprocess.Popen | None = None
        self.sock, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        spec = dict(asdict(c), cpu_s=c.cpu_s or c.timeout_s, uid=self.uid, backend="bwrap")
        spec.update(sock_fd=theirs.fileno(), rundir=self.rundir, workdir=SBX_WORK, host_ns=_ns_inodes())
        cmd = [*_bwrap_args(dirs, box.mpl_cache, c, box.root), "--", c.python, "-I", SBX_LAUNCHER]
        try:
            self.proc = subprocess.Popen(
                [*cmd, "--zygote", json.dumps(spec)], cwd=self.rundir, env=_env(SBX_WORK, SBX_MPL),
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self.err,
                pass_fds=(theirs.fileno(),), start_new_session=True,
            )  # fmt: skip
        finally:
            theirs.close()
        if _recv(self.sock, time.monotonic() + c.setup_timeout_s) is None:
            why = _tail(self.err, 2000).strip() or f"no answer in {c.setup_timeout_s:g} s"
            self.close()
            raise OSError(f"the sandbox's launcher did not start: {why}")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def run(self, code: str, nproc: int, c: SandboxConfig) -> tuple[dict, dict[str, Any]] | None:
        """(the zygote's result, {"stdout", "stderr": text tails, "figure": PNG bytes}), or None when
        it died or stopped answering while the program ran (then it is closed); ConnectionError when
        it was gone before the program reached it. Its own timeouts end a program; this deadline
        only catches a zygote that hangs."""
        prog = os.memfd_create("program")
        try:
            os.write(prog, code.encode("utf-8", errors="replace"))
            os.lseek(prog, 0, os.SEEK_SET)
            _send(self.sock, {"nproc": nproc}, [prog])
        except OSError as e:
            self.close()
            raise ConnectionError(f"the sandbox's launcher is gone: {e}") from e
        finally:
            os.close(prog)
        ack = _recv(self.sock, time.monotonic() + c.setup_timeout_s)
        if ack is None or not ack[0].get("ack"):
            self.close()
            raise ConnectionError("the sandbox's launcher is gone: no answer to a program")
        got = _recv(self.sock, time.monotonic() + c.setup_timeout_s + c.timeout_s + 10)
        if got is None or got[0].get("recycle") or len(got[1]) != 3:
            self.close()
        if got is None or len(got[1]) != 3:
            return None
        out, (o, e, f) = got
        try:
            size = os.fstat(f).st_size
            fig = os.pread(f, size, 0) if size <= 64 << 20 else b""
            return out, dict(stdout=_fd_tail(o, 4000), stderr=_fd_tail(e, 2000), figure=fig)
        finally:
            for fd in (o, e, f):
                os.close(fd)

    def close(self) -> None:
        if self.proc is not None:
            with contextlib.suppress(OSError):
                os.killpg(self.proc.pid, signal.SIGKILL)  # bwrap: its PID namespace ends with it
            self.proc.wait()
            self.proc = None
        self.sock.close()
        if self.lock is not None:
            _release_uid(self.uid, self.lock)
            self.lock = None
        self.err.close()
        shutil.rmtree(self.rundir, ignore_errors=True)


def _fd_tail(fd: int, n: int) -> str:
    size = os.fstat(fd).st_size
    return os.pread(fd, n, max(0, size - n)).decode("utf-8", errors="replace")


class Sandbox:
    """`Sandbox(SandboxConfig(...)).run(code)` / `.run_many(codes)`; see the module docstring."""

    def __init__(self, config: SandboxConfig | None = None, **overrides: Any) -> None:
        self.config = SandboxConfig(**{**asdict(config or SandboxConfig()), **overrides})
        self.root = os.geteuid() == 0
        self.uid_base = self.config.uid_base or (_uid_base() if self.root else 0)
        self.mpl_cache = _mpl_cache()
        # "bwrap" (the full list) or "none" (the "always" list); `why_not` says why not bwrap
        self.why_not = bwrap_works() if self.config.isolate else "isolate: false"
        self.backend = "none" if self.why_not else "bwrap"
        self._idle: list[_Zygote] = []  # zygotes not running a program now
        self._lock = threading.Lock()

    @property
    def uses_zygote(self) -> bool:
        return self.config.zygote and self.backend == "bwrap"

    def close(self) -> None:
        """End the idle zygotes (they also end with the thread that started them)."""
        with self._lock:
            idle, self._idle = self._idle, []
        for z in idle:
            z.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()

    def _take(self, dirs: Sequence[str]) -> _Zygote:
        with self._lock:
            while self._idle:
                z = self._idle.pop()
                if z.alive():
                    return z
                z.close()
        return _Zygote(self, dirs)

    def _warm(self, n: int) -> None:
        """Start zygotes up to n in this thread: bwrap's --die-with-parent ties each to the thread
        that started it, and a pool thread ends with its run_many."""
        dirs, why = _interpreter(self.config.python, self.mpl_cache)
        with self._lock:
            dead = [z for z in self._idle if not z.alive()]
            self._idle = [z for z in self._idle if z.alive()]
            missing = n - len(self._idle)
        for z in dead:
            z.close()
        for _ in range(max(0, missing) if not why else 0):
            with contextlib.suppress(OSError):
                z = _Zygote(self, dirs)
                with self._lock:
                    self._idle.append(z)

    def run_many(self, codes: Sequence[str]) -> list[SandboxResult]:
        """Run every program, `workers` at a time; results in input order."""
        workers = min(len(codes), self.config.workers or len(os.sched_getaffinity(0)))  # usable CPUs
        if self.uses_zygote:
            self._warm(workers)
        if workers <= 1:
            return [self.run(c) for c in codes]
        with ThreadPoolExecutor(workers, thread_name_prefix="sandbox") as pool:
            return list(pool.map(self.run, codes))

    def run(self, code: str) -> SandboxResult:
        """Run one program; never raises for anything the program does."""
        try:
            dirs, why = _interpreter(self.config.python, self.mpl_cache)
            if why:
                return SandboxResult("sandbox_error", error=why)
            if self.uses_zygote:
                return self._run_zygote(code, dirs)
            if self.root and self.backend == "bwrap":
                with _uid_lease(self.uid_base) as uid:
                    return self._run(code, uid, dirs)
            return self._run(code, None, dirs)
        except OSError as e:  # no free uid, cannot start Python, ...
            return SandboxResult("sandbox_error", error=f"{type(e).__name__}: {e}")

    def _run_zygote(self, code: str, dirs: Sequence[str]) -> SandboxResult:
        c = self.config
        for attempt in range(2):
            z = self._take(dirs)
            # RLIMIT_NPROC counts every task of the uid: the leased uid has none but the program's;
            # the trainer's own uid (no root) has its current tasks, the zygotes among them
            try:
                got = z.run(code, c.max_procs if self.root else _user_tasks() + c.max_procs + 1, c)
                break
            except ConnectionError:  # died while idle (its thread ended, the machine killed it)
                if attempt:
                    raise  # run() makes it a sandbox_error
        if z.alive():
            with self._lock:
                self._idle.append(z)
        if got is None:  # as root a program cannot signal its zygote: the machine killed it
            status = "sandbox_error" if self.root else "runtime_error"
            return SandboxResult(status, error="the sandbox's launcher died or hung while the program ran")
        out, got_fds = got
        fig = got_fds["figure"]
        res = SandboxResult("runtime_error", stdout=got_fds["stdout"], error=got_fds["stderr"].strip())
        res.elapsed_s, res.isolation = out["elapsed"], out["report"] or {}
        res.status = self._classify(out["rc"], out["report"], out["timed_out"])
        return self._finish(res, out["report"] is None and out["timed_out"], lambda: _image(fig, c.max_side))

    def _finish(self, res: SandboxResult, setup_too_long: bool, image: Any) -> SandboxResult:
        c = self.config
        if res.status == "sandbox_error" and setup_too_long:
            res.error = f"launcher setup took over {c.setup_timeout_s:.0f} s; {res.error}"
        elif res.status == "timeout":
            res.error = f"killed after {c.timeout_s:g} s wall clock"
        elif res.status == "ok":
            res.image, why = image()
            if res.image is None:
                res.status, res.error = "no_figure", why
        return res

    def _run(self, code: str, uid: int | None, dirs: Sequence[str]) -> SandboxResult:
        c, bwrap = self.config, self.backend == "bwrap"
        with tempfile.TemporaryDirectory(prefix="vlmgrpo-sbx-", ignore_cleanup_errors=True) as tmp:
            rundir, work = Path(tmp), Path(tmp) / "work"
            work.mkdir(mode=0o700)
            (rundir / "program.py").write_text(code, encoding="utf-8", errors="replace")
            rfd, wfd = os.pipe()
            prog_fd = os.open(rundir / "program.py", os.O_RDONLY)
            fig_fd = os.open(
                rundir / "figure.png", os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600
            )
            spec = dict(asdict(c), cpu_s=c.cpu_s or c.timeout_s, uid=uid, backend=self.backend)
            spec.update(report_fd=wfd, program_fd=prog_fd, figure_fd=fig_fd, rundir=str(rundir))
            spec.update(workdir=SBX_WORK if bwrap else str(work), host_ns=_ns_inodes())
            # RLIMIT_NPROC counts every task of the uid: the leased uid has none but the program's;
            # the trainer's own uid has its current tasks, bwrap's two and the launcher
            spec.update(nproc=c.max_procs if uid is not None else _user_tasks() + c.max_procs + 3)
            env = _env(spec["workdir"], SBX_MPL if bwrap else self.mpl_cache)
            if bwrap:
                cmd = [*_bwrap_args(dirs, self.mpl_cache, c, self.root), "--", c.python, "-I", SBX_LAUNCHER]
            else:
                cmd = [c.python, "-I", os.path.abspath(__file__)]
            with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
                try:
                    proc = subprocess.Popen(
                        [*cmd, json.dumps(spec)], cwd=work, env=env, stdin=subprocess.DEVNULL, stdout=out,
                        stderr=err, pass_fds=(wfd, prog_fd, fig_fd), start_new_session=True,
                    )  # fmt: skip
                finally:
                    for fd in (wfd, prog_fd, fig_fd):
                        os.close(fd)
                t0, timed_out, report = time.monotonic(), False, None
                try:
                    report, in_time = _read_report(rfd, c.setup_timeout_s)
                    t0 = time.monotonic()
                    timed_out = not in_time or not _wait_exit(proc.pid, c.timeout_s if report else 5.0)
                finally:
                    os.close(rfd)
                    if timed_out and report is not None:
                        # no bwrap: the launcher kills and reaps the program; bwrap: killing it
                        # ends its PID namespace, and with it every process of the program
                        os.kill(proc.pid, signal.SIGKILL if bwrap else signal.SIGTERM)
                        _wait_exit(proc.pid, 5.0)
                    with contextlib.suppress(OSError):
                        os.killpg(proc.pid, signal.SIGKILL)  # whatever is left of the session's group
                    proc.wait()
                elapsed = time.monotonic() - t0
                res = SandboxResult("runtime_error", stdout=_tail(out), error=_tail(err, 2000).strip())
            res.elapsed_s, res.isolation = elapsed, report or {}
            if report is not None and not bwrap:
                res.isolation["why_not"] = self.why_not
            res.status = self._classify(proc.returncode, report, timed_out)
            return self._finish(
                res, timed_out and report is None, lambda: _read_figure(rundir / "figure.png", c.max_side)
            )

    @staticmethod
    def _classify(rc: int, report: dict | None, timed_out: bool) -> str:
        if report is None:  # the program never started: a syntax error or a broken sandbox
            return "syntax_error" if rc == EXIT_SYNTAX and not timed_out else "sandbox_error"
        if timed_out:
            return "timeout"
        sig = -rc if rc < 0 else rc - 128 if rc > 128 else 0  # the launcher passes 128 + signal
        if sig:
            return "resource_limit" if sig in LIMIT_SIGNALS else "runtime_error"
        return {EXIT_OK: "ok", EXIT_NO_FIGURE: "no_figure", EXIT_RESOURCE: "resource_limit"}.get(
            rc, "runtime_error"
        )


if __name__ == "__main__":
    if sys.argv[1] == "--zygote":
        _zygote(json.loads(sys.argv[2]))
    _launcher(json.loads(sys.argv[1]))
