"""An LLM judge over any OpenAI-compatible chat-completions endpoint (default model `gpt-4.1`).

Each item is graded with the rules of its own CharXiv reasoning category (`inst_category` 1-4;
seed A always used category 1, a defect), restated here in our own words. The judge must answer
with a JSON object `{"extracted_answer": ..., "score": 0 | 1}` at temperature 0. The request is a
non-streaming chat completion with `response_format` `{"type": "json_object"}` (`json_mode`);
tests/test_judges.py checks it against the official `openai` SDK's request and response types.

Failure handling: timeouts, connection errors, HTTP 408/409/429/5xx and unparsable replies are
retried with exponential backoff and jitter (a `Retry-After` header is honoured, capped at
`max_backoff_s`); other HTTP errors (400, 401, 404: a configuration problem) are not retried.
An error's text is read from OpenAI's error body, `{"error": {"message", "type", "code"}}`, when
the server sends one. After the last failure the item gets `Verdict(score=-1, error=...)`
(ungraded): evaluation
excludes it from pass@k and counts it. A circuit breaker (`vlmgrpo.http.CircuitBreaker`) pauses all
requests after `breaker_threshold` failures in a row (timeouts, connection errors, 408/429/5xx)
and probes the endpoint after a cool-down (`backoff_s` doubling up to `max_backoff_s`) instead of
spending every item's attempts on a dead server. The one exception that escapes is a
`ServiceError` ("service llm-judge down for N s; stopping") once nothing has succeeded for
`max_down_s` (default 30 min).

Requests run concurrently (`httpx.AsyncClient`, at most `concurrency` in flight). Successful
verdicts are cached on disk under `cache_dir/<sha256 of the request body>.json`, so re-running an
evaluation costs nothing. The API key comes from `api_key` or the environment variable named by
`api_key_env` (default OPENAI_API_KEY) and is never written to the cache.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import re
import threading
from pathlib import Path
from typing import Any

from vlmgrpo.errors import ConfigError
from vlmgrpo.http import CircuitBreaker, backoff_delay, parse_retry_after
from vlmgrpo.judges import CATEGORIES, UNGRADED, JudgeItem, Verdict

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://api.openai.com/v1"
DEFAULT_MODEL = "gpt-4.1"
RETRY_STATUS = {408, 409, 429, 500, 502, 503, 504}

SYSTEM = (
    "You grade answers to questions about charts. You receive a question, the ground-truth answer "
    "and a model's response. First extract the final answer the response commits to, then decide "
    "whether it is correct under the grading rules given. Reply with a JSON object only: "
    '{"extracted_answer": "<the final answer, as written in the response>", "score": <1 or 0>}.'
)

_EXTRACT = (
    "Extraction: take the answer the response finally commits to, not intermediate reasoning. If "
    "the response gives no answer, several conflicting answers, or hedges between options, the "
    "extracted answer is what it says (or an empty string) and the score is 0."
)

RULES: dict[int, str] = {
    1: (
        "Category: the answer is text that appears in the chart (a label, legend entry, tick label, "
        "title or annotation). Score 1 when the extracted text names the same item as the ground "
        "truth, ignoring letter case, surrounding spaces, quotes and trivial formatting differences "
        "(e.g. LaTeX markup). A different item, an extra item, or a partial match that could also "
        "refer to another item scores 0. When the ground truth lists several items, all of them must "
        "be present, in any order, and nothing else."
    ),
    2: (
        "Category: the answer is a short piece of text that need not appear in the chart (a trend, "
        "a yes/no, a comparison, a qualitative property). Score 1 when the extracted answer means the "
        "same thing as the ground truth; wording may differ (e.g. 'rises' for 'increase'). If it "
        "contradicts the ground truth, only partly matches it, or adds a wrong claim, score 0."
    ),
    3: (
        "Category: the answer is a number read directly from the chart (a tick value, a data label, a "
        "coordinate). Compare numerically: formatting such as thousands separators, trailing zeros, "
        "scientific notation, units or a percent sign does not matter. The value must equal the ground "
        "truth at the ground truth's precision (if the ground truth is 0.35, then 0.35 and 0.350 are "
        "right, 0.3 and 0.4 are wrong). A range, or several numbers offered as alternatives, scores 0."
    ),
    4: (
        "Category: the answer is a number derived from the chart (a count, difference, ratio, sum or "
        "other computation). Compare numerically, ignoring formatting, units and a percent sign. The "
        "value must equal the ground truth once rounded to the ground truth's precision; an integer "
        "ground truth needs exactly that integer. A range or several alternative numbers scores 0."
    ),
}


def build_messages(item: JudgeItem) -> list[dict[str, str]]:
    """The chat request for one item: system instructions plus the category's rules."""
    cat = item.inst_category if item.inst_category in RULES else 1
    user = (
        f"Grading rules ({CATEGORIES[cat]}).\n{RULES[cat]}\n{_EXTRACT}\n\n"
        f"Question:\n{item.question}\n\nGround-truth answer:\n{item.answer}\n\n"
        f"Model response:\n{item.response}\n\n"
        'Reply with JSON only: {"extracted_answer": "...", "score": 0 or 1}'
    )
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]


