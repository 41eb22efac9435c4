"""One attack program per guarantee of the sandbox's table in docs/img2code.md (in the style of
nanochat's execution tests), and the reward hack the sandbox exists to stop: a program that finds
the target image or the dataset row with the reference code on the host and copies it.

As root (CI) every layer must hold: a missing one fails. Without root the tests run where
bubblewrap can build its namespaces and skip, saying why, where it cannot (`sandbox_expect`)."""

from __future__ import annotations

import ctypes
import errno
import json
import os
import shutil
import socket
import tempfile
import uuid
from pathlib import Path

import pytest
from sandbox_expect import ROOT, assert_isolated, require_isolation

from vlmgrpo.sandbox import Sandbox

DRAW = "import matplotlib.pyplot as plt\nplt.plot([0, 1], [0, 1])\n"
LIBC = ctypes.CDLL(None, use_errno=True)
SYS_ADD_KEY, SYS_KEYCTL = {"x86_64": (248, 250), "aarch64": (217, 219)}.get(os.uname().machine, (0, 0))


@pytest.fixture
def public_dir():
    """A world-readable folder in /tmp (as a data or run folder on a shared machine would be)."""
    d = Path(tempfile.mkdtemp(prefix="vlmgrpo-public-", dir="/tmp"))
    d.chmod(0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def _readable(path: Path, text: str = "secret") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o644)
    return path


def test_a_program_sees_only_its_runtime_and_scratch_folder(public_dir, tmp_path):
    """Reads of the home directory, the checkout, a data folder beside the run, other /tmp files
    and the run folder itself all fail; a full listing of / finds none of them."""
    require_isolation()
    tag = uuid.uuid4().hex[:10]
    home_secret = Path.home() / f".vlmgrpo-secret-{tag}"
    targets = [
        _readable(home_secret),
        _readable(public_dir / "data" / "dataset.jsonl"),
        _readable(public_dir / f"other-user-{tag}.txt"),
        Path(__file__).resolve(),  # the checkout
        Path(__file__).resolve().parents[1] / "pyproject.toml",
        Path(__file__).resolve().parents[1] / "src" / "vlmgrpo" / "rewards" / "img2code.py",
    ]
    code = (
        "import os\n"
        f"for t in {[str(t) for t in targets]!r}:\n"
        "    try:\n        open(t).read(1)\n        print('READ', t)\n"
        "    except OSError as e:\n        print('DENIED', t, e.strerror)\n"
        "hits = []\n"
        "for root, dirs, files in os.walk('/'):\n"
        "    if root in ('/proc', '/sys', '/dev', '/usr') or 'site-packages' in root or 'python3.' in root:\n"
        "        dirs[:] = []\n        continue\n"
        f"    hits += [os.path.join(root, f) for f in files + dirs if {tag!r} in f or f == 'dataset.jsonl']\n"
        "print('HITS', hits)\n"
        "open(os.path.abspath('out.txt'), 'w').write('x')  # its cwd exists inside\n" + DRAW
    )
    try:
        res = Sandbox().run(code)
    finally:
        home_secret.unlink()
    assert res.status == "ok", res.error
    assert_isolated(res.isolation, "mount_ns", "fs_view")
    assert "READ" not in res.stdout, res.stdout
    assert res.stdout.count("DENIED") == len(targets)
    assert "HITS []" in res.stdout, res.stdout


def test_ipc_objects_are_private_and_die_with_the_program():
    """System V shared memory and message queues: the host's are invisible, the program's own
    do not outlive it (they would sit outside every memory limit)."""
    require_isolation()
    key_host, key_prog = 0x5A000000 + os.getpid() % 65536, 0x5B000000 + os.getpid() % 65536
    shm = LIBC.shmget(key_host, 4096, 0o1000 | 0o666)  # IPC_CREAT, world-accessible
    assert shm >= 0
    code = (
        "import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n"
        f"print('HOST_SHM', libc.shmget({key_host}, 0, 0))\n"
        f"print('OWN_SHM', libc.shmget({key_prog}, 1 << 20, 0o1000 | 0o666))\n"
        f"print('OWN_MSG', libc.msgget({key_prog}, 0o1000 | 0o666))\n" + DRAW
    )
    try:
        res = Sandbox().run(code)
    finally:
        LIBC.shmctl(shm, 0, None)  # IPC_RMID
    assert res.status == "ok", res.error
    assert_isolated(res.isolation, "ipc_ns")
    assert "HOST_SHM -1" in res.stdout, res.stdout  # the host's segment does not exist there
    assert "OWN_SHM -1" not in res.stdout and "OWN_MSG -1" not in res.stdout  # it could make its own
    assert LIBC.shmget(key_prog, 0, 0) == -1 and ctypes.get_errno() == errno.ENOENT  # ... gone with it
    assert LIBC.msgget(key_prog, 0) == -1


