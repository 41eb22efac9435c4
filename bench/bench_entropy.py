"""What the per-step token entropy (loss/entropy, top_entropy_quantile) costs in the training pass.

`chunked_token_logps` forward + backward on a Qwen2.5-VL-3B-shaped LM head (H 2048, V 151936, bf16,
random values), B x T completion tokens, with and without `with_entropy=True`: median wall time of
`--reps` runs after a warm-up, and the peak GPU memory of each.

usage (GPU): python bench/bench_entropy.py --tokens 8192
usage (CPU): python bench/bench_entropy.py --tokens 256 --vocab 4096 --hidden 256 --device cpu
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from vlmgrpo.grpo.core import chunked_token_logps


def run(args: argparse.Namespace, with_entropy: bool) -> dict[str, float]:
    dev = torch.device(args.device)
    dt = torch.bfloat16 if dev.type == "cuda" else torch.float32
    g = torch.Generator(device=dev).manual_seed(0)
    hidden = torch.randn(1, args.tokens, args.hidden, device=dev, dtype=dt, generator=g).requires_grad_(True)
    w = (torch.randn(args.vocab, args.hidden, device=dev, dtype=dt, generator=g) * 0.02).requires_grad_(True)
    targets = torch.randint(0, args.vocab, (1, args.tokens), device=dev, generator=g)
    times = []
    for i in range(args.reps + 1):
        if dev.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        out = chunked_token_logps(hidden, w, targets, chunk_tokens=args.chunk, with_entropy=with_entropy)
        logp = out[0] if with_entropy else out
        logp.sum().backward()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        if i:  # the first is the warm-up
            times.append(time.perf_counter() - t0)
        hidden.grad = w.grad = None
    peak = torch.cuda.max_memory_allocated() / 2**30 if dev.type == "cuda" else float("nan")
    return {"with_entropy": with_entropy, "median_s": statistics.median(times), "peak_gib": peak}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--tokens", type=int, default=8192)
    p.add_argument("--hidden", type=int, default=2048)
    p.add_argument("--vocab", type=int, default=151936)
    p.add_argument("--chunk", type=int, default=4096)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--device", default="cuda")
    args = p.parse_args()
    rows = [run(args, False), run(args, True)]
    for r in rows:
        print(json.dumps(r))
    print(f"entropy overhead: {rows[1]['median_s'] / rows[0]['median_s'] - 1:+.1%} time")


if __name__ == "__main__":
    main()
