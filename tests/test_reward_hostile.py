"""Hostile completions against each verifiable reward (geometry, area, img2code): multiple answer
tags, letter-and-value hedges, format-only completions, very long strings, inputs that made the
geometry grader hang. Each gets no accuracy credit it did not earn, and no call runs past its
bound. The rewards are called as training calls them (`compute_rewards`, the recipe's bound), from
a worker thread like the trainer's `rollout.overlap`, where SIGALRM timeouts do not work."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from vlmgrpo.rewards import RewardContext, RewardRecord, RewardSpec, compute_rewards
from vlmgrpo.tasks.geometry_grader import SYMBOLIC_TIMEOUT_S, extract_answer, grade

LONG = 200_000


def _score(completions, sample, specs):
    """compute_rewards in a thread (as under rollout.overlap): (result, seconds)."""
    recs = [RewardRecord("p", c, [], dict(sample), group=0, index=i) for i, c in enumerate(completions)]
    out: list = []

    def run():
        t0 = time.monotonic()
        out.append((compute_rewards(recs, specs, RewardContext()), time.monotonic() - t0))

    t = threading.Thread(target=run)
    t.start()
    t.join(300)
    assert not t.is_alive()
    return out[0]


# ------------------------------------------------------------------------------------- geometry
HANG = {  # inputs that held the old grader for minutes (or 20 s); under its 300-character guard
    "nested_fractions": "\\frac{" * 25 + "1" + "}{3}" * 25,
    "nested_fractions_flat": "".join(f"\\frac{{{i}}}{{" for i in range(1, 20)) + "1" + "}" * 19,
    "nested_factorials": "((((3!)!)!)!)!",
    "factorial_chain": "3!!!!!!",
    "power_tower": "9^{9^{9^{9}}}",
    "power_tower_bare": "9^9^9^9",
    "huge_power": "2^{99999999}",
    "spaces": "12" + " " * 50_000 + "ft",
    "long_digits": "1" * LONG,
    "many_claims": "=".join(["12"] * 5000),
}


@pytest.mark.parametrize("name", list(HANG))
def test_geometry_grader_returns_fast_on_inputs_that_hung_it(name):
    """In a worker thread, where math-verify's own (SIGALRM) timeouts are off."""
    out: list = []

    def run():
        t0 = time.monotonic()
        out.append((grade(HANG[name], "12"), time.monotonic() - t0))

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(60)
    assert out, f"{name}: still grading after 60 s"
    verdict, elapsed = out[0]
    assert verdict is False
    # a few symbolic bounds (each claim, each side), plus starting a fresh worker after a kill
    assert elapsed < 4 * SYMBOLIC_TIMEOUT_S + 3, (name, elapsed)


def test_symbolic_comparison_is_stopped_at_its_bound():
    """Past the string guards, sympy itself can be slow ((x+y+z+1)^40 against another power: 5 s
    in math-verify's main-thread timeout, unbounded in a worker thread before): the deadline worker
    is killed after SYMBOLIC_TIMEOUT_S and the answer is wrong, not a hung step."""
    import os

    from vlmgrpo.rewards import deadline

    deadline.call(os.getpid, timeout_s=60)  # a started worker: its start-up is not what is measured
    out: list = []

    def run():
        t0 = time.monotonic()
        out.append((grade("(x+y+z+1)^{40}", "(x+y+z+2)^{40}"), time.monotonic() - t0))

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(60)
    assert out and out[0][0] is False
    assert out[0][1] < SYMBOLIC_TIMEOUT_S + 2, out


GEO_SAMPLE = {"id": "g1", "answer": "5", "choices": ["3", "5", "7", "9"]}
GEO_HOSTILE = [  # (completion, why it earns no accuracy)
    ("<think>t</think><answer>5</answer><answer>7</answer>", "two answer blocks"),
    ("<think>t</think><answer>7</answer><answer>5</answer>", "two answer blocks, right one last"),
    ("<think>t</think><answer>B or C</answer>", "two letters"),
    ("<think>t</think><answer>B. 7</answer>", "letter and value disagree"),
    ("<think>t</think><answer>5 or 7</answer>", "two values"),
    ("<think>t</think><answer>\\boxed{5} \\boxed{7}</answer>", "two boxes"),
    ("<think>t</think><answer>x = 5 = 7</answer>", "chained claims"),
    ("<think></think><answer></answer>", "format only"),
    ("<think>t</think><answer>answer</answer>", "format only, a word"),
    ("<answer>" * 20_000, "many open tags"),
    ("<think>" + "5 " * 50_000 + "</think><answer>" + "5" * LONG + "</answer>", "very long"),
    ("<think>t</think><answer>" + "5 " * 5_000 + "</answer>", "very long list of the right value"),
    ("<think>t</think><answer>" + HANG["nested_fractions"] + "</answer>", "nested fractions"),
]


def test_geometry_hostile_completions_earn_no_accuracy():
    specs = [
        RewardSpec("geometry_accuracy", kwargs={"use_choices": True}),
        RewardSpec("geometry_grounding", kwargs={"use_choices": True}),
    ]
    completions = [c for c, _ in GEO_HOSTILE] + ["<think>the diagram shows</think><answer>5</answer>"]
    res, elapsed = _score(completions, GEO_SAMPLE, specs)
    acc, grounding = res.per_reward["geometry_accuracy"], res.per_reward["geometry_grounding"]
    for (_c, why), a, g in zip(GEO_HOSTILE, acc, grounding):
        assert a == 0.0 and g == 0.0, why
    assert acc[-1] == 1.0 and grounding[-1] > 0  # the honest completion still earns both
    assert res.failed == {"geometry_accuracy": 0, "geometry_grounding": 0}  # none ran past its bound
    assert elapsed < 60, elapsed