def parse_reply(content: str) -> Verdict:
    """A Verdict from the judge's reply text; raises ValueError when it is not the JSON asked for."""
    text = content.strip()
    fence = re.search(r"```(?:json)?\s*(.*?)```", text, re.S)
    if fence:
        text = fence.group(1).strip()
    if not text.startswith("{"):
        m = re.search(r"\{.*\}", text, re.S)
        text = m.group(0) if m else text
    obj = json.loads(text)
    if not isinstance(obj, dict) or "score" not in obj:
        raise ValueError("reply has no 'score'")
    score = int(obj["score"]) if str(obj["score"]).strip() in ("0", "1") else None
    if score is None:
        raise ValueError(f"score {obj['score']!r} is not 0 or 1")
    return Verdict(score, str(obj.get("extracted_answer", "") or ""))


retry_after_s = parse_retry_after  # the name this module has exported


def api_error(status: int, body: str) -> str:
    """One line for an HTTP error: OpenAI's error body `{"error": {"message", "type", "code"}}`
    read when it is one ("HTTP 401 invalid_api_key: Incorrect API key provided ..."), else the
    start of the body."""
    try:
        err = json.loads(body).get("error")
    except (ValueError, AttributeError):
        err = None
    if isinstance(err, dict) and err.get("message"):
        code = err.get("code") or err.get("type")
        return f"HTTP {status}{f' {code}' if code else ''}: {' '.join(str(err['message']).split())[:200]}"
    if isinstance(err, str) and err:  # some compatible servers send {"error": "text"}
        return f"HTTP {status}: {err[:200]}"
    return f"HTTP {status}: {' '.join(body.split())[:200]}"


class _Retryable(Exception):
    def __init__(self, msg: str, wait: float | None = None) -> None:
        super().__init__(msg)
        self.wait = wait