def test_hostname_is_its_own():
    require_isolation()
    code = "import os, socket\nprint('NODE', os.uname().nodename)\n" + DRAW
    res = Sandbox().run(code)
    assert res.status == "ok", res.error
    assert_isolated(res.isolation, "uts_ns")
    assert "NODE sandbox" in res.stdout and socket.gethostname() != "sandbox"


@pytest.mark.skipif(not SYS_KEYCTL, reason="keyctl syscall numbers known for x86_64 and aarch64 only")
def test_session_keyring_secrets_are_out_of_reach():
    require_isolation()
    desc = f"vlmgrpo-secret-{uuid.uuid4().hex[:8]}".encode()
    payload = b"sk-not-for-the-policy"
    key = LIBC.syscall(SYS_ADD_KEY, b"user", desc, payload, len(payload), -3)  # the session keyring
    if key < 0:
        pytest.skip(f"cannot add a key to this session keyring: {os.strerror(ctypes.get_errno())}")
    code = (
        "import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n"
        f"print('SEARCH', libc.syscall({SYS_KEYCTL}, 10, -3, b'user', {desc!r}, 0))\n"  # KEYCTL_SEARCH
        f"print('READ', libc.syscall({SYS_KEYCTL}, 11, {key}, None, 0))\n"  # KEYCTL_READ by id
        "try:\n    print('PROCKEYS', open('/proc/keys').read())\nexcept OSError as e:\n"
        "    print('PROCKEYS denied', e)\n" + DRAW
    )
    try:
        res = Sandbox().run(code)
    finally:
        LIBC.syscall(SYS_KEYCTL, 3, key)  # KEYCTL_REVOKE
    assert res.status == "ok", res.error
    assert_isolated(res.isolation, "keyring")
    assert "SEARCH -1" in res.stdout and "READ -1" in res.stdout, res.stdout
    assert payload.decode() not in res.stdout
    if ROOT:  # another uid: not even the key's name is listed (same uid: its name is, not its value)
        assert desc.decode() not in res.stdout


def test_host_sockets_are_unreachable(public_dir):
    """A Unix socket file in a world-writable folder and an abstract socket on the host."""
    require_isolation()
    path = public_dir / "agent.sock"
    abstract = f"\0vlmgrpo-{uuid.uuid4().hex[:8]}"
    servers = [socket.socket(socket.AF_UNIX), socket.socket(socket.AF_UNIX)]
    servers[0].bind(str(path))
    servers[1].bind(abstract)
    path.chmod(0o777)
    for s in servers:
        s.listen(1)
    code = (
        "import socket\n"
        f"for addr in ({str(path)!r}, {abstract!r}):\n"
        "    s = socket.socket(socket.AF_UNIX)\n    s.settimeout(2)\n"
        "    try:\n        s.connect(addr)\n        print('CONNECTED', repr(addr))\n"
        "    except OSError as e:\n        print('BLOCKED', e.strerror)\n" + DRAW
    )
    try:
        res = Sandbox().run(code)
    finally:
        for s in servers:
            s.close()
    assert res.status == "ok", res.error
    assert_isolated(res.isolation, "mount_ns", "network")
    assert res.stdout.count("BLOCKED") == 2 and "CONNECTED" not in res.stdout, res.stdout


@pytest.mark.parametrize(
    "code, settings",
    [
        ("open('big.bin', 'wb').write(b'x' * (3 << 20))\n", {"max_file_mb": 1}),
        ("fs = [open(f'f{i}', 'w') for i in range(200)]\n", {"max_open_files": 32}),
        ("for i in range(64):\n    open(f'f{i}', 'wb').write(b'x' * (1 << 20))\n", {"disk_mb": 8}),
        (
            "import os, time\nwhile True:\n    if os.fork() == 0:\n        time.sleep(30)\n        os._exit(0)\n",
            {"max_procs": 4},
        ),
    ],
    ids=["file_size", "open_files", "disk", "processes"],
)
def test_limit_hits_are_resource_limits(code, settings):
    """Each limit a program can hit is reported as `resource_limit` (was `runtime_error`)."""
    if "disk_mb" in settings or "fork" in code:
        require_isolation()  # the tmpfs cap, and RLIMIT_NPROC per leased uid or user namespace
    res = Sandbox(timeout_s=10, **settings).run(DRAW + code)
    assert res.status == "resource_limit", (res.status, res.error[-500:])


