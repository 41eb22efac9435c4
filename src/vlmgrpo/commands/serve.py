"""Serve a generator (`diffusers` FLUX, `render`, ...) over Replicate's prediction protocol, so that
all ranks of a run share one reward GPU; see vlmgrpo/imagegen/server.py and docs/scaling.md. The
`replicate` generator and Replicate's own SDK (`replicate.Client(base_url=URL)`) both talk to it."""

from __future__ import annotations

import argparse
import json
import time


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--generator", default="diffusers", help="generator registry name (diffusers, render, ...)"
    )
    p.add_argument("--kwargs", default="{}", help='generator kwargs as JSON, e.g. \'{"device": "cuda:7"}\'')
    p.add_argument("--host", default="127.0.0.1", help="0.0.0.0 to serve other machines")
    p.add_argument("--port", type=int, default=8765)
    p.add_argument("--batch-size", type=int, default=16, help="most prompts per generate() call")
    p.add_argument("--max-wait", type=float, default=0.05, help="seconds to wait for more prompts to batch")


def run(args: argparse.Namespace) -> int:
    from vlmgrpo.errors import ConfigError
    from vlmgrpo.imagegen import get_generator
    from vlmgrpo.imagegen.server import TOKEN_ENV, GeneratorServer

    try:
        kwargs = json.loads(args.kwargs)
    except json.JSONDecodeError as e:
        raise ConfigError(f"--kwargs: not JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(kwargs, dict):
        raise ConfigError("--kwargs: expected a JSON object")
    gen = get_generator(args.generator, kwargs)
    server = GeneratorServer(gen, args.host, args.port, args.batch_size, args.max_wait).start()
    auth = (
        f"bearer token from ${TOKEN_ENV}" if server.token else f"no token (set ${TOKEN_ENV} to require one)"
    )
    print(f"serving {args.generator} at {server.url} ({auth}); Ctrl-C stops", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        server.close()
    return 0
