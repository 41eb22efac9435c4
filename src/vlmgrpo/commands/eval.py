"""Evaluate the base model and every checkpoint of a run, into RUN/ckpt_tests/ (the run's own task and
eval settings, or a judged pass@k benchmark).

The run's own task (area, geometry, img2code, or `rewards`: the run's rewards on its eval set) is
evaluated with the run's own settings from its config.yaml (eval.num_items, eval.num_chains,
eval.temperature, eval.max_new_tokens, prompt.system); scenes-qa (the default for runs on the
synthetic scenes: demo, adversarial) with the cycle demo's transfer check's (32 scenes x 3 questions
x 4 samples, temperature 1.0, 24 tokens); a QA benchmark (charts, charxiv) with seed A's (10 items
x 10 samples, temperature 0.7, 512 tokens, the chart assistant prompt). Options given on the
command line win.

Examples:
    vlmgrpo eval --output-dir runs/area-tiny                    # the run's own task and settings
    vlmgrpo eval --output-dir runs/demo                         # scenes-qa: questions about held-out scenes
    vlmgrpo eval --output-dir runs/demo --task charts           # offline charts benchmark, rules judge
    vlmgrpo eval --output-dir runs/a --data test_data/test_set.json --judge llm   # seed A's CharXiv eval
    vlmgrpo eval --output-dir runs/a --judge llm --judge-base-url http://localhost:8000/v1 --judge-model m
"""

from __future__ import annotations

import argparse


def _ks(text: str) -> tuple[int, ...]:
    try:
        ks = tuple(sorted({int(x) for x in text.split(",") if x.strip()}))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--k {text!r}: expected comma-separated integers like 1,5,10"
        ) from None
    if not ks or min(ks) < 1:
        raise argparse.ArgumentTypeError(f"--k {text!r}: every k must be >= 1")
    return ks


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--output-dir", required=True, help="The run folder (holds config.yaml and ckpts/).")
    p.add_argument(
        "--task",
        default="",
        help="Eval task: charts | charxiv | scenes-qa | rewards | geometry | area | img2code | module:fn (default: by "
        "--data, else by the run's eval dataset; scenes runs get scenes-qa, other runs without questions charts).",
    )
    p.add_argument(
        "--data", default="", help="A CharXiv-style test_set.json (e.g. from `vlmgrpo data charts`)."
    )
    own = "default: the run's eval settings, or for charts/charxiv"
    p.add_argument("--num-items", type=int, default=None, help=f"First N items ({own} 10; scenes-qa 32).")
    p.add_argument(
        "--num-samples", type=int, default=None, help=f"Completions per item, n ({own} 10; scenes-qa 4)."
    )
    p.add_argument(
        "--k",
        type=_ks,
        default=None,
        help="The pass@k values to report, those <= n (default 1,5,10; scenes-qa 1,4).",
    )
    p.add_argument(
        "--temperature", type=float, default=None, help=f"Sampling temperature ({own} 0.7; scenes-qa 1.0)."
    )
    p.add_argument(
        "--max-new-tokens", type=int, default=None, help=f"Tokens per completion ({own} 512; scenes-qa 24)."
    )
    p.add_argument(
        "--system",
        default=None,
        help="System prompt (default: the run's prompt.system, or for charts/charxiv seed A's chart assistant).",
    )
    p.add_argument("--prompt-suffix", default="", help="Text appended to each question.")
    p.add_argument(
        "--judge",
        default="",
        help="Judge: rules | llm | module:Class (default: llm for charxiv, else rules).",
    )
    p.add_argument("--judge-model", default="", help="The llm judge's model (default gpt-4.1).")
    p.add_argument(
        "--judge-base-url",
        default="",
        help="OpenAI-compatible base URL (default $OPENAI_BASE_URL or https://api.openai.com/v1).",
    )
    p.add_argument("--judge-concurrency", type=int, default=0, help="Requests in flight (default 8).")
    p.add_argument("--judge-timeout", type=float, default=0.0, help="Seconds per request (default 60).")
    p.add_argument(
        "--judge-attempts", type=int, default=0, help="Tries per item before ungraded (default 5)."
    )
    p.add_argument(
        "--judge-backoff", type=float, default=0.0, help="First retry delay, s, doubling (default 2)."
    )
    p.add_argument("--judge-cache", default="", help="Cache folder (default RUN/judge_cache).")
    p.add_argument("--force", action="store_true", help="Re-evaluate models that already have a result.")
    p.add_argument("--regrade", action="store_true", help="Re-judge ungraded answers of existing results.")
    p.add_argument("--no-base", action="store_true", help="Skip the base model.")
    p.add_argument("--device", default="auto", help="Device: auto | cpu | cuda | cuda:N (default auto).")
    p.add_argument("--seed", type=int, default=0, help="Sampling seed, the same for every model.")
    p.add_argument("--batch-rows", type=int, default=64, help="Sequences per generate call.")
    p.add_argument("--results-dir", default="", help="Where results go (default RUN/ckpt_tests).")


def options(args: argparse.Namespace):
    """EvalOptions from parsed arguments (the API key comes from $OPENAI_API_KEY or the run config)."""
    from vlmgrpo.errors import ConfigError
    from vlmgrpo.evaluate import EvalOptions

    for flag, val in (("--num-items", args.num_items), ("--num-samples", args.num_samples)):
        if val is not None and val < 1:
            raise ConfigError(f"{flag} {val}: must be at least 1")
    if args.max_new_tokens is not None and args.max_new_tokens < 1:
        raise ConfigError(f"--max-new-tokens {args.max_new_tokens}: must be at least 1")
    judge_kwargs = {
        key: val
        for key, val in {
            "model": args.judge_model,
            "base_url": args.judge_base_url,
            "concurrency": args.judge_concurrency,
            "timeout_s": args.judge_timeout,
            "max_attempts": args.judge_attempts,
            "backoff_s": args.judge_backoff,
            "cache_dir": args.judge_cache,
        }.items()
        if val
    }
    return EvalOptions(
        task=args.task,
        data=args.data,
        num_items=args.num_items,
        num_samples=args.num_samples,
        ks=args.k,
        temperature=args.temperature,
        max_new_tokens=args.max_new_tokens,
        system=args.system,
        prompt_suffix=args.prompt_suffix,
        judge=args.judge,
        judge_kwargs=judge_kwargs,
        force=args.force,
        regrade=args.regrade,
        include_base=not args.no_base,
        device=args.device,
        seed=args.seed,
        batch_rows=args.batch_rows,
        results_dir=args.results_dir,
    )


def run(args: argparse.Namespace) -> int:
    from vlmgrpo.evaluate import evaluate_run

    opts = options(args)
    results = evaluate_run(args.output_dir, opts)
    ungraded = sum(r.get("ungraded") or 0 for r in results)
    if ungraded:
        print(
            f"{ungraded} completion(s) ungraded (judge failures; excluded from pass@k); "
            "re-run with --regrade to retry them"
        )
    return 0
