"""Retries, backoff and a circuit breaker for remote services (the Replicate generator, the LLM judge).

Scope: the policy that decides *when* a client sends its next request; the clients themselves
(`imagegen/replicate.py`, `judges/llm.py`) own their HTTP calls, timeouts and what a reply means.
Not covered: rate limiting before the first failure (the clients cap concurrency instead), and
remembering a service's health across processes.

- `retry_delays(base, cap, tries, jitter)`: the waits between `tries` attempts, exponential
  (`base` x 2^n, capped at `cap`), with part of each wait drawn at random so that concurrent
  clients do not retry in lockstep. `backoff_delay` is one of those waits, never shorter than the
  server's `Retry-After` (`parse_retry_after`).
- `CircuitBreaker`: one per service and process. After `failure_threshold` failures in a row it
  opens: every request waits (instead of spinning through its retries) until a cool-down has
  passed, then one probe request goes (half-open); its success closes the breaker, its failure
  opens it again with a doubled cool-down (up to `max_cooldown_s`). Waiting does not use up a
  request's tries. When the service has answered nothing for `max_down_s`, the breaker raises
  `ServiceError("service X down for N s; stopping")` to every caller: the trainer then checkpoints
  and stops with that one line instead of skipping step after step.

The breaker sees requests, not prompts: when the only traffic left is one request that always
fails (every other prompt of the batch is done), it cannot tell that from a dead service. So
`max_down_s` (default 30 min) must exceed one request's whole retry schedule, about `max_tries` x
(request timeout + backoff cap); the clients' defaults keep it so.

What counts as a failure is the caller's choice; the clients here count timeouts, connection
errors and HTTP 408/429/5xx (the service did not answer). A reply that is a client error (400,
404) or whose content is bad (unparsable JSON, a corrupt image) means the service is up: they
report `success()` and handle the bad reply themselves. A `Retry-After` on a failure pauses every
caller of the breaker, not only the one that received it (rate limits are per account).

The breaker is thread-safe and loop-agnostic (a `threading.Lock`, no asyncio primitives), so one
instance serves successive `asyncio.run` calls and helper threads alike.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import random
import threading
import time
from collections.abc import Callable

from vlmgrpo.errors import ServiceError

log = logging.getLogger(__name__)

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half-open"


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date); None if absent or bad."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def backoff_delay(
    n: int,
    base: float,
    cap: float,
    jitter: float = 0.5,
    retry_after: float | None = None,
    max_retry_after: float = float("inf"),
    rng: random.Random | None = None,
) -> float:
    """Seconds to wait before attempt n + 2 (n = 0 after the first failure): d = min(cap, base x 2^n),
    of which the fraction `jitter` is random (d x (1 - jitter) + U(0, d x jitter)); never less than
    `retry_after` (itself capped at `max_retry_after`)."""
    d = min(cap, base * 2.0**n)
    d = d * (1.0 - jitter) + (rng or random).uniform(0.0, d * jitter)
    if retry_after is not None:
        d = max(d, min(retry_after, max_retry_after))
    return d


def retry_delays(
    base: float, cap: float, tries: int, jitter: float = 0.5, rng: random.Random | None = None
) -> list[float]:
    """The `tries - 1` waits between `tries` attempts (see `backoff_delay`)."""
    return [backoff_delay(n, base, cap, jitter, rng=rng) for n in range(max(0, tries - 1))]


class CircuitBreaker:
    """Closed / open / half-open gate in front of one remote service; see the module docstring.

    Use: `await breaker.wait()` (or `wait_sync()`) before each request, then `success()` or
    `failure(retry_after)` after it. `wait` returns at once while the breaker is closed.
    """

    def __init__(
        self,
        name: str,
        failure_threshold: int = 5,
        cooldown_s: float = 2.0,
        max_cooldown_s: float = 60.0,
        max_down_s: float = 1800.0,
        probe_timeout_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if failure_threshold < 1 or cooldown_s < 0 or max_down_s <= 0:
            raise ValueError("failure_threshold >= 1, cooldown_s >= 0 and max_down_s > 0 are required")
        self.name = name
        self.failure_threshold = int(failure_threshold)
        self.cooldown_s = float(cooldown_s)
        self.max_cooldown_s = max(float(max_cooldown_s), self.cooldown_s)
        self.max_down_s = float(max_down_s)
        # a probe that never reports (its task was cancelled) frees the slot after this long
        self.probe_timeout_s = float(probe_timeout_s)
        self.clock = clock
        self.state = CLOSED
        self.consecutive = 0  # failures since the last success
        self.opened = 0  # times the breaker opened (metrics, tests)
        self.waited_s = 0.0  # total time callers spent waiting on it
        self._lock = threading.Lock()
        self._cooldown = self.cooldown_s
        self._retry_at = 0.0  # open: when the next probe may go
        self._pause_until = 0.0  # Retry-After from the server
        self._probe_since: float | None = None
        self._down_since: float | None = None  # first failure after the last success
        self._last_failure: float | None = None
        self._dead = ""  # the ServiceError message once max_down_s has passed

    # ------------------------------------------------------------------ gate
    def wait_time(self) -> float:
        """0.0 if a request may go now (in half-open this caller becomes the probe), else the
        seconds to wait before asking again. Raises ServiceError once the service is given up."""
        with self._lock:
            if self._dead:
                raise ServiceError(self._dead)
            now = self.clock()
            wait = self._pause_until - now
            if self.state == OPEN:
                wait = max(wait, self._retry_at - now)
                if wait > 0:
                    return wait
                self.state = HALF_OPEN
                self._probe_since = None
            if self.state == HALF_OPEN:
                if self._probe_since is not None and now - self._probe_since < self.probe_timeout_s:
                    # a probe is out: poll for its outcome
                    return max(wait, min(max(self._cooldown, 0.01), 0.5))
                if wait > 0:
                    return wait
                self._probe_since = now
                return 0.0
            return max(0.0, wait)

    async def wait(self) -> float:
        """Wait (asyncio) until a request may go; the seconds waited."""
        waited = 0.0
        while (d := self.wait_time()) > 0:
            await asyncio.sleep(d)
            waited += d
        self._add_wait(waited)
        return waited

    def wait_sync(self) -> float:
        """`wait` for blocking clients."""
        waited = 0.0
        while (d := self.wait_time()) > 0:
            time.sleep(d)
            waited += d
        self._add_wait(waited)
        return waited

    def _add_wait(self, waited: float) -> None:
        if waited:
            with self._lock:
                self.waited_s += waited

    # ------------------------------------------------------------------ outcomes
    def success(self) -> None:
        """The service answered: close the breaker and forget the outage."""
        with self._lock:
            if self.state != CLOSED:
                log.warning("service %s answers again; resuming requests", self.name)
            self.state = CLOSED
            self.consecutive = 0
            self._cooldown = self.cooldown_s
            self._probe_since = None
            self._down_since = None

    def failure(self, retry_after: float | None = None) -> None:
        """The service did not answer (timeout, connection error, 408/429/5xx). `retry_after`
        (seconds, already capped by the caller) pauses every caller. Raises ServiceError when the
        service has now been down for more than `max_down_s`."""
        with self._lock:
            now = self.clock()
            # a failure long after the previous one (nobody asked in between) starts a new count:
            # an idle gap between two evaluations is not downtime
            idle_gap = self.max_cooldown_s + self.probe_timeout_s
            if self._down_since is None or (
                self._last_failure is not None and now - self._last_failure > idle_gap
            ):
                self._down_since = now
            self._last_failure = now
            self.consecutive += 1
            if retry_after:
                self._pause_until = max(self._pause_until, now + retry_after)
            if self.state == HALF_OPEN:  # the probe failed: open again, for longer
                self._cooldown = min(self._cooldown * 2, self.max_cooldown_s)
                self._open(now)
                log.info("service %s: probe failed; next try in %.1f s", self.name, self._cooldown)
            elif self.state == CLOSED and self.consecutive >= self.failure_threshold:
                self._cooldown = self.cooldown_s
                self._open(now)
                log.warning(
                    "service %s: %d failures in a row; pausing requests for %.1f s",
                    self.name,
                    self.consecutive,
                    self._cooldown,
                )
            down = now - self._down_since
            if down > self.max_down_s:
                self._dead = (
                    f"service {self.name} down for {down:.0f} s; stopping "
                    f"(nothing answered for longer than its max_down_s of {self.max_down_s:g} s)"
                )
                log.error("%s", self._dead)
                raise ServiceError(self._dead)

    def _open(self, now: float) -> None:
        self.state = OPEN
        self.opened += 1
        self._retry_at = now + self._cooldown
        self._probe_since = None

    @property
    def down_for(self) -> float:
        """Seconds since the first failure of the current outage (0 when the service is up)."""
        with self._lock:
            return 0.0 if self._down_since is None else self.clock() - self._down_since

    def reset(self) -> None:
        """Forget everything, including a given-up service (a new run in the same process)."""
        with self._lock:
            self.state, self.consecutive, self._cooldown = CLOSED, 0, self.cooldown_s
            self._retry_at = self._pause_until = 0.0
            self._probe_since = self._down_since = self._last_failure = None
            self._dead = ""


__all__ = [
    "CLOSED",
    "HALF_OPEN",
    "OPEN",
    "CircuitBreaker",
    "backoff_delay",
    "parse_retry_after",
    "retry_delays",
]
