"""Text-to-image through Replicate's HTTP prediction API (seed A's generator).

Per prompt: create a prediction (`POST {base_url}/v1/models/{model}/predictions`, or
`POST {base_url}/v1/predictions` with a `version`), with `Prefer: wait=N` so that a fast model
answers in the same request; poll `urls.get` until the status is final (`succeeded`, `failed`,
`canceled` or `aborted`, the four Replicate's OpenAPI schema lists); fetch the output URL (or
decode a `data:` URI). The input is seed A's: the whole description as the prompt, 4 steps, 1
megapixel, 1:1, webp quality 80, go_fast, and the sample's
seed (`input` overrides any of these).

Reliability, which a 1000-step run needs (8 x 4 predictions per step):
- all prompts of a call run concurrently, at most `concurrency` at a time (httpx.AsyncClient +
  asyncio.Semaphore); every HTTP request has a timeout (`request_timeout`, plus the wait time for
  the create request);
- 429, 5xx, network errors and timeouts are retried up to `max_tries` times per request with
  exponential backoff (`backoff_base` x 2^n capped at `backoff_cap`, half of it jittered), never
  sooner than the server's `Retry-After`;
- a circuit breaker (`vlmgrpo.http.CircuitBreaker`, one per generator) pauses every request after
  `breaker_threshold` failures in a row instead of spinning through the retries, probes the
  service after a cool-down (`breaker_cooldown_s`, default `backoff_base`, doubling up to
  `backoff_cap`), and raises a `ServiceError` ("service replicate down for N s; stopping") once
  nothing has succeeded for `max_down_s`: the trainer checkpoints and stops;
- a prediction that ends `failed`/`canceled`/`aborted`, or polls past `max_poll_s`, is re-created up to
  `retry_failed` times; a prompt whose retries are exhausted gives `None` (its sample is skipped)
  and is counted in `failures`. Only a rejected token (401/403) and a service down past
  `max_down_s` raise a `ServiceError`: nothing would succeed.

The token is read from the environment (`REPLICATE_API_TOKEN`) when the generator is built; it is
sent only to `base_url`'s host, never to the host serving the output files.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import logging
import os
import random
import time
from typing import Any
from urllib.parse import urlsplit

from PIL import Image

from vlmgrpo.data.images import load_image
from vlmgrpo.errors import ConfigError, DataError, ServiceError
from vlmgrpo.http import CircuitBreaker, backoff_delay, parse_retry_after

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://api.replicate.com"
DEFAULT_MODEL = "black-forest-labs/flux-schnell"
DEFAULT_INPUT: dict[str, Any] = {
    "num_inference_steps": 4,
    "megapixels": "1",
    "aspect_ratio": "1:1",
    "output_format": "webp",
    "output_quality": 80,
    "go_fast": True,
}
TOKEN_URL = "https://replicate.com/account/api-tokens"
RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}
# the schema's final states; "aborted": ended before it started (e.g. past its Cancel-After deadline)
TERMINAL = {"succeeded", "failed", "canceled", "aborted"}


class _Retryable(Exception):
    """A failed request worth another try; `retry_after` is the server's hint in seconds."""

    def __init__(self, what: str, retry_after: float | None = None) -> None:
        super().__init__(what)
        self.retry_after = retry_after


