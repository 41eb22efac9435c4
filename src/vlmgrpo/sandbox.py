"""Run untrusted matplotlib programs (policy completions), one process each, and keep the figure.

A launcher per program (`python -I sandbox.py SPEC`, own session) compiles it (syntax errors
return at once), sets rlimits, imports matplotlib (Agg), isolates itself, forks the program and
saves its current figure (`plt.gcf()`) through a descriptor opened beforehand. The timeout starts
after this setup, so import time on a loaded machine is no timeout. Statuses: `STATUSES`
(`sandbox_error` = the sandbox failed, not the program; the reward skips it). `run_many` runs
programs on a thread pool sized to the machine, each in its own directory. Linux only.

Covered always: own session killed as a group; rlimits (memory, CPU, file size, open files, no
core); an environment built from scratch (no keys, tokens); own cwd, HOME and TMPDIR. As root
(`SandboxResult.isolation` says what held per run): a network namespace with no interface up; a
PID namespace with its own /proc (every process of the program dies with it); a leased
unprivileged uid with RLIMIT_NPROC (not enforced for root); every mount read-only, a size-capped
tmpfs cwd also mounted at /tmp, /var/tmp, /dev/shm, /run/lock; the trainer's home hidden;
no_new_privs. Not covered: cgroup CPU/memory shares (a fork bomb that allocates may use
max_procs x memory_mb), world-readable files, Unix sockets the uid may open, kernel exploits;
without root only the first list. A program can misreport its class, but "ok" still needs a
readable figure, which is all that is scored. Details: docs/img2code.md.
"""

from __future__ import annotations

import builtins
import contextlib
import ctypes
import fcntl
import io
import json
import linecache
import os
import pwd
import resource
import select
import signal
import subprocess
import sys
import tempfile
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
CLONE_NEWNS, CLONE_NEWPID, CLONE_NEWNET = 0x00020000, 0x20000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
PR_SET_PDEATHSIG, PR_SET_NO_NEW_PRIVS = 1, 38
# soft CPU / file-size limits; SIGKILL not sent by us: the hard CPU limit or the OOM killer
LIMIT_SIGNALS = (signal.SIGXCPU, signal.SIGXFSZ, signal.SIGKILL)
UID_POOL = 1024  # uids leased to concurrent runs: base .. base + UID_POOL - 1


@dataclass
class SandboxConfig:
    """Limits of one program run; the reward's `sandbox:` kwargs map onto these fields."""

    timeout_s: float = 30.0  # wall clock for the program, after setup (seed E: 30 s)
    cpu_s: float = 0.0  # CPU seconds per process; 0 = timeout_s
    memory_mb: int = 1024  # address space per process (RLIMIT_AS); matplotlib needs ~300
    max_procs: int = 8  # tasks (processes + threads) of the program, where enforceable
    disk_mb: int = 64  # size of the private tmpfs working directory (root only)
    max_file_mb: int = 64  # largest file a program may write (RLIMIT_FSIZE)
    max_open_files: int = 64
    dpi: int = 100  # figure saved at this dpi ...
    max_side: int = 1024  # ... or less, so that its longest side is at most this many pixels
    workers: int = 0  # parallel programs in run_many; 0 = the CPUs this process may use
    network: bool = False  # True: leave the network namespace alone (debugging only)
    isolate: bool = True  # root: uid drop + namespaces; False: only the "always" list
    setup_timeout_s: float = 120.0  # launcher setup (imports) before the program starts
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
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mount.argtypes = [ctypes.c_char_p] * 3 + [ctypes.c_ulong, ctypes.c_char_p]
    return libc


def _check(rc: int, what: str) -> None:
    if rc != 0:
        raise OSError(ctypes.get_errno(), f"{what}: {os.strerror(ctypes.get_errno())}")


def _mount(libc: Any, src: str | None, target: str, fstype: str | None, flags: int, data: str = "") -> None:
    enc = lambda s: s.encode() if s else None  # noqa: E731
    _check(libc.mount(enc(src), enc(target), enc(fstype), flags, enc(data)), f"mount {target}")


