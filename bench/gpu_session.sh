#!/usr/bin/env bash
# Issue #20's GPU work (items 2-5) in a few device calls. Nothing in this file is a measurement:
# it is the plan for the next session that is lent a GPU (nvidia-h200: dense bf16 peak 989 TFLOP/s
# by the data sheet, ~790 measured on random data, KINDS.md; `ceiling` re-measures it).
#
# 0. Here, on the CPU machine, once (repo root): the wheels the image lacks and the anchors.
#        bash bench/gpu_session.sh wheels        # 8.7 MiB of wheels in .whl/ (git-ignored), under 64 MiB
# 1. Then one `run` call per step below, in this order, kind nvidia-h200, timeout_s 600,
#    carry [".whl"], command `bash bench/gpu_session.sh A` (then B, C, D, E, F). Issue them back to back:
#    the machine stays warm only ~30 s between calls, and each fresh start costs 1-2 min of the
#    session's 30 device minutes. A ~9 min, B ~5, C ~9, D ~9, E ~5, F ~9 (estimates; each has a
#    budget). If time runs short, A, C, D and F carry issue #20's "must be shown" figures; B and E
#    come after.
#    Each call's $OUT comes back (<= 8 files, 2 folders deep): copy it to
#    bench/results/h200-<date>-<step>/ and commit it before writing any figure.
# 2. Afterwards, here: python bench/recount.py (add the new runs to its lists) and
#    python bench/gpu_session.py table <the C and D train folders> for the README table.
#
# Session 5 (2026-12-05, 30 device minutes) ran A2, T and F2's parts (bench/RESULTS.md); left for a
# later lease, in this order: G (the training pass's levers), B (FLUX stock vs ours), adversarial-charxiv
# through C, the q,v,o LoRA variant of F.
# Session 6 (2026-12-05) ran G and BQ; left: G2 (Liger, after the engine fix), C2 (adversarial-charxiv).
# Steps:
#   A  item 2 + 5: GPU ceiling; the 3B step and TRL 1.13 (best non-vLLM settings that fit:
#      --no-gc, sdpa like vlmgrpo, 1 warm-up + 3 timed steps) in the same run; vlmgrpo's sections
#      repeated 3 times; a torch.profiler table of the training pass (the levers of item 5).
#   B  item 2, FLUX: stock diffusers (one call per prompt, and one batched call) vs vlmgrpo's
#      batched generator, same run, 512 and 1024 px, 3 reps.
#   C  item 3: `vlmgrpo train` timed on cycle-charxiv-local (seed A, one GPU) and
#      adversarial-charxiv: random-init 3B policy, FLUX.1-schnell and DINOv2-large shapes, synthetic
#      CharXiv-shaped charts.
#   D  item 3: geometry3k (3B LoRA), area (7B, KL reference), img2code (Qwen3-VL-8B LoRA + sandbox).
#   E  item 5: the training pass with Liger's kernels against without.
#   F  item 4: the fast path's coverage: rollout_lora (LoRA through merged sampling copies vs the
#      module step vs HF generate, q,v and q,v,o adapters), rollout_lengths (EOS at lengths drawn
#      like a policy's: compaction vs none vs HF generate), rollout_fsdp2 (7B sharded on a 1-rank
#      group: weights gathered once per rollout vs HF generate's per-token all-gathers).
#      CPU dry run (timings there are noise; decode_rows_frac and the agreement checks are not):
#      python bench/bench_step.py --tiny --out /tmp/fp --sections rollout_lora,rollout_lengths \
#          --lora --eos-lengths --no-seed-a --group 8 --max-new 24
#
# Dry run of C and D on a CPU (tiny widths, the repo's venv, no wheels), to check the plan before a
# device is spent on it:   TINY=1 PYTHON=.venv/bin/python OUT=/tmp/gs-out bash bench/gpu_session.sh C
set -uo pipefail
STEP=${1:?usage: bash bench/gpu_session.sh wheels|A|B|C|D|E|F}
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
OUT=${OUT:-/tmp/gpu_session_out}
M=/tmp/gs/models D=/tmp/gs/data

PY=${PYTHON:-python3}
TINYF="" TSET=()
if [ -n "${TINY:-}" ]; then
    TINYF=--tiny
    TSET=(--set rollout.max_new_tokens=8 --set rollout.group_size=2 --set train.device=cpu --set train.threads=1)
