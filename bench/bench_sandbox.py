"""Where a sandboxed img2code program's time goes (docs/img2code.md "Cost").

    PYTHONPATH=src python bench/bench_sandbox.py [--n 16] [--workers 1]

Times, each as the median of `--n` runs after one warm-up (wall seconds): bwrap starting `true`;
bwrap starting `python -I -c pass`; the same importing matplotlib (Agg) + pyplot; the program itself and its savefig in this process (after
the import); reading the PNG back and scoring it against a reference (the reward's five metrics);
`Sandbox.run` end to end (one program, sequential) and `Sandbox.run_many` of 16 programs, each
with a fresh bwrap + interpreter per program (`zygote=False`) and with the zygote.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import statistics
import subprocess
import time

from vlmgrpo import sandbox as sb

PROGRAM = 'from pylab import *\nbar(range(3),[4, 7, 2],color="c")\n'


def _child_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def timed(fn, n: int) -> tuple[float, float]:
    """(median wall s, mean child CPU s) of fn() over n runs after one warm-up."""
    fn()
    walls, cpu0 = [], _child_cpu()
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        walls.append(time.perf_counter() - t0)
    return statistics.median(walls), (_child_cpu() - cpu0) / n


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--isolate", type=int, default=1)
    args = ap.parse_args()
    box = sb.Sandbox(workers=args.workers, isolate=bool(args.isolate))
    dirs, why = sb._interpreter(box.config.python, box.mpl_cache)
    assert not why, why
    bw = sb._bwrap_args(dirs, box.mpl_cache, box.config, box.root)
    env = dict(PATH="/usr/bin:/bin", MPLBACKEND="Agg", MPLCONFIGDIR=box.mpl_cache)
    py = box.config.python
    imp = "import matplotlib; matplotlib.use('Agg'); import matplotlib.pyplot"
    out = {}

    def run(cmd):
        subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    out["bwrap true"] = timed(lambda: run([*bw, "--", "/bin/true"]), args.n)
    out["bwrap python -I -c pass"] = timed(lambda: run([*bw, "--", py, "-I", "-c", "pass"]), args.n)
    out["bwrap python + import pyplot"] = timed(lambda: run([*bw, "--", py, "-I", "-c", imp]), args.n)
    out["python + import pyplot (no bwrap)"] = timed(lambda: run([py, "-I", "-c", imp]), args.n)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    code = compile(PROGRAM, "<program>", "exec")
    t_exec, t_save = [], []
    png = b""
    for _ in range(args.n + 1):
        t0 = time.perf_counter()
        exec(code, {"__name__": "__main__"})
        t1 = time.perf_counter()
        buf = io.BytesIO()
        plt.gcf().savefig(buf, format="png", dpi=100)
        t2 = time.perf_counter()
        plt.close("all")
        t_exec.append(t1 - t0)
        t_save.append(t2 - t1)
        png = buf.getvalue()
    out["program exec (in process)"] = (statistics.median(t_exec[1:]), 0.0)
    out["savefig png (in process)"] = (statistics.median(t_save[1:]), 0.0)

    from PIL import Image

    from vlmgrpo.imagemetrics import SEED_WEIGHTS, similarity

    ref = Image.open(io.BytesIO(png)).convert("RGB")
    out["read png"] = timed(lambda: Image.open(io.BytesIO(png)).load(), args.n)
    out["similarity (5 metrics, 224 px)"] = timed(
        lambda: similarity([ref], [Image.open(io.BytesIO(png))], SEED_WEIGHTS, 224), args.n
    )
    for zyg in (False, True):
        tag = "zygote" if zyg else "a bwrap + Python per program"
        seq = sb.Sandbox(workers=1, isolate=bool(args.isolate), zygote=zyg)
        out[f"Sandbox.run, 1 program ({tag})"] = timed(lambda: seq.run(PROGRAM), args.n)
        out[f"  of which the program + savefig ({tag})"] = (seq.run(PROGRAM).elapsed_s, 0.0)
        box = sb.Sandbox(workers=args.workers, isolate=bool(args.isolate), zygote=zyg)
        res = box.run_many([PROGRAM] * 16)
        assert all(r.ok for r in res), [r.error for r in res if not r.ok][:1]
        w, c = timed(lambda: box.run_many([PROGRAM] * 16), max(2, args.n // 8))
        out[f"Sandbox.run_many, 16 programs, per program ({tag})"] = (w / 16, c / 16)
        seq.close(), box.close()
    for k, (w, _) in out.items():
        print(f"{k:70s} {w * 1000:8.1f} ms")
    print(json.dumps({"loadavg": os.getloadavg(), "cpus": len(os.sched_getaffinity(0))}))


if __name__ == "__main__":
    main()
