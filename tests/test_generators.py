"""Text-to-image generators: a tiny real FLUX pipeline through diffusers, and the Replicate client
against a local server speaking Replicate's prediction protocol (including 429/503 and a server
that never answers)."""

from __future__ import annotations

import time

import numpy as np
import pytest
from PIL import Image
from tiny_builders import ReplicateStub, tiny_model_dir

from vlmgrpo.errors import ConfigError, ModelLoadError, ServiceError
from vlmgrpo.imagegen import get_generator
from vlmgrpo.imagegen.replicate import ReplicateGenerator, parse_retry_after

FAST = dict(backoff_base=0.001, backoff_cap=0.01, poll_interval=0.01, wait=0)


@pytest.fixture(scope="module")
def flux_dir(tmp_path_factory):
    return tiny_model_dir("flux", tmp_path_factory)


@pytest.fixture
def token(monkeypatch):
    monkeypatch.setenv("REPLICATE_API_TOKEN", "r8_test_token")
    return "r8_test_token"


# --------------------------------------------------------------------------- diffusers


def _gen(flux_dir, **kw):
    from vlmgrpo.imagegen.diffusers_gen import DiffusersGenerator

    # a short T5 prompt length keeps the tiny pipeline fast; the default (schnell's 256) is tested above
    return DiffusersGenerator(
        model=str(flux_dir), height=64, width=64, device="cpu", max_sequence_length=32, **kw
    )


def test_diffusers_generates_one_image_per_prompt(flux_dir):
    gen = get_generator("diffusers", {"model": str(flux_dir), "height": 64, "width": 64, "batch_size": 2})
    assert gen.num_inference_steps == 4 and gen.guidance_scale == 0.0  # schnell defaults
    images = gen.generate(["a red bar chart", "a blue line plot", "a scatter plot"], seeds=[1, 2, 3])
    assert len(images) == 3
    assert all(isinstance(im, Image.Image) and im.size == (64, 64) and im.mode == "RGB" for im in images)
    assert gen.failures == 0


def test_diffusers_seeds_are_per_sample_and_batch_independent(flux_dir):
    gen = _gen(flux_dir, batch_size=3)
    prompts = ["a red bar chart", "a red bar chart", "a blue line plot"]
    a = [np.asarray(im, dtype=int) for im in gen.generate(prompts, seeds=[7, 8, 7])]
    b = [np.asarray(im, dtype=int) for im in _gen(flux_dir, batch_size=1).generate(prompts, seeds=[7, 8, 7])]
    assert np.abs(a[0] - a[1]).max() > 10  # same prompt, other seed: other image
    for x, y in zip(a, b):  # the batch a prompt lands in changes nothing but float rounding
        assert np.abs(x - y).max() <= 2
    again = np.asarray(gen.generate(["a red bar chart"], seeds=[7])[0], dtype=int)
    assert np.abs(again - a[0]).max() <= 2


def test_diffusers_failed_batch_retries_per_prompt(flux_dir):
    gen = _gen(flux_dir, batch_size=4)
    real = gen._call

    def flaky(prompts, seeds):
        if any("boom" in p for p in prompts):
            raise RuntimeError("CUDA out of memory (simulated)")
        return real(prompts, seeds)

    gen._call = flaky
    images = gen.generate(["a chart", "boom", "a plot"], seeds=[1, 2, 3])
    assert images[1] is None and images[0] is not None and images[2] is not None
    assert gen.failures == 1


def test_diffusers_missing_weights_folder_is_one_line(tmp_path):
    from vlmgrpo.imagegen.diffusers_gen import DiffusersGenerator

    missing = tmp_path / "weights" / "flux-schnell"
    with pytest.raises(ModelLoadError) as e:
        DiffusersGenerator(model=str(missing))
    msg = str(e.value)
    assert "\n" not in msg and str(missing) in msg
    assert "hf download black-forest-labs/FLUX.1-schnell" in msg


def test_diffusers_uncached_hub_id_is_one_line():
    from vlmgrpo.imagegen.diffusers_gen import DiffusersGenerator

    with pytest.raises(ModelLoadError) as e:  # HF_HUB_OFFLINE=1 (conftest): nothing to download from
        DiffusersGenerator(model="black-forest-labs/FLUX.1-schnell", device="cpu")
    assert "\n" not in str(e.value) and "hf download black-forest-labs/FLUX.1-schnell" in str(e.value)


# --------------------------------------------------------------------------- replicate


def test_replicate_missing_token_is_one_line(monkeypatch):
    monkeypatch.delenv("REPLICATE_API_TOKEN", raising=False)
    with pytest.raises(ConfigError) as e:
        ReplicateGenerator()
    assert str(e.value) == (
        "REPLICATE_API_TOKEN is not set; get a token at https://replicate.com/account/api-tokens"
    )


def test_replicate_speaks_the_prediction_protocol(token):
    with ReplicateStub(polls_before_done=2) as stub:
        gen = ReplicateGenerator(base_url=stub.url, **FAST)
        images = gen.generate(["a red bar chart", "a blue line plot"], seeds=[11, 12])
    assert [im.size for im in images] == [(64, 64), (64, 64)] and gen.failures == 0
    creates = stub.creates()
    assert len(creates) == 2
    method, path, headers, body, _ = creates[0]
    assert path == "/v1/models/black-forest-labs/flux-schnell/predictions"
    assert headers["Authorization"] == f"Bearer {token}"
    by_prompt = {c[3]["input"]["prompt"]: c[3]["input"] for c in creates}
    assert by_prompt["a red bar chart"] == {
        "prompt": "a red bar chart",
        "num_inference_steps": 4,
        "megapixels": "1",
        "aspect_ratio": "1:1",
        "output_format": "webp",
        "output_quality": 80,
        "go_fast": True,
        "seed": 11,
    }
    polls = [r for r in stub.requests if r[0] == "GET" and r[1].startswith("/v1/predictions/")]
    assert len(polls) == 2 * 3  # processing, processing, succeeded
    files = [r for r in stub.requests if r[1].startswith("/files/")]
    assert len(files) == 2