fi
setup() {  # on the device machine: carried wheels first on the path, then the repo's src
    if [ -n "${TINY:-}" ]; then export PYTHONPATH=$PWD/src:$PWD/bench; mkdir -p "$OUT"; return; fi
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site:$PWD/src:$PWD/bench
    mkdir -p "$OUT"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
    python3 -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__, torch.cuda.get_device_name(0))'
}
G="$PY bench/gpu_session.py"
T=/tmp/gs/train  # run folders stay on the machine; `collect` puts 3 small files in $OUT
train() {  # recipe, policy, steps, seconds: a failed or slow recipe does not stop the next one
    local small=()
    [ -n "${TINY:-}" ] && [[ $1 == *charxiv* ]] && small=(--set 'rewards[0].kwargs.generator_kwargs.height=64'
        --set 'rewards[0].kwargs.generator_kwargs.width=64')
    timeout "$4" $G train --recipe "$1" --policy "$2" --models $M --data $D --steps "$3" --out $T \
        --set train.max_time_s=$(( $4 - 40 )) "${TSET[@]}" "${small[@]}" || echo "train $1: exit $?"
    $G collect $T --out $OUT
}

case $STEP in
wheels)  # here, not on the device machine
    exclude=$(git rev-parse --git-path info/exclude)
    grep -qx '/.whl/' "$exclude" 2>/dev/null || echo /.whl/ >> "$exclude"
    mkdir -p .whl
    for s in trl==1.13.0 datasets==5.0.1 dill==0.4.1 multiprocess==0.70.19 diffusers==0.42.1 liger-kernel==0.8.5; do
        python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
            --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
            -d .whl "$s" || exit 1
    done
    cp ../shared/anchors/trl_anchor.py .whl/
    du -sh .whl ;;
A)
    setup
    $G ceiling --out $OUT/ceiling.json
    python3 bench/bench_step.py --out $OUT/step --models 3b --reps 3 --compile --no-seed-a --profile \
        --sections rollout_fast,rollout_fast_compiled,rollout_hf,train,step \
        --trl .whl/trl_anchor.py --trl-steps 3 --trl-args=--no-gc --time-budget 540 2>&1 | tee $OUT/step.log ;;
B)
    setup
    export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
    python3 bench/bench_reward.py --out $OUT/reward --sections gen_512,gen_1024 --reps 3 --no-compile \
        --time-budget 540 2>&1 | tee $OUT/reward.log ;;
C)
    setup
    export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
    $G data --out $D > /dev/null && $G build-policy --shape 3b --out $M/q3b $TINYF \
        && $G build-flux --out $M/flux $TINYF && $G build-dinov2 --out $M/dino $TINYF || exit 1
    train cycle-charxiv-local $M/q3b 5 260
    train adversarial-charxiv $M/q3b 6 200
    rm -rf $M/flux ;;  # 33 GB of the 64 GB disk: room for D's 7B and 8B
D)
    setup
    [ -d $D ] || $G data --out $D > /dev/null
    [ -d $M/q3b ] || $G build-policy --shape 3b --out $M/q3b $TINYF
    train geometry3k $M/q3b 5 170
    $G build-policy --shape 7b --out $M/q7b $TINYF && train area $M/q7b 5 190 && rm -rf $M/q7b
    $G build-policy --shape qwen3vl-8b --out $M/q3vl8b $TINYF && train img2code $M/q3vl8b 4 190 ;;
E)  # item 5: the training pass with Liger's kernels against without, one process each
    setup
    for v in plain liger; do
        python3 bench/bench_step.py --out $OUT/$v --models 3b --reps 3 --no-seed-a --sections rollout_fast,train \
            $([ $v = liger ] && echo --liger) --time-budget 120 > $OUT/$v.log 2>&1
    done
    rm -f $OUT/*/bench.md ;;  # at most 8 files come back; bench.json holds everything
F)  # item 4: the fast path's coverage (LoRA, realistic lengths, FSDP2), ~9 min
    setup
    # rollout_lora: geometry3k's adapters (q,v), then img2code's (q,v,o), 3B widths, 64 rows x 256
    # tokens: HF generate (unmerged) vs the module step vs merged sampling copies (+ compiled);
    # rollout_lengths: EOS at lognormal lengths (median 0.3 x 256, sigma 0.6), compaction vs none
    # vs HF generate; rollout_fast for the baseline of the same run
    python3 bench/bench_step.py --out $OUT/fast --models 3b --reps 3 --compile --no-seed-a --lora --eos-lengths \
        --lora-targets q_proj,v_proj --sections rollout_fast,rollout_lora,rollout_lengths \
        --time-budget 230 > $OUT/fast.log 2>&1
    python3 bench/bench_step.py --out $OUT/fast_qvo --models 3b --reps 3 --compile --no-seed-a --lora \
        --lora-targets q_proj,v_proj,o_proj --sections rollout_lora --time-budget 110 >> $OUT/fast.log 2>&1
    # rollout_fsdp2 on 7B (untied: dist.wrap cannot shard 3B's tied embedding/LM head yet), 1-rank
    # group: HF generate with synced_gpus vs the engine with the weights gathered once per rollout
    python3 bench/bench_step.py --out $OUT/fsdp2 --models 7b --hf-models 7b --reps 3 --no-seed-a --fsdp2 \
        --sections rollout_fsdp2 --time-budget 200 >> $OUT/fast.log 2>&1
    rm -f $OUT/*/bench.md ;;