class ReplicateGenerator:
    """Replicate predictions behind the generator interface; see the module docstring."""

    name = "replicate"

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        version: str = "",
        input: dict[str, Any] | None = None,
        base_url: str = DEFAULT_BASE_URL,
        token_env: str = "REPLICATE_API_TOKEN",
        concurrency: int = 8,
        request_timeout: float = 60.0,
        wait: int = 60,
        poll_interval: float = 0.5,
        max_poll_s: float = 300.0,
        max_tries: int = 10,
        backoff_base: float = 2.0,
        backoff_cap: float = 60.0,
        max_retry_after: float = 300.0,
        retry_failed: int = 1,
        size: int = 1024,
        breaker_threshold: int = 5,
        breaker_cooldown_s: float | None = None,
        max_down_s: float = 1800.0,
    ) -> None:
        token = os.environ.get(token_env, "").strip()
        if not token:
            raise ConfigError(f"{token_env} is not set; get a token at {TOKEN_URL}")
        if concurrency < 1 or max_tries < 1:
            raise ConfigError("generator_kwargs: concurrency and max_tries must be at least 1")
        self._token = token
        self.model = model
        self.version = version
        self.input = {**DEFAULT_INPUT, **(input or {})}
        self.base_url = base_url.rstrip("/")
        self.concurrency = int(concurrency)
        self.request_timeout = float(request_timeout)
        self.wait = int(wait)
        self.poll_interval = float(poll_interval)
        self.max_poll_s = float(max_poll_s)
        self.max_tries = int(max_tries)
        self.backoff_base = float(backoff_base)
        self.backoff_cap = float(backoff_cap)
        self.max_retry_after = float(max_retry_after)
        self.retry_failed = int(retry_failed)
        self.size = int(size)  # nominal output side (1 megapixel, 1:1), for interface parity
        self.failures = 0  # prompts that gave None
        self.retries = 0  # requests retried (429, 5xx, network, timeout)
        self._rng = random.Random()
        self.breaker = CircuitBreaker(
            "replicate",
            failure_threshold=breaker_threshold,
            cooldown_s=self.backoff_base if breaker_cooldown_s is None else breaker_cooldown_s,
            max_cooldown_s=self.backoff_cap,
            max_down_s=max_down_s,
            probe_timeout_s=self.request_timeout + self.wait + 1.0,
        )

    # ------------------------------------------------------------------ public interface
    def generate(self, prompts: list[str], seeds: list[int] | None = None) -> list[Image.Image | None]:
        """One image per prompt (None where it failed past its retries), in order."""
        coro = self.agenerate(prompts, seeds)
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(coro)
        # called from inside an event loop (an async reward): run on a loop of our own
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            return pool.submit(asyncio.run, coro).result()

    async def agenerate(self, prompts: list[str], seeds: list[int] | None = None) -> list[Image.Image | None]:
        """`generate` for callers that are already async."""
        import httpx

        if seeds is not None and len(seeds) != len(prompts):
            raise ValueError(f"{len(seeds)} seeds for {len(prompts)} prompts")
        sem = asyncio.Semaphore(self.concurrency)
        limits = httpx.Limits(max_connections=self.concurrency, max_keepalive_connections=self.concurrency)
        async with httpx.AsyncClient(timeout=self.request_timeout, limits=limits) as client:
            tasks = [
                asyncio.ensure_future(self._prompt(client, sem, p, None if seeds is None else int(seeds[i])))
                for i, p in enumerate(prompts)
            ]
            try:
                images = await asyncio.gather(*tasks)
            except BaseException:  # a rejected token: stop the other prompts before the client closes
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                raise
        self.failures += sum(im is None for im in images)
        return list(images)

    # ------------------------------------------------------------------ one prompt
    def _create_request(self, prompt: str, seed: int | None) -> tuple[str, dict[str, Any]]:
        inp = {"prompt": prompt, **self.input}
        if seed is not None:
            inp["seed"] = seed % 2**31  # Replicate seeds are 32-bit signed
        if self.version:
            return f"{self.base_url}/v1/predictions", {"version": self.version, "input": inp}
        return f"{self.base_url}/v1/models/{self.model}/predictions", {"input": inp}

    async def _prompt(
        self, client: Any, sem: asyncio.Semaphore, prompt: str, seed: int | None
    ) -> Image.Image | None:
        async with sem:
            for attempt in range(1 + self.retry_failed):
                try:
                    return await self._predict(client, prompt, seed)
                except ServiceError:
                    raise
                except Exception as e:  # _PredictionFailed, or a malformed answer: never crash the run
                    log.warning(
                        "replicate prediction %d/%d failed: %s", attempt + 1, 1 + self.retry_failed, e
                    )
            return None

    async def _predict(self, client: Any, prompt: str, seed: int | None) -> Image.Image:
        url, body = self._create_request(prompt, seed)
        headers = {"Content-Type": "application/json"}
        if self.wait > 0:
            headers["Prefer"] = f"wait={self.wait}"
        pred = await self._json(client, "POST", url, json=body, headers=headers, extra_timeout=self.wait)
        deadline = time.monotonic() + self.max_poll_s
        while pred.get("status") not in TERMINAL:
            get_url = (pred.get("urls") or {}).get("get")
            if not get_url:
                raise _PredictionFailed(f"prediction without urls.get (status {pred.get('status')!r})")
            if time.monotonic() > deadline:
                await self._cancel(client, pred)
                raise _PredictionFailed(f"still {pred.get('status')!r} after {self.max_poll_s:.0f} s")
            await asyncio.sleep(self.poll_interval)
            pred = await self._json(client, "GET", get_url)
        if pred["status"] != "succeeded":
            raise _PredictionFailed(f"status {pred['status']}: {str(pred.get('error') or '')[:200]}")
        output = pred.get("output")
        if isinstance(output, list):
            output = output[0] if output else None
        if not isinstance(output, str) or not output:
            raise _PredictionFailed(f"succeeded without an output URL ({str(output)[:100]})")
        data = await self._fetch(client, output)
        try:
            return load_image(data, name=output[:80])
        except DataError as e:
            raise _PredictionFailed(str(e)) from None

    async def _cancel(self, client: Any, pred: dict[str, Any]) -> None:
        url = (pred.get("urls") or {}).get("cancel")
        if url:
            try:  # best effort: the prediction is abandoned either way
                await client.post(url, headers=self._auth(url))
            except Exception as e:
                log.debug("cancel failed: %s", e)

    async def _fetch(self, client: Any, url: str) -> bytes:
        if url.startswith("data:"):
            _, _, payload = url.partition(",")
            try:
                return base64.b64decode(payload)
            except ValueError as e:
                raise _PredictionFailed(f"bad data URI: {e}") from None
        resp = await self._send(client, "GET", url)
        return resp.content

    # ------------------------------------------------------------------ HTTP with retries
    def _auth(self, url: str) -> dict[str, str]:
        same_host = urlsplit(url).netloc == urlsplit(self.base_url).netloc
        return {"Authorization": f"Bearer {self._token}"} if same_host else {}

    async def _json(self, client: Any, method: str, url: str, **kw: Any) -> dict[str, Any]:
        resp = await self._send(client, method, url, **kw)
        try:
            data = resp.json()
        except ValueError:
            raise _PredictionFailed(f"{method} {url}: response is not JSON") from None
        if not isinstance(data, dict):
            raise _PredictionFailed(f"{method} {url}: expected a JSON object")
        return data

    async def _send(
        self,
        client: Any,
        method: str,
        url: str,
        headers: dict[str, str] | None = None,
        extra_timeout: float = 0.0,
        **kw: Any,
    ) -> Any:
        """The response of one request, retried on 429/5xx/network errors/timeouts; raises
        `_PredictionFailed` past `max_tries` or on another 4xx, `ServiceError` on 401/403."""
        import httpx

        headers = {**(headers or {}), **self._auth(url)}
        timeout = httpx.Timeout(self.request_timeout + extra_timeout)
        last = ""
        for n in range(self.max_tries):
            retry_after = None
            await self.breaker.wait()  # paused while the service is failing; raises once it is given up
            try:
                resp = await client.request(method, url, headers=headers, timeout=timeout, **kw)
                if resp.status_code in (401, 403):
                    raise ServiceError(
                        f"Replicate rejected the token ({resp.status_code} on {urlsplit(url).path}); "
                        f"check REPLICATE_API_TOKEN (tokens: {TOKEN_URL})"
                    )
                if resp.status_code in RETRY_STATUS or resp.status_code >= 500:
                    raise _Retryable(
                        f"HTTP {resp.status_code}", parse_retry_after(resp.headers.get("retry-after"))
                    )
                self.breaker.success()  # it answered; another 4xx is this request's problem
                if resp.status_code >= 400:
                    raise _PredictionFailed(f"{method} {url}: HTTP {resp.status_code}: {resp.text[:200]}")
                return resp
            except _Retryable as e:
                last, retry_after = str(e), e.retry_after
            except httpx.TimeoutException:
                last = f"timed out after {self.request_timeout + extra_timeout:.1f} s"
            except httpx.RequestError as e:  # connection refused / reset, DNS, protocol, decoding errors
                last = f"{type(e).__name__}: {e}"
            self.breaker.failure(None if retry_after is None else min(retry_after, self.max_retry_after))
            if n + 1 < self.max_tries:
                self.retries += 1
                delay = self.backoff(n, retry_after)
                log.info("replicate %s %s: %s; retry %d in %.2f s", method, url, last, n + 1, delay)
                await asyncio.sleep(delay)
        raise _PredictionFailed(f"{method} {url}: {last} ({self.max_tries} tries)")

    def backoff(self, n: int, retry_after: float | None = None) -> float:
        """Seconds before try n + 2: base x 2^n capped, the upper half jittered; at least the
        server's Retry-After (itself capped at `max_retry_after`)."""
        return backoff_delay(
            n, self.backoff_base, self.backoff_cap, 0.5, retry_after, self.max_retry_after, self._rng
        )


class _PredictionFailed(Exception):
    """This attempt at a prompt failed (after the request-level retries)."""
