"""The zygote (`SandboxConfig.zygote`): programs forked one after the other from one launcher that
imported matplotlib once. One program must not be able to change what a later one draws, reads
or scores: each test runs an attacker, then a victim, in the same zygote (`workers=1`), and checks
the victim against the same program run alone. docs/img2code.md, "The zygote"."""

from __future__ import annotations

import pytest
from sandbox_expect import ROOT, require_isolation

from vlmgrpo.sandbox import Sandbox

VICTIM = (
    "import os, time, matplotlib.pyplot as plt\n"
    "left = sorted(p for p in os.listdir('/proc') if p.isdigit() and int(p) not in (1, os.getpid(), os.getppid()))\n"
    "print('OTHERS', left)\n"
    "for p in ('/tmp/planted', '/dev/shm/planted', 'planted', '/sbx/mpl/matplotlibrc'):\n"
    "    print('SEES', p, os.path.exists(p))\n"
    "open('mine.txt', 'w').write('victim')\ntime.sleep(0.6)\n"
    "print('MINE', open('mine.txt').read())\n"
    "plt.figure(figsize=(2, 2), facecolor=(0.2, 0.4, 0.6))\nplt.bar([0, 1, 2], [3, 1, 2], color='c')\n"
    "plt.title('victim')\n"
)


@pytest.fixture
def alone():
    """The victim's figure, drawn by a fresh zygote that ran nothing before it."""
    require_isolation()
    box = Sandbox(workers=1)
    res = box.run(VICTIM)
    box.close()
    assert res.status == "ok", res.error
    assert res.isolation.get("zygote_run") == 1, res.isolation
    return res


def _after(attack: str, alone, **settings) -> tuple:
    """Run `attack`, then the victim, in one zygote; check the victim is untouched."""
    box = Sandbox(workers=1, **settings)
    try:
        first, second = box.run(attack), box.run(VICTIM)
    finally:
        box.close()
    assert second.status == "ok", second.error
    assert "OTHERS []" in second.stdout, second.stdout  # nothing of the attacker runs
    assert "True" not in second.stdout, second.stdout  # no file it planted is there
    assert "MINE victim" in second.stdout
    assert list(second.image.getdata()) == list(alone.image.getdata())  # pixel for pixel
    return first, second


def _same_zygote(first, second) -> None:
    """The victim ran in the attacker's zygote (the test would prove nothing in a fresh one)."""
    assert first.isolation.get("zygote") == second.isolation.get("zygote"), (
        first.isolation,
        second.isolation,
    )
    assert second.isolation.get("zygote_run") == first.isolation.get("zygote_run") + 1


def test_background_process_cannot_touch_a_later_program(alone):
    """A daemon (double fork + setsid) that outlives its program and keeps overwriting the working
    folder, /tmp and every file it can find is killed before the next program starts."""
    attack = (
        "import os, time, matplotlib.pyplot as plt\n"
        "if os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n"
        "        while True:\n"
        "            for d in ('.', '/tmp', '/dev/shm', '/sbx/work'):\n"
        "                try:\n"
        "                    for n in os.listdir(d):\n"
        "                        open(os.path.join(d, n), 'w').write('hacked')\n"
        "                    open(os.path.join(d, 'planted'), 'w').write('x')\n"
        "                except OSError:\n                    pass\n"
        "            time.sleep(0.01)\n"
        "    os._exit(0)\n"
        "time.sleep(0.2)\nplt.plot([0, 1])\n"
    )
    first, second = _after(attack, alone)
    assert first.status == "ok", first.error
    _same_zygote(first, second)