def _mountinfo() -> list[tuple[str, int]]:
    """(mount point, flags to keep when remounting) of every mount, octal escapes decoded."""
    keep = {"nosuid": MS_NOSUID, "nodev": MS_NODEV, "noexec": MS_NOEXEC}
    rows = [line.split() for line in Path("/proc/self/mountinfo").read_text().splitlines()]
    return [
        (r[4].encode().decode("unicode_escape"), sum(keep.get(o, 0) for o in r[5].split(","))) for r in rows
    ]


def _python_dirs(under: str, extra: Sequence[str] = ()) -> list[str]:
    """This interpreter's directories (and `extra`) below `under`, outermost only: what the dropped
    uid must still read when `under` (e.g. /root holding a pyenv) is hidden."""
    cands = {sys.base_prefix, sys.base_exec_prefix, sys.prefix, sys.exec_prefix, *sys.path, *extra}
    dirs = sorted({os.path.realpath(p) for p in cands if p and os.path.isdir(p)})
    dirs = [d for d in dirs if d.startswith(under.rstrip("/") + "/")]
    return [d for d in dirs if not any(d.startswith(o + "/") for o in dirs if o != d)]


def _isolate_mounts(libc: Any, spec: dict, report: dict) -> None:
    """Read-only everything, hide the trainer's home, private tmpfs cwd (also at /tmp & co)."""
    _mount(libc, None, "/", None, MS_REC | MS_PRIVATE)
    report["mount_ns"] = True
    rundir = os.path.dirname(spec["workdir"])
    hidden = {h: _python_dirs(h, [rundir]) for h in spec["hide"] if os.path.isdir(h)}
    keep_fds = {d: os.open(d, os.O_RDONLY | os.O_DIRECTORY) for ds in hidden.values() for d in ds}
    failed = []
    for point, flags in _mountinfo():
        try:
            _mount(libc, None, point, None, MS_REMOUNT | MS_BIND | MS_RDONLY | flags)
        except OSError as e:
            failed.append(f"{point}: {e.strerror}")
    report["readonly_fs"], report["readonly_failures"] = not failed, failed
    for home, dirs in hidden.items():
        _mount(libc, "tmpfs", home, "tmpfs", MS_NOSUID | MS_NODEV, "size=256k,mode=0755")
        for d in dirs:
            os.makedirs(d, mode=0o755, exist_ok=True)
            _mount(libc, f"/proc/self/fd/{keep_fds[d]}", d, None, MS_BIND | MS_REC)
            _mount(libc, None, d, None, MS_REMOUNT | MS_BIND | MS_RDONLY)
        _mount(libc, None, home, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)
    for fd in keep_fds.values():
        os.close(fd)
    report["home_hidden"] = bool(hidden)
    owner = spec["uid"] if spec["uid"] is not None else os.getuid()
    opts = f"size={spec['disk_mb']}m,mode=0700,uid={owner},gid={owner}"
    _mount(libc, "tmpfs", spec["workdir"], "tmpfs", MS_NOSUID | MS_NODEV, opts)
    os.chdir(spec["workdir"])
    wfd = os.open(".", os.O_RDONLY | os.O_DIRECTORY)
    private = [
        d for d in ("/var/tmp", "/dev/shm", "/run/lock", "/tmp") if os.path.isdir(d) and not os.path.islink(d)
    ]
    # this interpreter may live below /tmp (a venv in a CI checkout): keep a handle on its
    # directories, give /tmp its own private tmpfs instead of the workdir (so the program's cwd
    # stays clean; the cwd keeps the workdir reachable), and mount them back there read-only
    py_dirs = [q for q in _python_dirs("/tmp") if not q.startswith(rundir + "/")]
    py_fds = {q: os.open(q, os.O_RDONLY | os.O_DIRECTORY) for q in py_dirs}
    for d in private:  # /tmp last: the workdir lives in it
        if d == "/tmp" and py_fds:
            _mount(libc, "tmpfs", d, "tmpfs", MS_NOSUID | MS_NODEV, opts.replace("mode=0700", "mode=0777"))
        else:
            _mount(libc, f"/proc/self/fd/{wfd}", d, None, MS_BIND)
    for q, fd in py_fds.items():
        os.makedirs(q, mode=0o755, exist_ok=True)
        _mount(libc, f"/proc/self/fd/{fd}", q, None, MS_BIND | MS_REC)
        _mount(libc, None, q, None, MS_REMOUNT | MS_BIND | MS_RDONLY)
        os.close(fd)
    os.close(wfd)
    report["private_tmp"] = True