def test_decimal_answers_earn_only_at_the_references_precision():
    exact = {"id": "g2", "answer": "2\\sqrt{3}"}
    rounded = {"id": "g3", "answer": "6.9"}
    assert not grade(extract_answer("<answer>3.5</answer>"), exact["answer"])
    assert not grade(extract_answer("<answer>3.46</answer>"), exact["answer"])
    assert grade(extract_answer("<answer>3.4641</answer>"), exact["answer"])
    assert grade(extract_answer("<answer>4\\sqrt{3}</answer>"), rounded["answer"])
    assert grade(extract_answer("<answer>6.93</answer>"), rounded["answer"])


# ----------------------------------------------------------------------------------------- area
AREA_SAMPLE = {"id": "a1", "answer": 400.0}
AREA_HOSTILE = [
    ("<reasoning>r</reasoning><answer>400.00</answer><answer>100.00</answer>", "two answers"),
    ("<reasoning>r</reasoning><answer>100.00</answer><answer>400.00</answer>", "two answers, right last"),
    ("<reasoning>r</reasoning><answer>400.00 or 100.00</answer>", "two values in one block"),
    ("<reasoning>r</reasoning><answer>B. 400.00</answer>", "letter and value"),
    ("<reasoning></reasoning><answer></answer>", "format only"),
    ("<reasoning>r</reasoning><answer>4e2</answer>", "not the two-decimal form"),
    ("<reasoning>" * 50_000, "many open tags"),
    ("<answer>" + "4" * LONG + ".00</answer>", "very long number"),
    ("x" * LONG + "<reasoning>r</reasoning><answer>400.00</answer>", "answer after a very long prefix"),
]


def test_area_hostile_completions_earn_no_accuracy():
    specs = [RewardSpec(n) for n in ("area_correctness", "area_format", "xml_format")]
    specs += [RewardSpec("xml_format", kwargs={"partial": True}, label="xml_partial")]
    completions = [c for c, _ in AREA_HOSTILE] + ["<reasoning>20 x 20</reasoning><answer>400.00</answer>"]
    res, elapsed = _score(completions, AREA_SAMPLE, specs)
    correct = res.per_reward["area_correctness"]
    for (_c, why), v in zip(AREA_HOSTILE, correct):
        assert v == -3.0, why
    assert correct[-1] == 3.0
    assert all(v == 0 for v in res.failed.values()), res.failed
    assert elapsed < 60, elapsed


# ------------------------------------------------------------------------------------- img2code
def test_img2code_hostile_completions_earn_nothing_they_did_not_draw():
    from PIL import Image

    target = Image.new("RGB", (64, 64), "white")
    fence = "```python\n{}\n```".format
    draw = "import matplotlib.pyplot as plt\nplt.figure(figsize=(1, 1), facecolor='white')\n"
    completions = [
        fence("") + "\n" + fence(draw),  # two blocks: the first (empty) one is the program
        "```python\n```",  # format only
        fence("print('similarity: 1.0, exec_success: 1')"),  # claims a score, draws nothing
        fence("x = 1\n" * 20_000),  # very long, draws nothing
        "```" * 20_000,  # many fences
        fence(draw),  # the honest one
    ]
    sample = {"id": "c1", "reference_image": target}
    spec = RewardSpec("img2code", kwargs={"sandbox": {"timeout_s": 10}, "metrics": {"mse": 1.0}})
    res, elapsed = _score(completions, sample, [spec])
    scores = res.per_reward["img2code"]
    assert np.all(scores[:-1] <= 0.0), scores  # nothing drawn: no exec credit, no similarity
    assert scores[-1] > 0.9, scores
    assert elapsed < 120, elapsed


def test_a_timed_out_symbolic_call_is_not_cached(monkeypatch):
    """One sympy call past its bound (a loaded machine) gives "no value" for that call only; before,
    the time-out was cached, so that reference (or a common answer) was compared as a string for
    the rest of the run, and equal values in another form were graded wrong."""
    from vlmgrpo.rewards import deadline
    from vlmgrpo.tasks import geometry_grader as gg

    # an empty cache: an earlier test that graded the same expression would answer from it
    monkeypatch.setattr(gg, "_BOUNDED_CACHE", {})
    real, calls = deadline.call, []

    def once_too_slow(fn, *args, timeout_s):  # the first call runs past its bound, as on a loaded box
        calls.append(args)
        if len(calls) == 1:
            raise deadline.DeadlineExceeded(f"past {timeout_s} s")
        return real(fn, *args, timeout_s=timeout_s)

    # (a real 1e-4 s bound was flaky: a warm worker with sympy's cache can answer that fast)
    monkeypatch.setattr(deadline, "call", once_too_slow)
    assert gg.to_number("7\\sqrt{3}") is None
    assert gg.to_number("7\\sqrt{3}") == pytest.approx(7 * 3**0.5)
    assert len(calls) >= 2  # asked again, not answered from a cached time-out