def test_files_left_in_tmp_shm_and_the_working_folder_are_gone(alone):
    attack = (
        "import os, matplotlib.pyplot as plt\n"
        "for p in ('/tmp/planted', '/dev/shm/planted', 'planted'):\n    open(p, 'w').write('x')\n"
        "os.makedirs('/tmp/d/e', exist_ok=True)\nopen('/tmp/d/e/f', 'w').write('x')\n"
        "os.chmod('/tmp/d/e', 0)\nos.chmod('/tmp/d', 0)\n"  # closed folders: still emptied
        "os.symlink('/sbx/work', '/tmp/link')\n"
        "try:\n    open('/sbx/mpl/matplotlibrc', 'w').write('axes.facecolor: black\\n')\nexcept OSError:\n    pass\n"
        "for p in ('/planted', '/sbx/planted', '/dev/planted'):\n"  # the rest of the view is read-only
        "    try:\n        open(p, 'w').write('x')\n        print('WROTE', p)\n    except OSError:\n        pass\n"
        "plt.plot([0, 1])\n"
    )
    first, second = _after(attack, alone)
    assert first.status == "ok", first.error
    assert "WROTE" not in first.stdout, first.stdout
    _same_zygote(first, second)


def test_monkeypatching_matplotlib_does_not_reach_a_later_program(alone):
    """Module state (rcParams, patched functions, sys.modules) is the child's own copy."""
    attack = (
        "import sys, matplotlib, matplotlib.pyplot as plt, matplotlib.figure, numpy\n"
        "matplotlib.rcParams['axes.facecolor'] = 'black'\nmatplotlib.rcParams['figure.dpi'] = 13\n"
        "plt.bar = lambda *a, **k: None\nplt.figure = lambda *a, **k: None\n"
        "matplotlib.figure.Figure.savefig = lambda *a, **k: None\n"
        "sys.modules['matplotlib.pyplot'] = None\nnumpy.ones = None\n"
        "import matplotlib.pylab\nmatplotlib.pylab.bar = None\n"
    )
    first, second = _after(attack, alone)
    assert first.status == "no_figure", first.error  # its patched figure() drew nothing
    _same_zygote(first, second)


def test_ipc_objects_of_one_program_are_invisible_to_the_next(alone):
    """System V shared memory and message queues, and POSIX message queues, die with their
    program (each has its own IPC namespace)."""
    key = 0x5C0FFEE
    attack = (
        "import ctypes, os, matplotlib.pyplot as plt\nlibc = ctypes.CDLL(None, use_errno=True)\n"
        f"print('SHM', libc.shmget({key}, 4096, 0o1000 | 0o666))\n"
        f"print('MSG', libc.msgget({key}, 0o1000 | 0o666))\n"
        "rt = ctypes.CDLL('librt.so.1', use_errno=True)\n"
        "print('MQ', rt.mq_open(b'/planted', os.O_CREAT | os.O_RDWR, 0o666, None))\nplt.plot([0, 1])\n"
    )
    probe = (
        "import ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\n"
        f"print('SHM', libc.shmget({key}, 0, 0), 'MSG', libc.msgget({key}, 0))\n"
        "rt = ctypes.CDLL('librt.so.1', use_errno=True)\nprint('MQ', rt.mq_open(b'/planted', os.O_RDWR))\n"
    )
    box = Sandbox(workers=1)
    try:
        first, second = box.run(attack), box.run(probe)
    finally:
        box.close()
    assert first.status == "ok", first.error
    assert "SHM -1" not in first.stdout and "MSG -1" not in first.stdout and "MQ -1" not in first.stdout
    assert "SHM -1 MSG -1" in second.stdout and "MQ -1" in second.stdout, second.stdout
    _same_zygote(first, second)


@(pytest.mark.slow if not ROOT else lambda f: f)
def test_a_program_that_attacks_its_zygote_does_not_change_the_next_score(alone):
    """It signals, renices, re-limits and pins every process it can see. As root it can touch
    none of them (another uid); without root it shares the zygote's uid: a zygote whose limits or
    scheduling changed, or that died, is replaced before the next program (`slow` there: the
    stopped zygote is given up only after setup_timeout_s + timeout_s + 10 s)."""
    attack = (
        "import os, resource, signal, matplotlib.pyplot as plt\nme = os.getpid()\n"
        "for p in [int(p) for p in os.listdir('/proc') if p.isdigit() and int(p) != me]:\n"
        "    for f in (lambda: resource.prlimit(p, resource.RLIMIT_AS, (50 << 20, 50 << 20)),\n"
        "              lambda: resource.prlimit(p, resource.RLIMIT_NOFILE, (4, 4)),\n"
        "              lambda: os.setpriority(os.PRIO_PROCESS, p, 19),\n"
        "              lambda: os.sched_setaffinity(p, {0}),\n"
        "              lambda: os.kill(p, signal.SIGSTOP)):\n"
        "        try:\n            f()\n            print('CHANGED', p)\n        except OSError:\n            pass\n"
        "plt.plot([0, 1])\n"
    )
    first, second = _after(attack, alone, timeout_s=5, setup_timeout_s=5)
    if ROOT:
        assert "CHANGED" not in first.stdout, first.stdout
        _same_zygote(first, second)