def _world_traversable(path: str) -> bool:
    p = Path(path).resolve()
    return all(os.stat(q).st_mode & 0o001 for q in [p, *p.parents])


def _set_limits(spec: dict) -> None:
    r, mb = resource, 1 << 20
    limits = {r.RLIMIT_AS: spec["memory_mb"] * mb, r.RLIMIT_FSIZE: spec["max_file_mb"] * mb}
    limits.update({r.RLIMIT_NOFILE: spec["max_open_files"], r.RLIMIT_CORE: 0, r.RLIMIT_NPROC: spec["nproc"]})
    for lim, value in limits.items():
        resource.setrlimit(lim, (value, value))


def _launcher(spec: dict) -> None:
    """Runs as `python -I sandbox.py SPEC`: compile, limit, import, isolate, fork, report."""
    report: dict[str, Any] = dict.fromkeys(("network", "pid_ns", "mount_ns", "private_tmp"), False)
    report.update(readonly_fs=False, home_hidden=False, proc_private=False, uid=None)
    try:
        os.umask(0o022)
        _set_limits(spec)
        src = Path(spec["program"]).read_text(encoding="utf-8", errors="replace")
        try:
            code = compile(src, "<program>", "exec", dont_inherit=True)
        except (SyntaxError, ValueError, OverflowError, RecursionError, MemoryError):
            sys.stderr.write("".join(traceback.format_exception_only(*sys.exc_info()[:2])))
            sys.stderr.flush()
            os._exit(EXIT_SYNTAX)
        # opened before unshare, so it is no writer on the namespace's / (which then can go read-only)
        fig_fd = os.open(spec["figure"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        # before unshare: a first import may run fc-list, which would become pid 1 of the new PID
        # namespace and, by exiting, make every later fork there fail (ENOMEM)
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        libc = _libc()
        if spec["isolate"] and os.geteuid() == 0:
            net = 0 if spec["network"] else CLONE_NEWNET
            if libc.unshare(CLONE_NEWNS | CLONE_NEWPID | net) == 0:
                report.update(mount_ns=True, pid_ns=True, network=bool(net))
            else:  # e.g. seccomp allows some namespaces only: take what we can get
                for flag, key in ((net, "network"), (CLONE_NEWPID, "pid_ns"), (CLONE_NEWNS, "mount_ns")):
                    report[key] = bool(flag) and libc.unshare(flag) == 0
        if report["mount_ns"]:
            report["mount_ns"] = False
            _isolate_mounts(libc, spec, report)
        else:
            os.chdir(spec["workdir"])
        uid = spec["uid"]
        if uid is not None and not report["home_hidden"] and not _world_traversable(sys.base_prefix):
            uid = None  # the dropped uid could not import the rest of the stdlib: stay root
        pid = os.fork()
    except Exception as e:
        sys.stderr.write(f"sandbox setup failed: {type(e).__name__}: {e}\n")
        os._exit(EXIT_SETUP)
    if pid == 0:
        _program(code, src, spec, report, uid, fig_fd, libc, plt)
    # on the parent's timeout, kill and reap the program here: init may never reap an orphan
    signal.signal(signal.SIGTERM, lambda *_: os.kill(pid, signal.SIGKILL))
    os.close(spec["report_fd"])
    os.close(fig_fd)
    _, status = os.waitpid(pid, 0)
    os._exit(os.WEXITSTATUS(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status))


def _program(
    code: Any, src: str, spec: dict, report: dict, uid: int | None, fig_fd: int, libc: Any, plt: Any
) -> None:
    """The forked child (pid 1 of its namespace when there is one): drop, report, run, save."""
    try:
        if report["pid_ns"] and report["mount_ns"]:
            with contextlib.suppress(OSError):
                _mount(libc, "proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_RDONLY)
                report["proc_private"] = True
        if uid is not None:
            os.setgroups([])
            os.setresgid(uid, uid, uid)
            os.setresuid(uid, uid, uid)
            report["uid"] = uid
        _check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)  # after setuid: it clears this
        cpu = int(spec["cpu_s"] + 0.999)
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
        os.write(spec["report_fd"], json.dumps(report).encode() + b"\n")
        os.close(spec["report_fd"])  # EOF: the parent starts the program's clock
    except Exception as e:
        sys.stderr.write(f"sandbox setup failed: {type(e).__name__}: {e}\n")
        os._exit(EXIT_SETUP)
    home = "/tmp" if report["private_tmp"] else os.getcwd()
    os.environ.update(HOME=home, TMPDIR=home, MPLCONFIGDIR=home)
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
    except MemoryError:
        traceback.print_exc()
        rc = EXIT_RESOURCE
    except BaseException:
        traceback.print_exc()
        rc = EXIT_RUNTIME
    with contextlib.suppress(Exception):
        sys.stdout.flush(), sys.stderr.flush()
    os._exit(rc)


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


@contextlib.contextmanager
def _uid_lease(base: int) -> Iterator[int]:
    """An unused uid for one run, held by an flock so that concurrent sandboxes (threads or other
    processes on this machine) never share one; leftovers of a crashed run are killed first."""
    locks = Path("/tmp/.vlmgrpo-sandbox-uids")  # not $TMPDIR: every process must see the same locks
    locks.mkdir(mode=0o700, exist_ok=True)
    for uid in range(base, base + UID_POOL):
        fd = os.open(locks / f"{uid}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        try:
            _kill_uid(uid)
            yield uid
        finally:
            _kill_uid(uid)
            os.close(fd)  # releases the lock
        return
    raise OSError(f"all {UID_POOL} sandbox uids from {base} are in use")


def _user_tasks() -> int:
    """Tasks (threads) of this uid: RLIMIT_NPROC counts them all when we cannot switch uid."""
    uid, n = str(os.getuid()), 0
    for p in Path("/proc").iterdir():
        with contextlib.suppress(OSError, IndexError, ValueError):
            status = dict(line.split(":", 1) for line in (p / "status").read_text().splitlines())
            n += int(status["Threads"]) if status["Uid"].split()[0] == uid else 0
    return n


def _homes() -> list[str]:
    """$HOME and the passwd home of the trainer's user: where its tokens and credentials live."""
    homes = {str(Path.home()), pwd.getpwuid(os.geteuid()).pw_dir}
    return sorted(h for h in homes if h not in ("/", "") and os.path.isdir(h))


def _mpl_cache() -> str:
    """Matplotlib's font cache for the launchers (read before isolation, built once)."""
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "vlmgrpo" / "matplotlib"
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError:
        root = Path("/tmp")
    return str(root)


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
            img = Image.open(io.BytesIO(f.read(64 << 20)))
        if img.width * img.height > 4 * max_side**2:
            raise ValueError(f"{img.width}x{img.height} pixels")
        img.load()
        return img, ""
    except Exception as e:
        return None, f"no readable figure ({type(e).__name__}: {e})"


class Sandbox:
    """`Sandbox(SandboxConfig(...)).run(code)` / `.run_many(codes)`; see the module docstring."""

    def __init__(self, config: SandboxConfig | None = None, **overrides: Any) -> None:
        self.config = SandboxConfig(**{**asdict(config or SandboxConfig()), **overrides})
        self.root = os.geteuid() == 0
        self.uid_base = self.config.uid_base or (_uid_base() if self.root else 0)
        self.mpl_cache = _mpl_cache()

    def run_many(self, codes: Sequence[str]) -> list[SandboxResult]:
        """Run every program, `workers` at a time; results in input order."""
        workers = min(len(codes), self.config.workers or len(os.sched_getaffinity(0)))  # usable CPUs
        if workers <= 1:
            return [self.run(c) for c in codes]
        with ThreadPoolExecutor(workers, thread_name_prefix="sandbox") as pool:
            return list(pool.map(self.run, codes))

    def run(self, code: str) -> SandboxResult:
        """Run one program; never raises for anything the program does."""
        try:
            if self.root and self.config.isolate:
                with _uid_lease(self.uid_base) as uid:
                    return self._run(code, uid)
            return self._run(code, None)
        except OSError as e:  # no free uid, cannot start Python, ...
            return SandboxResult("sandbox_error", error=f"{type(e).__name__}: {e}")

    def _run(self, code: str, uid: int | None) -> SandboxResult:
        c = self.config
        with tempfile.TemporaryDirectory(prefix="vlmgrpo-sbx-", ignore_cleanup_errors=True) as tmp:
            rundir, work = Path(tmp), Path(tmp) / "work"
            os.chmod(rundir, 0o711)  # the dropped uid may pass through to work/, nothing more
            work.mkdir(mode=0o700)
            if uid is not None:
                os.chown(work, uid, uid)
            (rundir / "program.py").write_text(code, encoding="utf-8", errors="replace")
            rfd, wfd = os.pipe()
            spec = dict(asdict(c), cpu_s=c.cpu_s or c.timeout_s, uid=uid, report_fd=wfd, workdir=str(work))
            spec.update(program=str(rundir / "program.py"), figure=str(rundir / "figure.png"))
            spec.update(hide=_homes() if uid is not None else [])
            spec.update(nproc=c.max_procs if uid is not None else _user_tasks() + c.max_procs)
            # built from scratch: nothing of the trainer's environment (keys, tokens, proxies)
            env = dict(PATH="/usr/local/bin:/usr/bin:/bin", LANG="C.UTF-8", LC_ALL="C.UTF-8", HOME=str(work))
            env.update(TMPDIR=str(work), MPLBACKEND="Agg", MPLCONFIGDIR=self.mpl_cache, OMP_NUM_THREADS="1")
            env.update(OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
            with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
                try:
                    cmd = [c.python, "-I", os.path.abspath(__file__), json.dumps(spec)]
                    proc = subprocess.Popen(
                        cmd, cwd=work, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                        pass_fds=(wfd,), start_new_session=True,
                    )  # fmt: skip
                finally:
                    os.close(wfd)
                t0, timed_out, report = time.monotonic(), False, None
                try:
                    report, in_time = _read_report(rfd, c.setup_timeout_s)
                    t0 = time.monotonic()
                    timed_out = not in_time or not _wait_exit(proc.pid, c.timeout_s if report else 5.0)
                finally:
                    os.close(rfd)
                    if timed_out and report is not None:  # the launcher kills and reaps the program
                        os.kill(proc.pid, signal.SIGTERM)
                        _wait_exit(proc.pid, 5.0)
                    with contextlib.suppress(OSError):
                        os.killpg(proc.pid, signal.SIGKILL)  # whatever is left of the session's group
                    proc.wait()
                elapsed = time.monotonic() - t0
                res = SandboxResult("runtime_error", stdout=_tail(out), error=_tail(err, 2000).strip())
            res.elapsed_s, res.isolation = elapsed, report or {}
            res.status = self._classify(proc.returncode, report, timed_out)
            if res.status == "sandbox_error" and timed_out and report is None:
                res.error = f"launcher setup took over {c.setup_timeout_s:.0f} s; {res.error}"
            elif res.status == "timeout":
                res.error = f"killed after {c.timeout_s:g} s wall clock"
            elif res.status == "ok":
                res.image, why = _read_figure(rundir / "figure.png", c.max_side)
                if res.image is None:
                    res.status, res.error = "no_figure", why
            return res

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
    _launcher(json.loads(sys.argv[1]))