class LLMJudge:
    """CharXiv-style grading through an OpenAI-compatible endpoint; see the module docstring."""

    name = "llm"

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        base_url: str = "",
        api_key: str = "",
        api_key_env: str = "OPENAI_API_KEY",
        cache_dir: str | Path | None = None,
        concurrency: int = 8,
        timeout_s: float = 60.0,
        max_attempts: int = 5,
        backoff_s: float = 2.0,
        max_backoff_s: float = 60.0,
        json_mode: bool = True,
        breaker_threshold: int = 5,
        max_down_s: float = 1800.0,
    ) -> None:
        self.model = model
        self.base_url = (base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")
        self.api_key = api_key or os.environ.get(api_key_env, "")
        if not self.api_key and self.base_url == DEFAULT_BASE_URL:
            raise ConfigError(
                f"llm judge: no API key; set {api_key_env}, or give --judge-base-url for a local "
                "OpenAI-compatible server"
            )
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.concurrency = max(1, concurrency)
        self.timeout_s = timeout_s
        self.max_attempts = max(1, max_attempts)
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.json_mode = json_mode
        self.stats = {"requests": 0, "cache_hits": 0, "retries": 0, "ungraded": 0}
        self.breaker = CircuitBreaker(
            "llm-judge",
            failure_threshold=breaker_threshold,
            cooldown_s=backoff_s,
            max_cooldown_s=max_backoff_s,
            max_down_s=max_down_s,
            probe_timeout_s=timeout_s + 1.0,
        )

    # ------------------------------------------------------------------ cache
    def request_body(self, item: JudgeItem) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.model, "messages": build_messages(item), "temperature": 0}
        if self.json_mode:
            body["response_format"] = {"type": "json_object"}
        return body

    def _cache_path(self, body: dict[str, Any]) -> Path | None:
        if self.cache_dir is None:
            return None
        key = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
        return self.cache_dir / f"{key}.json"

    def _cached(self, path: Path | None) -> Verdict | None:
        if path is None or not path.is_file():
            return None
        try:
            v = json.loads(path.read_text())["verdict"]
            return Verdict(int(v["score"]), str(v.get("extracted_answer", "")))
        except (OSError, ValueError, KeyError, TypeError):
            return None  # a torn cache file: ask again

    def _store(self, path: Path | None, body: dict[str, Any], content: str, verdict: Verdict) -> None:
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}-{threading.get_ident()}")
        record = {
            "request": body,
            "reply": content,
            "verdict": {"score": verdict.score, "extracted_answer": verdict.extracted_answer},
        }
        tmp.write_text(json.dumps(record, indent=1))
        tmp.replace(path)

    # ------------------------------------------------------------------ requests
    def _delay(self, attempt: int, wait: float | None) -> float:
        if wait is not None:
            return min(wait, self.max_backoff_s)
        # the upper half jittered: concurrent retries do not stampede
        return backoff_delay(attempt, self.backoff_s, self.max_backoff_s)

    async def _ask(self, client: Any, body: dict[str, Any]) -> tuple[str, Verdict]:
        """One request: the reply text and its verdict; raises _Retryable or RuntimeError."""
        import httpx

        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        self.stats["requests"] += 1
        await self.breaker.wait()  # paused while the endpoint is failing; raises once given up
        try:
            r = await client.post(f"{self.base_url}/chat/completions", json=body, headers=headers)
        except httpx.TimeoutException:
            self.breaker.failure()
            raise _Retryable(f"timed out after {self.timeout_s:g} s") from None
        except httpx.TransportError as e:
            self.breaker.failure()
            raise _Retryable(f"connection failed: {type(e).__name__}: {e}") from None
        if r.status_code in RETRY_STATUS:
            wait = parse_retry_after(r.headers.get("retry-after"))
            self.breaker.failure(None if wait is None else min(wait, self.max_backoff_s))
            raise _Retryable(api_error(r.status_code, r.text), wait)
        self.breaker.success()  # it answered: a 4xx or a bad reply is this request's problem
        if r.status_code >= 400:
            raise RuntimeError(api_error(r.status_code, r.text))
        try:
            content = r.json()["choices"][0]["message"]["content"] or ""
            return content, parse_reply(content)
        except (ValueError, KeyError, IndexError, TypeError) as e:
            raise _Retryable(f"unparsable reply ({type(e).__name__}: {str(e)[:120]})") from None

    async def _grade_one(self, client: Any, sem: asyncio.Semaphore, item: JudgeItem) -> Verdict:
        body = self.request_body(item)
        path = self._cache_path(body)
        hit = self._cached(path)
        if hit is not None:
            self.stats["cache_hits"] += 1
            return hit
        error = ""
        for attempt in range(self.max_attempts):
            try:
                async with sem:
                    content, verdict = await self._ask(client, body)
                self._store(path, body, content, verdict)
                return verdict
            except _Retryable as e:
                error = str(e)
                if attempt + 1 < self.max_attempts:
                    self.stats["retries"] += 1
                    delay = self._delay(attempt, e.wait)
                    log.info("judge item %s: %s; retry in %.1f s", item.id, error, delay)
                    await asyncio.sleep(delay)
            except RuntimeError as e:  # not worth retrying (bad key, unknown model, bad request)
                error = str(e)
                break
        self.stats["ungraded"] += 1
        log.warning("judge item %s ungraded after %d attempt(s): %s", item.id, attempt + 1, error)
        return Verdict(UNGRADED, "", error)

    async def agrade(self, items: list[JudgeItem]) -> list[Verdict]:
        """Grade concurrently; same contract as `grade`."""
        import httpx

        sem = asyncio.Semaphore(self.concurrency)
        limits = httpx.Limits(max_connections=self.concurrency)
        async with httpx.AsyncClient(timeout=self.timeout_s, limits=limits) as client:
            return list(await asyncio.gather(*(self._grade_one(client, sem, it) for it in items)))

    def grade(self, items: list[JudgeItem]) -> list[Verdict]:
        """One Verdict per item, in order; failures become score -1, never exceptions."""
        if not items:
            return []
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(self.agrade(items))
        # called from inside an event loop (a notebook, an async reward): run in a helper thread
        out: list[Verdict] = []
        t = threading.Thread(target=lambda: out.extend(asyncio.run(self.agrade(items))))
        t.start()
        t.join()
        return out


__all__ = ["LLMJudge", "RULES", "api_error", "build_messages", "parse_reply", "retry_after_s"]