@pytest.mark.parametrize(
    "attack, status",
    [
        ("while True:\n    pass\n", "timeout"),
        ("blocks = []\nwhile True:\n    blocks.append(bytearray(32 * 2**20))\n", "resource_limit"),
    ],
    ids=["timeout", "memory"],
)
def test_limits_hold_per_program(alone, attack, status):
    """A program stopped at its timeout or memory limit is that program's result only; the next
    gets its own full budget."""
    first, second = _after(attack, alone, timeout_s=2, memory_mb=512)
    assert first.status == status, first.error
    assert second.elapsed_s < 2  # its own clock, not the rest of the attacker's
    _same_zygote(first, second)


def test_a_zygote_that_died_while_idle_is_replaced_before_the_program(monkeypatch):
    """A zygote can die between programs (the thread that started it ended: bwrap's
    --die-with-parent); the next program must run in a fresh one, not fail. `alive` is made to
    miss the death, as it does when the program is sent before the death is reaped."""
    import os
    import select
    import signal

    from vlmgrpo import sandbox as sb

    require_isolation()
    box = Sandbox(workers=1)
    try:
        first = box.run(VICTIM)
        (z,) = box._idle
        os.killpg(z.proc.pid, signal.SIGKILL)
        z.proc.wait()
        assert select.select([z.sock], [], [], 10)[0]  # EOF: the zygote inside is gone too
        monkeypatch.setattr(sb._Zygote, "alive", lambda self: self.proc is not None)
        second = box.run(VICTIM)
    finally:
        box.close()
    assert second.status == "ok", second.error
    assert second.isolation["zygote"] != first.isolation["zygote"]


def test_programs_draw_different_random_numbers():
    """Forked children would share the zygote's numpy seed; each is reseeded."""
    require_isolation()
    code = "import numpy as np, matplotlib.pyplot as plt\nprint('R', np.random.rand())\nplt.plot([0, 1])\n"
    box = Sandbox(workers=1)
    try:
        outs = [box.run(code).stdout for _ in range(3)]
    finally:
        box.close()
    assert len(set(outs)) == 3, outs


def test_cleanup_keeps_bound_interpreter_folders_below_a_scratch_folder(tmp_path):
    """A venv under /tmp is bound by bwrap below the sandbox's /tmp: its mount point and the folders
    bwrap made on the way must survive the cleanup (emptied of anything a program put there, modes
    restored), or the zygote counted them as leftovers and was replaced after every program (CI's
    fresh clone, venv under /tmp). Pure functions on a plain folder; the mount is marked by hand."""
    import os

    from vlmgrpo import sandbox as sb

    way, mount = tmp_path / "ci" / "main", tmp_path / "ci" / "main" / ".venv"
    mount.mkdir(parents=True)
    (mount / "python").write_text("interpreter")
    keep = {r: (os.lstat(tmp_path / r).st_mode, os.getuid(), r == os.path.join("ci", "main", ".venv"))
            for r in ("ci", os.path.join("ci", "main"), os.path.join("ci", "main", ".venv"))}  # fmt: skip
    (tmp_path / "ci" / "planted").write_text("x")  # a program's files on the way and beside it
    (way / "deep").mkdir()
    (tmp_path / "left.txt").write_text("x")
    os.chmod(way, 0o777)
    sb._empty(str(tmp_path), keep)
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == [
        "ci", "ci/main", "ci/main/.venv", "ci/main/.venv/python"]  # fmt: skip
    assert os.lstat(way).st_mode == keep[os.path.join("ci", "main")][0]