A2)  # A in a shorter lease (session 5: 30 device minutes for A2, T and F2): TRL first
    setup
    $G ceiling --out $OUT/ceiling.json
    python3 bench/bench_step.py --out $OUT/step --models 3b --reps 3 --compile --no-seed-a --profile \
        --sections rollout_fast,rollout_fast_compiled,rollout_hf,train,step --trl-first \
        --trl .whl/trl_anchor.py --trl-steps 3 --trl-args=--no-gc --time-budget 450 2>&1 | tee $OUT/step.log ;;
T)  # item 3 in one call: geometry3k, area, img2code, then cycle-charxiv-local (C and D, fewer steps)
    setup
    export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
    $G data --out $D > /dev/null && $G build-policy --shape 3b --out $M/q3b $TINYF || exit 1
    train geometry3k $M/q3b 4 100
    $G build-policy --shape 7b --out $M/q7b $TINYF && train area $M/q7b 4 100; rm -rf $M/q7b
    $G build-policy --shape qwen3vl-8b --out $M/q3vl8b $TINYF && train img2code $M/q3vl8b 3 270; rm -rf $M/q3vl8b
    $G build-flux --out $M/flux $TINYF && $G build-dinov2 --out $M/dino $TINYF \
        && train cycle-charxiv-local $M/q3b 4 270 ;;
F2)  # item 4 in a shorter lease: LoRA (q,v) and lengths on 3B, then FSDP2 on 7B
    setup
    python3 bench/bench_step.py --out $OUT/fast --models 3b --reps 3 --compile --no-seed-a --lora --eos-lengths \
        --lora-targets q_proj,v_proj --sections rollout_fast,rollout_lora,rollout_lengths \
        --time-budget 170 > $OUT/fast.log 2>&1
    python3 bench/bench_step.py --out $OUT/fsdp2 --models 7b --hf-models 7b --reps 3 --no-seed-a --fsdp2 \
        --sections rollout_fsdp2 --time-budget 140 >> $OUT/fast.log 2>&1
    rm -f $OUT/*/bench.md ;;
G)  # item 5's levers, from the 2026-12-05 profile (host-bound pass): token budget x Liger, one
    # process per cell, the training pass only (~8 min; results/h200-2026-12-05-A2 is the baseline)
    setup
    for b in 4096 16384; do for v in plain liger; do
        python3 bench/bench_step.py --out $OUT/b$b-$v --models 3b --reps 3 --no-seed-a --sections rollout_fast,train \
            --token-budget $b $([ $v = liger ] && echo --liger) --time-budget 110 > $OUT/b$b-$v.log 2>&1
    done; done
    rm -f $OUT/*/bench.md; tail -n 5 $OUT/*.log ;;  # 4 bench.json files and their 4 logs
C2)  # adversarial-charxiv alone (C's second recipe; session 5 ran only C's first, cycle-charxiv-local)
    setup
    export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
    $G data --out $D > /dev/null && $G build-policy --shape 3b --out $M/q3b $TINYF \
        && $G build-flux --out $M/flux $TINYF && $G build-dinov2 --out $M/dino $TINYF || exit 1
    train adversarial-charxiv $M/q3b 5 330 ;;
BQ)  # B (FLUX stock vs ours, 512 px then 1024 px) and F's q,v,o LoRA variant, in one call (~9 min)
    setup
    export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
    python3 bench/bench_reward.py --out $OUT/reward --sections gen_512,gen_1024 --reps 3 --no-compile \
        --time-budget 330 > $OUT/reward.log 2>&1
    python3 bench/bench_step.py --out $OUT/fast_qvo --models 3b --reps 3 --compile --no-seed-a --lora \
        --lora-targets q_proj,v_proj,o_proj --sections rollout_fast,rollout_lora --time-budget 150 > $OUT/fast_qvo.log 2>&1
    rm -f $OUT/*/bench.md; tail -n 8 $OUT/*.log ;;
G2)  # G's Liger cells again after the engine fix (Liger's MLP has no act_fn: the engine failed to build)
    setup
    for b in 4096 16384; do
        python3 bench/bench_step.py --out $OUT/b$b-liger --models 3b --reps 3 --no-seed-a --sections rollout_fast,train \
            --token-budget $b --liger --time-budget 110 > $OUT/b$b-liger.log 2>&1
    done
    rm -f $OUT/*/bench.md; tail -n 5 $OUT/*.log ;;
*) echo "unknown step $STEP"; exit 2 ;;
esac
