"""Recount every committed bench figure with `bench/flops.py` (issue #20): no GPU, no re-run.

Reads bench/results/*/bench*.json (bench_step.py and bench_reward.py runs) and the TRL / FLUX anchor
JSON, and prints the old formula beside the new count for every training pass (MFU), rollout (share
of peak), TRL step and FLUX generation figure, plus the vlmgrpo / TRL step ratios with every
pairing named. Writes bench/results/recount.json and bench/results/recount.md.

    python bench/recount.py                      # pure Python, a second
    python bench/recount.py --rebuild-prompts    # re-derive bench/results/bench_prompts.json (needs
                                                 # torch + transformers + vlmgrpo on the path, ~30 s)

What the committed JSON does not hold, and how it is filled in:
- the prompt tokens of the bench's 8 prompts: the bench's own `make_prompts` rebuilt on the CPU
  (`--rebuild-prompts`, deterministic: same images, words and tokenizer), committed as
  bench/results/bench_prompts.json; every row of a group has its prompt's length;
- the completion tokens of the batch a training pass ran on: its `tokens` minus those prompt
  tokens (checked to lie in [0, rows x max_new]); rows are given the mean completion length, which
  only matters for the attention term (about 1% of the step's FLOPs).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import flops as F  # noqa: E402

RESULTS = HERE / "results"
PROMPTS = RESULTS / "bench_prompts.json"
IMAGE_PX = 448


def rebuild_prompts() -> dict:
    """Prompt token counts of bench_step.make_prompts (8 prompts, 448 px, padded to >= 304 tokens)
    with both tokenizers the bench has used (run 1: the small offline BPE; runs 2-4: full vocab)."""
    import bench_step as B

    from vlmgrpo.rollout.hf import render_prompt

    out: dict = {"command": "python bench/recount.py --rebuild-prompts"}
    for key, full in (("full_vocab", True), ("small_vocab", False)):
        proc = B.build_processor(full_vocab=full)
        prompts = B.make_prompts(proc, 8, IMAGE_PX, 304)
        out[key] = [
            int(
                proc(text=[render_prompt(proc, p)], images=p.images, return_tensors="pt")["input_ids"].shape[
                    1
                ]
            )
            for p in prompts
        ]
    return out


def shape_of(model: str) -> F.QwenVLShape:
    import bench_step as B

    s = B.SHAPES[model]
    return F.QwenVLShape.from_config(s["text"], s["vision"])


def _rows(prompt_lens: list[int], group: int, completion_total: float) -> list[tuple[int, int]]:
    n = len(prompt_lens) * group
    c = completion_total / n
    return [(p, c) for p in prompt_lens for _ in range(group)]  # type: ignore[misc]


def recount_step_run(label: str, path: Path, prompt_lens: list[int]) -> dict:
    """Training passes and rollouts of one bench_step.py run."""
    d = json.loads(path.read_text())
    gpu, peak = F.peak_for(d["env"]["device"])
    sec = d["sections"]
    grid = F.image_grid(IMAGE_PX, IMAGE_PX, shape_of("3b"))
    out: dict = {"run": label, "file": str(path.relative_to(HERE.parent)), "gpu": gpu, "peak_flops": peak}
    for model, info in d.get("models", {}).items():
        s = shape_of(model)
        w = info["workload"]
        rows, group, max_new = w["rows"], w["group"], w["max_new"]
        prompt_total = group * sum(prompt_lens)
        t = sec.get(f"{model}/train", {})
        if "s" in t:
            completion = t["tokens"] - prompt_total
            if not 0 <= completion <= rows * max_new:
                raise ValueError(
                    f"{path}: {model}/train tokens {t['tokens']} do not fit prompts {prompt_total}"
                )
            shared = t.get("share_vision", True)
            grids = [grid] * (len(prompt_lens) if shared else rows)
            c = F.qwen_vl_train_flops(s, _rows(prompt_lens, group, completion), grids, shared_vision=shared)
            old = F.old_mfu_flops(info["params"], t["tokens"])
            r = {
                "seconds": t["s"],
                "optimizer": t.get("optimizer"),
                "optimizer_step_s": t.get("optimizer_step_s"),
                "weights_b": {k: round(v / 1e9, 3) for k, v in F.qwen_vl_weights(s).items()},
                "tokens": t["tokens"],
                "prompt_tokens": prompt_total,
                "completion_tokens": completion,
                "patches": c["patches"],
                "old_tflop": round(old / 1e12, 1),
                "new_tflop": round(c["model"] / 1e12, 1),
                "new_parts_fwd_tflop": {
                    k[4:]: round(v / 1e12, 2) for k, v in c.items() if k.startswith("fwd_")
                },
                "recompute_tflop": round(c["recompute"] / 1e12, 2),
                # bench_step.py since 2026-12-04 records the old formula as mfu_old and the new
                # count as mfu; earlier runs recorded the old formula as mfu
                "old_mfu_recorded": t["mfu_old"] if "mfu_old" in t else t.get("mfu"),
                "new_mfu_recorded": t["mfu"] if "mfu_old" in t else None,
                "old_mfu": round(F.share_of_peak(old, t["s"], peak), 4),
                "new_mfu": round(F.share_of_peak(c["model"], t["s"], peak), 4),
                "new_hfu": round(F.share_of_peak(c["model"] + c["recompute"], t["s"], peak), 4),
            }
            if t.get("optimizer_step_s"):  # the forward + backward alone, optimiser step taken out
                fb = t["s"] - t["optimizer_step_s"]
                r["fwd_bwd_seconds"] = round(fb, 3)
                r["new_mfu_fwd_bwd"] = round(F.share_of_peak(c["model"], fb, peak), 4)
            out[f"{model}/train"] = r
        for sect in ("rollout_fast", "rollout_fast_compiled"):
            ro = sec.get(f"{model}/{sect}", {})
            if "s" not in ro:
                continue
            steps = int(ro["decode_steps"]) - 1  # the first token is sampled from the prefill
            f = F.qwen_vl_rollout_flops(s, prompt_lens, [grid] * len(prompt_lens), group, steps)
            out[f"{model}/{sect}"] = {
                "seconds": ro["s"],
                "tok_per_s": ro["tok_per_s"],
                "tflop": round(f["total"] / 1e12, 2),
                "prefill_tflop": round(f["prefill"] / 1e12, 2),
                "share_of_peak": round(F.share_of_peak(f["total"], ro["s"], peak), 4),
            }
        st = sec.get(f"{model}/step", {})
        if "s" in st:
            out[f"{model}/step"] = {
                "seconds": st["s"],
                "rollout_s": st["rollout_s"],
                "update_s": st["update_s"],
                "gen_tokens": st.get("gen_tokens"),
            }
    return out


def recount_trl(label: str, d: dict, peak: float) -> dict:
    """TRL's training pass, counted by bench_step.trl_train_flops: the tower once per row (64
    images), decoder at prompt + completion tokens, LM head at the completion positions."""
    import bench_step as B

    w = d["workload"]
    c = B.trl_train_flops(d)  # the count bench_step.py records for TRL
    tokens = w["completions"] * w["prompt_len"] + d["mean_gen_tokens"]
    old = F.old_mfu_flops(w["params_b"] * 1e9, tokens)
    steps = [x for x in d["steps"] if not x.get("warmup")]
    return {
        "run": label,
        "gpu": F.peak_for(d["env"]["device"])[0],
        "timed_steps": len(steps),
        "step_s_mean": d["mean_step_s"],
        "step_s_each": [x["step_s"] for x in steps],
        "generate_tok_per_s": d["gen_tok_per_s"],
        "gen_tokens": d["mean_gen_tokens"],
        "train_s": d["mean_train_s"],
        "gradient_checkpointing": w["gradient_checkpointing"],
        "old_mfu": round(F.share_of_peak(old, d["mean_train_s"], peak), 4),
        "new_mfu": round(F.share_of_peak(c["model"], d["mean_train_s"], peak), 4),
    }


def recount_reward(label: str, path: Path) -> dict:
    d = json.loads(path.read_text())
    gpu, peak = F.peak_for(d["env"]["device"])
    f = F.FluxShape()  # bench_reward.SCHNELL_TRANSFORMER
    total = d["models"]["transformer_params_b"] * 1e9
    txt = d["args"]["txt_len"]
    out: dict = {"run": label, "file": str(path.relative_to(HERE.parent)), "gpu": gpu, "peak_flops": peak}
    out["flux_params_b"] = {k: round(v / 1e9, 3) for k, v in F.flux_params(f).items()}
    for name, sec in d["sections"].items():
        if name.startswith("gen_") and "batched_images_per_s" in sec:
            size = int(name.split("_")[1])
            n = F.flux_image_tokens(size, size)
            new = 4 * F.flux_step_flops(f, n, txt)["total"]
            old = 4 * F.flux_old_step_flops(f, total, n, txt)
            # runs after the recount record the new count as `transformer_tflop_per_image` and
            # `share_of_floor`, the old one under `old_`; earlier runs recorded only the old one
            has_new = "old_transformer_tflop_per_image" in sec
            old_key = "old_transformer_tflop_per_image" if has_new else "transformer_tflop_per_image"
            out[name] = {
                "image_tokens": n,
                "text_tokens": txt,
                "old_tflop_per_image_recorded": sec[old_key],
                "new_tflop_per_image_recorded": sec["transformer_tflop_per_image"] if has_new else None,
                "new_share_recorded": sec["share_of_floor"] if has_new else None,
                "stock_batched_images_per_s": sec.get("stock_batched_images_per_s"),
                "old_tflop_per_image": round(old / 1e12, 2),
                "new_tflop_per_image": round(new / 1e12, 2),
                "batched_images_per_s": sec["batched_images_per_s"],
                "per_prompt_images_per_s": sec["per_prompt_images_per_s"],
                "old_share_recorded": sec["old_share_of_floor"] if has_new else sec["share_of_floor"],
                "old_share": round(sec["batched_images_per_s"] * old / peak, 3),
                "new_share": round(sec["batched_images_per_s"] * new / peak, 3),
                "new_share_per_prompt": round(sec["per_prompt_images_per_s"] * new / peak, 3),
                "new_floor_images_per_s": round(peak / new, 2),
            }
        if name.startswith("fast_steps_"):
            size = int(name.split("_")[2])
            n = F.flux_image_tokens(size, size)
            step = F.flux_step_flops(f, n, txt)["total"]
            out[name] = {
                f"{k}_steps_new_share": round(sec[f"eager_{k}_steps_images_per_s"] * k * step / peak, 3)
                for k in (4, 3, 2)
                if f"eager_{k}_steps_images_per_s" in sec
            }
    return out


def ratios(step_runs: list[dict], trl_runs: list[dict]) -> list[dict]:
    """Every vlmgrpo full step (3B) against every TRL step mean on the same GPU model, saying
    whether they ran together (a pairing across GPU models would credit the GPU to one side)."""
    out = []
    for v in step_runs:
        st = v.get("3b/step")
        if not st:
            continue
        for t in trl_runs:
            if t["gpu"] != v["gpu"]:
                continue
            out.append(
                {
                    "vlmgrpo_run": v["run"],
                    "vlmgrpo_step_s": st["seconds"],
                    "vlmgrpo_gen_tokens": st.get("gen_tokens"),
                    "trl_gen_tokens": t["gen_tokens"],
                    "trl_run": t["run"],
                    "trl_step_s": t["step_s_mean"],
                    "same_run": t["run"] == v["run"],
                    "ratio": round(t["step_s_mean"] / st["seconds"], 2),
                }
            )
    return out


def markdown(r: dict) -> str:
    L = [
        f"Recount of the committed bench JSON with bench/flops.py (`python bench/recount.py`). Peak: "
        f"{r['peak_note']}",
        "",
        "### Training pass MFU: old formula vs what runs",
        "",
        "| run | model | time | old: 6 x params x tokens | new: model FLOPs | old MFU | new MFU | new, fwd+bwd only | new HFU (recompute incl.) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for v in r["step_runs"]:
        for m in ("3b", "7b"):
            t = v.get(f"{m}/train")
            if not t:
                continue
            fb = (
                f"{100 * t['new_mfu_fwd_bwd']:.1f}% ({t['fwd_bwd_seconds']} s)"
                if "new_mfu_fwd_bwd" in t
                else "-"
            )
            L.append(
                f"| {v['run']} | {m} ({t['optimizer']}) | {t['seconds']} s | {t['old_tflop']} TFLOP | "
                f"{t['new_tflop']} TFLOP | {100 * t['old_mfu']:.1f}% | **{100 * t['new_mfu']:.1f}%** | {fb} | "
                f"{100 * t['new_hfu']:.1f}% |"
            )
    for t in r["trl"]:
        L.append(
            f"| TRL ({t['run']}) | 3b ({'gradient checkpointing' if t['gradient_checkpointing'] else 'no checkpointing'}) | {t['train_s']} s | - | - | "
            f"{100 * t['old_mfu']:.1f}% | **{100 * t['new_mfu']:.1f}%** | - | - |"
        )
    t3 = r["step_runs"][-1].get("3b/train", {})
    if t3:
        L += ["", f"3B ({r['step_runs'][-1]['run']}): matmul weights by part (B) {t3['weights_b']}; tokens "
              f"{t3['tokens']:,.0f} (completion {t3['completion_tokens']:,.0f}), patches {t3['patches']:,.0f}; "
              f"forward TFLOP by part {t3['new_parts_fwd_tflop']}; optimiser step alone {t3['optimizer_step_s']} s"]  # fmt: skip
    L += ["", "### Rollout: share of the peak (decode is memory-bound; for scale only)", ""]
    L += [
        "| run | model | section | s | tok/s | TFLOP | share of peak |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for v in r["step_runs"]:
        for k, x in v.items():
            if "/rollout" in k:
                m, sec = k.split("/")
                L.append(
                    f"| {v['run']} | {m} | {sec} | {x['seconds']} | {x['tok_per_s']:,.0f} | {x['tflop']} | "
                    f"{100 * x['share_of_peak']:.2f}% |"
                )
    L += ["", "### Full step: vlmgrpo (3B) vs TRL step mean, every pairing", ""]
    L += [
        "| vlmgrpo run | step (generated tokens) | TRL run | TRL step (each timed step; generated tokens) | same run | ratio |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    trl_each = {t["run"]: t["step_s_each"] for t in r["trl"]}
    for x in r["ratios"]:
        L.append(
            f"| {x['vlmgrpo_run']} | {x['vlmgrpo_step_s']} s ({x['vlmgrpo_gen_tokens']:,.0f}) | {x['trl_run']} | "
            f"{x['trl_step_s']} s ({', '.join(str(s) for s in trl_each[x['trl_run']])}; {x['trl_gen_tokens']:,.0f}) | "
            f"{'yes' if x['same_run'] else 'no'} | {x['ratio']}x |"
        )
    L += ["", "TRL generate tok/s (model.generate only): " + ", ".join(
        f"{t['run']} {t['generate_tok_per_s']:,.0f}" for t in r["trl"])]  # fmt: skip
    last = r["step_runs"][-1].get("3b/rollout_fast_compiled")
    if last:
        L += [f"{r['step_runs'][-1]['run']}'s compiled rollout ({last['tok_per_s']:,.0f} tok/s) against each: " + ", ".join(
            f"{t['run']} {last['tok_per_s'] / t['generate_tok_per_s']:.1f}x" for t in r["trl"]
            if t["gpu"] == r["step_runs"][-1]["gpu"]) + " (same GPU model)"]  # fmt: skip
    L += ["", "### FLUX transformer: share of the peak", ""]
    L += [
        "| run | size | TFLOP/image old (recorded) | TFLOP/image new | batched images/s | old share | new share | new share, one call per prompt |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for v in r["reward_runs"]:
        for k, x in v.items():
            if k.startswith("gen_"):
                L.append(
                    f"| {v['run']} | {k[4:]} | {x['old_tflop_per_image_recorded']} | {x['new_tflop_per_image']} | "
                    f"{x['batched_images_per_s']} | {100 * x['old_share_recorded']:.0f}% | **{100 * x['new_share']:.0f}%** | "
                    f"{100 * x['new_share_per_prompt']:.0f}% |"
                )
    for v in r["reward_runs"]:
        for k, x in v.items():
            if k.startswith("fast_steps_"):
                shares = " / ".join(f"{100 * x[f'{n}_steps_new_share']:.0f}%" for n in (4, 3, 2))
                L.append(f"\n{v['run']}, {k}: new share of the peak at 4 / 3 / 2 steps (batched): {shares}")
    p = r["reward_runs"][0]["flux_params_b"] if r["reward_runs"] else {}
    L += ["", f"FLUX matmul weights (B): {p}"]
    return "\n".join(L) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rebuild-prompts", action="store_true")
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args()
    if args.rebuild_prompts:
        PROMPTS.write_text(json.dumps(rebuild_prompts(), indent=1) + "\n")
        print(PROMPTS.read_text())
    pr = json.loads(PROMPTS.read_text())
    if pr["full_vocab"] != pr["small_vocab"]:
        raise SystemExit(f"{PROMPTS}: the two tokenizers give different prompts; choose per run")
    lens = pr["full_vocab"]
    step_files = [
        ("run 1", RESULTS / "h100-2026-11-23" / "bench.json"),
        ("run 2", RESULTS / "h100-2026-11-23-run2" / "bench.json"),
        ("run 3", RESULTS / "h100-2026-11-23-run3" / "bench.json"),
        ("run 3, --compile-train", RESULTS / "h100-2026-11-23-run3" / "bench-compile-train.json"),
        ("run 4", RESULTS / "h100-2026-11-23-run4" / "bench.json"),
        ("H200 call 1", RESULTS / "h200-2026-12-05-A2" / "step" / "bench.json"),
        ("H200 s6 G, budget 4096", RESULTS / "h200-2026-12-05-s6-G" / "b4096-plain" / "bench.json"),
        ("H200 s6 G, budget 16384", RESULTS / "h200-2026-12-05-s6-G" / "b16384-plain" / "bench.json"),
    ]
    step_runs = [recount_step_run(label, p, lens) for label, p in step_files]
    trl_files = [
        ("run 1", RESULTS / "h100-2026-11-23" / "trl_anchor.json"),
        ("anchor", RESULTS / "anchors-h100-2026-11-23" / "trl_anchor.json"),
        ("run 2", RESULTS / "h100-2026-11-23-run2" / "trl_anchor.json"),
        ("H200 call 3", RESULTS / "h200-2026-12-05-trl-fast" / "trl" / "trl_anchor.json"),
    ]
    trl = []
    for label, p in trl_files:
        d = json.loads(p.read_text())
        trl.append(recount_trl(label, d, F.peak_for(d["env"]["device"])[1]))
    reward_files = [
        ("reward", RESULTS / "h100-2026-11-23-reward" / "bench.json"),
        ("reward-fast", RESULTS / "h100-2026-11-23-reward-fast" / "bench.json"),
        ("H200 s6 BQ", RESULTS / "h200-2026-12-05-s6-BQ" / "reward" / "bench.json"),
    ]
    reward_runs = [recount_reward(label, p) for label, p in reward_files]
    r = {
        "command": "python bench/recount.py",
        "peak_note": "989 TFLOP/s, NVIDIA's dense bf16 figure for the H100 SXM and the H200 (runs 1-4: NVIDIA "
        "H100 80GB HBM3; 'H200 2026-12-05': NVIDIA H200, whose 8192^3 bf16 matmul measured 795 TFLOP/s)",
        "prompt_lens": lens,
        "step_runs": step_runs,
        "trl": trl,
        "ratios": ratios(step_runs, trl),
        "reward_runs": reward_runs,
    }
    out = Path(args.out)
    (out / "recount.json").write_text(json.dumps(r, indent=1) + "\n")
    md = markdown(r)
    (out / "recount.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