def test_replicate_prefer_wait_answers_in_one_request(token):
    with ReplicateStub(honour_wait=True) as stub:
        gen = ReplicateGenerator(base_url=stub.url, **{**FAST, "wait": 30})
        assert gen.generate(["a chart"], seeds=[1])[0] is not None
    assert stub.creates()[0][2]["Prefer"] == "wait=30"
    assert not [r for r in stub.requests if r[1].startswith("/v1/predictions/")]  # no polling needed


def test_replicate_retries_429_and_503_honouring_retry_after(token):
    with ReplicateStub(fail_codes=(429, 503), retry_after="0.25") as stub:
        gen = ReplicateGenerator(base_url=stub.url, concurrency=1, **FAST)
        images = gen.generate(["a chart"], seeds=[3])
    assert images[0] is not None and gen.failures == 0 and gen.retries == 2
    times = [c[4] for c in stub.creates()]
    assert len(times) == 3
    assert times[1] - times[0] >= 0.24 and times[2] - times[1] >= 0.24  # waited as the server asked


def test_replicate_server_that_never_answers_gives_none(token):
    with ReplicateStub(hang=True) as stub:
        gen = ReplicateGenerator(base_url=stub.url, request_timeout=0.2, max_tries=2, retry_failed=0, **FAST)
        t0 = time.monotonic()
        images = gen.generate(["a chart", "a plot"], seeds=[1, 2])
        elapsed = time.monotonic() - t0
    assert images == [None, None] and gen.failures == 2
    # at most 2 prompts x 2 tries (fewer if a request timed out before the busy server logged it)
    assert 1 <= len(stub.creates()) <= 4
    assert elapsed < 25  # back before the stub's 30 s hang ends: the client's own timeouts fired


def test_replicate_exhausted_retries_skip_the_prompt(token):
    with ReplicateStub(fail_codes=(503,) * 50) as stub:
        gen = ReplicateGenerator(base_url=stub.url, max_tries=3, retry_failed=0, **FAST)
        assert gen.generate(["a chart"], seeds=[1]) == [None]
    assert gen.failures == 1 and len(stub.creates()) == 3


def test_replicate_failed_prediction_is_recreated_then_skipped(token):
    with ReplicateStub(fail_status="failed") as stub:
        gen = ReplicateGenerator(base_url=stub.url, retry_failed=1, **FAST)
        assert gen.generate(["a chart"], seeds=[1]) == [None]
    assert len(stub.creates()) == 2 and gen.failures == 1


def test_replicate_rejected_token_raises(token):
    with ReplicateStub(fail_codes=(401,)) as stub:
        gen = ReplicateGenerator(base_url=stub.url, **FAST)
        with pytest.raises(ServiceError, match="REPLICATE_API_TOKEN"):
            gen.generate(["a chart"])


def test_replicate_concurrency_is_limited(token):
    import asyncio

    gen = ReplicateGenerator(concurrency=3)
    active = peak = 0

    async def fake_predict(client, prompt, seed):
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        await asyncio.sleep(0.02)
        active -= 1
        return Image.new("RGB", (8, 8))

    gen._predict = fake_predict
    assert len(gen.generate([f"p{i}" for i in range(10)])) == 10
    assert peak == 3


def test_replicate_backoff_schedule(token):
    gen = ReplicateGenerator()  # the seed's 2 s x 2^n capped at 60 s
    for n, full in [(0, 2.0), (1, 4.0), (4, 32.0), (5, 60.0), (9, 60.0)]:
        d = gen.backoff(n)
        assert full / 2 <= d <= full
    assert gen.backoff(0, retry_after=7.0) >= 7.0
    assert gen.backoff(0, retry_after=1e6) <= gen.max_retry_after
    assert parse_retry_after("3") == 3.0 and parse_retry_after(None) is None
    assert 0 <= parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") <= 1  # a date in the past: now


def test_replicate_token_goes_only_to_the_api_host(token):
    gen = ReplicateGenerator(base_url="https://api.replicate.com")
    assert gen._auth("https://api.replicate.com/v1/predictions/x") == {"Authorization": f"Bearer {token}"}
    assert gen._auth("https://replicate.delivery/xezq/out-0.webp") == {}


def test_replicate_data_uri_output(token):
    import asyncio
    import base64
    import io

    buf = io.BytesIO()
    Image.new("RGB", (5, 4), "red").save(buf, format="PNG")
    uri = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    data = asyncio.run(ReplicateGenerator()._fetch(None, uri))
    assert Image.open(io.BytesIO(data)).size == (5, 4)


def test_replicate_malformed_answer_skips_not_crashes(token):
    gen = ReplicateGenerator(retry_failed=0)

    async def broken(client, prompt, seed):
        raise KeyError("status")

    gen._predict = broken
    assert gen.generate(["a chart", "a plot"]) == [None, None] and gen.failures == 2


def test_replicate_generate_inside_an_event_loop(token):
    """An async reward may call the synchronous interface: it runs on a loop of its own."""
    import asyncio

    gen = ReplicateGenerator()

    async def fake_predict(client, prompt, seed):
        return Image.new("RGB", (4, 4))

    gen._predict = fake_predict

    async def reward():
        return gen.generate(["a chart"])

    assert asyncio.run(reward())[0].size == (4, 4)