# ----------------------------------------------------------------------------------- reward hack
HACK = """
import json, os
import matplotlib.pyplot as plt
found = None
for root, dirs, files in os.walk('/'):
    if root in ('/proc', '/sys', '/dev', '/usr') or 'site-packages' in root or 'python3.' in root:
        dirs[:] = []
        continue
    for f in files:
        p = os.path.join(root, f)
        try:
            if f.endswith('.jsonl'):
                for line in open(p):
                    row = json.loads(line)
                    if 'TARGET_TITLE' in row.get('reference_code', ''):
                        found = ('code', row['reference_code'])
            elif f.endswith('.png') and found is None and 'target' in f:
                found = ('image', p)
        except (OSError, ValueError, AttributeError):
            pass
print('FOUND' if found else 'NOTHING', found and found[0])
if found and found[0] == 'code':
    exec(found[1])
elif found:
    fig = plt.figure(figsize=(4, 3))
    fig.figimage(plt.imread(found[1]), resize=True)
else:
"""
FALLBACK = "    plt.figure(figsize=(4, 3))\n    plt.bar(['a', 'b'], [1, 2])\n"


def test_the_reward_cannot_be_hacked_by_reading_the_reference_from_the_host(public_dir):
    """Target image and dataset file (with the reference code) lie world-readable beside the run;
    the img2code reward, called as training calls it, gives a program that searches the host for
    them exactly what its own drawing earns, far below the reference's score."""
    require_isolation()
    from vlmgrpo.config import load_config
    from vlmgrpo.data import build_dataset
    from vlmgrpo.rewards import RewardContext, RewardRecord, RewardSpec, compute_rewards

    title = f"TARGET_TITLE {uuid.uuid4().hex[:6]}"
    ref_code = (
        "import matplotlib.pyplot as plt\nplt.figure(figsize=(4, 3))\n"
        f"plt.plot([1, 4, 2, 5], color='crimson', lw=4)\nplt.title({title!r})\n"
    )
    data_dir = public_dir / "data"
    (data_dir / "images").mkdir(parents=True)
    for d in (data_dir, data_dir / "images", public_dir / "run"):
        d.mkdir(exist_ok=True)
        d.chmod(0o755)
    ref = Sandbox().run(ref_code)
    assert ref.status == "ok", ref.error
    ref.image.save(data_dir / "images" / "target.png")
    row = {"id": "t0", "description": "a line", "reference_code": ref_code, "image_path": "images/target.png"}
    _readable(data_dir / "dataset.jsonl", json.dumps(row) + "\n")
    (data_dir / "images" / "target.png").chmod(0o644)

    cfg = load_config("img2code-tiny")  # the recipe's reward kwargs, as training uses them
    specs = [RewardSpec(r.name, r.weight, r.kwargs, r.label) for r in cfg.rewards]
    sample = build_dataset("img2code", {"path": str(data_dir / "dataset.jsonl")}, "train", 0)[0]
    fence = "```python\n{}\n```".format
    completions = [
        fence(ref_code),
        fence(HACK + FALLBACK),
        fence("import matplotlib.pyplot as plt\nif 1:\n" + FALLBACK),
    ]
    recs = [
        RewardRecord("p", c, sample["images"], sample, group=0, index=i) for i, c in enumerate(completions)
    ]
    scores = compute_rewards(recs, specs, RewardContext()).per_reward["img2code"]
    reference, hack, own = scores
    assert [r.extras["status"] for r in recs] == ["ok", "ok", "ok"]
    assert hack == pytest.approx(own, abs=1e-9)  # exactly what its own drawing earns
    assert reference > own + 0.1, scores
    # the attack is real: with isolation off the same program finds the reference and copies it
    res = Sandbox(isolate=False, timeout_s=60).run(HACK + FALLBACK)
    if ROOT or os.access(data_dir / "dataset.jsonl", os.R_OK):
        assert "FOUND code" in res.stdout, (res.stdout, res.error)
    res = Sandbox(timeout_s=60).run(HACK + FALLBACK)
    assert "NOTHING" in res.stdout, res.stdout
