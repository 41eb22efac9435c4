"""rollout.seed_per_prompt's seeds (`sampling.prompt_seed`): distinct for every prompt of every
step, part and dynamic-sampling round, and the same whatever the world size."""

from __future__ import annotations

from vlmgrpo.sampling import prompt_seed


def test_seeds_never_repeat_across_steps_parts_and_rounds_of_a_large_batch():
    # 128 prompts x 8 accumulation parts x (1 + 3 dynamic rounds): the affine seed that this replaced,
    # (seed * 1_000_003 + step) * 1009 + part * prompts_per_step + index, gave step s's part 8 the
    # seeds of step s + 1's first prompts once part x prompts_per_step reached 1009
    prompts, parts = 128, 8 * 4
    seeds = [prompt_seed(7, step, k, i) for step in range(3) for k in range(parts) for i in range(prompts)]
    assert len(set(seeds)) == len(seeds)
    assert all(0 <= s < 2**63 for s in seeds)
    old = [
        ((7 * 1_000_003 + step) * 1009 + k * prompts + i) % 2**63
        for step in range(3)
        for k in range(parts)
        for i in range(prompts)
    ]
    assert len(set(old)) < len(old)  # what the test guards against


def test_a_prompt_keeps_its_seed_whatever_the_world_size():
    # rank r of a world of w holds the global indices r * n_local + i: the seed is a function of the
    # global index alone, so 1 and 4 processes sample the same prompt from the same seed
    one = [prompt_seed(3, 5, 1, i) for i in range(8)]
    four = [prompt_seed(3, 5, 1, r * 2 + i) for r in range(4) for i in range(2)]
    assert one == four
    assert prompt_seed(3, 5, 1, 0) != prompt_seed(4, 5, 1, 0)  # the run's seed matters
