"""Judges: offline rules, and the LLM judge against a local OpenAI-compatible test server.

`JudgeServer` (also used by test_eval.py) serves /v1/chat/completions on 127.0.0.1 from a thread.
Its behaviour is keyed by markers in the request text: [[right]] always grades 1, [[malformed]]
replies with non-JSON, [[500]] fails, [[timeout]] answers after the client gave up (when the server
closes, or after `slow_s`), [[flaky]] fails once then answers, [[429]] asks to retry after 1 s once,
[[fenced]] wraps its JSON in a code fence, [[401]] refuses the key; anything else grades 1 when the
response contains the ground truth.

It speaks OpenAI's protocol as the official `openai` package (a test-only dependency) defines it:
every request body it receives must validate as the SDK's non-streaming chat-completion parameters
and every reply validates as `openai.types.chat.ChatCompletion`; errors are OpenAI's
`{"error": {"message", "type", "param", "code"}}` bodies. The server checks both as it goes and
fails the test on leaving its `with` block if anything did not validate.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import typing
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import openai
import pytest
from openai.types.chat import ChatCompletion
from openai.types.chat.completion_create_params import CompletionCreateParamsNonStreaming
from pydantic import TypeAdapter

from vlmgrpo.errors import ConfigError
from vlmgrpo.judges import UNGRADED, JudgeItem, build_judge
from vlmgrpo.judges.llm import RULES, LLMJudge, api_error, build_messages, parse_reply, retry_after_s
from vlmgrpo.judges.rules import RulesJudge, extract_answer, parse_number

MARKERS = ("right", "malformed", "500", "timeout", "flaky", "429", "fenced", "401", "slow")
REQUEST = TypeAdapter(CompletionCreateParamsNonStreaming)
REQUEST_KEYS = set(typing.get_type_hints(CompletionCreateParamsNonStreaming))
# OpenAI's error bodies for the failures the markers stand for (type and code as the API sends them)
ERRORS = {
    401: ("Incorrect API key provided: sk-test.", "invalid_request_error", "invalid_api_key"),
    429: ("Rate limit reached for requests. Please try again in 1s.", "requests", "rate_limit_exceeded"),
    500: ("The server had an error while processing your request.", "server_error", None),
}


def validate_request(body: dict) -> None:
    """Raise unless `body` is what the SDK's non-streaming `chat.completions.create` accepts: only
    known keys, each of its declared type (messages included, which pydantic checks lazily)."""
    unknown = set(body) - REQUEST_KEYS
    if unknown:
        raise ValueError(f"keys the SDK does not know: {sorted(unknown)}")
    params = REQUEST.validate_python(body)
    list(params["messages"])  # an Iterable in the SDK: validated when iterated


class JudgeServer:
    """A local OpenAI-compatible chat-completions server for judge tests (see the module docstring)."""

    def __init__(self, slow_s: float = 1.5, work_s: float = 0.0) -> None:
        self.slow_s, self.work_s = slow_s, work_s
        self.release = threading.Event()  # set on exit: a [[timeout]] request stops waiting
        self.gate: threading.Event | None = None  # when set by a test: requests wait for it
        self.invalid: list[str] = []  # requests / replies that did not validate against the SDK
        self.bodies: list[dict] = []
        self.headers: list[dict] = []
        self.counts: Counter = Counter()
        self.times: dict[str, list[float]] = {}
        self.inflight = self.max_inflight = 0
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                try:
                    validate_request(body)
                except Exception as e:  # noqa: BLE001 - reported on exit, in the test's thread
                    server.invalid.append(f"request: {e}")
                text = body["messages"][-1]["content"]
                marker = next((m for m in MARKERS if f"[[{m}]]" in text), "ok")
                with server.lock:
                    server.bodies.append(body)
                    server.headers.append(dict(self.headers))
                    server.counts[marker] += 1
                    n = server.counts[marker]
                    server.times.setdefault(marker, []).append(time.monotonic())
                    server.inflight += 1
                    server.max_inflight = max(server.max_inflight, server.inflight)
                    self.counted = True
                try:
                    server.respond(self, marker, n, text)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client timed out and left
                finally:
                    server.leave(self)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def respond(self, h: BaseHTTPRequestHandler, marker: str, n: int, text: str) -> None:
        if self.gate is not None:
            self.gate.wait(30)
        if self.work_s:
            time.sleep(self.work_s)
        if marker == "500" or (marker == "flaky" and n == 1):
            return self._error(h, 500)
        if marker == "401":
            return self._error(h, 401)
        if marker == "429" and n == 1:
            return self._error(h, 429, {"Retry-After": "1"})
        if marker == "timeout":
            self.release.wait(self.slow_s)  # the client has given up long before
        truth = text.split("Ground-truth answer:\n", 1)[1].split("\n\nModel response:", 1)[0]
        response = text.split("Model response:\n", 1)[1].rsplit("\n\nReply with JSON", 1)[0]
        score = 1 if marker == "right" or truth.strip().lower() in response.lower() else 0
        content = json.dumps({"extracted_answer": response.strip()[:40], "score": score})
        if marker == "malformed":
            content = "Sure! The score is one {not json"
        if marker == "fenced":
            content = f"```json\n{content}\n```"
        reply = {
            "id": f"chatcmpl-test{n}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": "gpt-4.1-2025-04-14",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content, "refusal": None, "annotations": []},
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": len(text) // 4, "completion_tokens": len(content) // 4,
                      "total_tokens": len(text) // 4 + len(content) // 4},
            "service_tier": "default",
            "system_fingerprint": "fp_test",
        }  # fmt: skip
        try:
            ChatCompletion.model_validate(reply)
        except Exception as e:  # noqa: BLE001 - reported on exit
            self.invalid.append(f"reply: {e}")
        self._send(h, 200, reply)

    def _error(self, h: BaseHTTPRequestHandler, status: int, headers: dict | None = None) -> None:
        message, kind, code = ERRORS[status]
        self._send(
            h, status, {"error": {"message": message, "type": kind, "param": None, "code": code}}, headers
        )

    def leave(self, h: BaseHTTPRequestHandler) -> None:
        """The request stops counting as in flight (once): before its reply's first byte, since the
        client may send its next request as soon as it has the reply (counting until the handler
        returns would see the next request overlap this one)."""
        with self.lock:
            if getattr(h, "counted", False):
                self.inflight -= 1
                h.counted = False

    def _send(self, h: BaseHTTPRequestHandler, status: int, obj: dict, headers: dict | None = None) -> None:
        self.leave(h)
        data = json.dumps(obj).encode()
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.end_headers()
        h.wfile.write(data)

    def __enter__(self) -> JudgeServer:
        self.thread.start()
        return self

    def __exit__(self, exc_type, *exc) -> None:
        self.release.set()
        if self.gate is not None:
            self.gate.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        if exc_type is None:
            assert not self.invalid, f"not OpenAI's protocol: {self.invalid[:3]}"


def item(
    marker: str = "", response: str = "The answer is 42.", answer: str = "42", cat: int = 4
) -> JudgeItem:
    return JudgeItem(
        f"How many? {f'[[{marker}]]' if marker else ''}", response, answer, cat, id=marker or "plain"
    )


def judge(server: JudgeServer, tmp_path, **kw) -> LLMJudge:
    opts = dict(
        base_url=server.url,
        api_key="sk-test",
        cache_dir=tmp_path / "cache",
        timeout_s=0.5,
        max_attempts=2,
        backoff_s=0.01,
    )
    return LLMJudge(**(opts | kw))


# --------------------------------------------------------------------------- rules


@pytest.mark.parametrize(
    "response,expected",
    [
        ("thinking...\n<answer> 12 </answer>", "12"),
        ("so \\boxed{\\frac{1}{2}} is it", "\\frac{1}{2}"),
        ("Step 1: 3+4. The final answer is 7. Done.", "7"),
        ("The answer: 3.5", "3.5"),
        ("first line\nBravo", "Bravo"),
        ("", ""),
    ],
)
def test_extract_answer(response, expected):
    assert extract_answer(response)[0] == expected


def test_parse_number_formats():
    assert parse_number("1,200") == 1200.0
    assert parse_number(" 45% ") == 45.0
    assert parse_number("−3.5") == -3.5
    assert parse_number("about 4") is None


def test_rules_numeric_choice_and_text():
    j = RulesJudge()
    grade = lambda resp, ans, choices=(), cat=1: j.grade_one(JudgeItem("q", resp, ans, cat, list(choices)))  # noqa: E731
    assert grade("The answer is 1,200.", "1200").score == 1
    assert grade("<answer>12.0004</answer>", "12").score == 1  # within rel_tol 1e-3
    assert grade("<answer>13</answer>", "12").score == 0
    assert grade("I count 3 bars, then 5 more, so 8", "8").score == 1  # uncued: the last number
    assert grade("no number here", "8").score == 0
    assert grade("(B)", "B").score == 1 and grade("C.", "B").score == 0
    names = ["Alpha", "Bravo", "Cedar"]
    assert grade("The answer is Bravo.", "Bravo", names).score == 1
    assert grade("Alpha or Bravo", "Bravo", names).score == 0  # hedging between options is wrong
    assert grade("The answer is yes", "yes", ["yes", "no"]).score == 1
    assert grade("The Solar panels", "solar panels").score == 1
    assert grade("wind", "solar").score == 0
    assert RulesJudge(rel_tol=0.1).grade_one(JudgeItem("q", "10.5", "10")).score == 1


def test_registry_builds_judges_and_rejects_typos():
    assert build_judge("rules").name == "rules"
    with pytest.raises(ConfigError, match="did you mean 'rules'"):
        build_judge("rulez")


# --------------------------------------------------------------------------- llm: pure parts


def test_each_category_gets_its_own_rules():
    texts = {c: build_messages(item(cat=c))[1]["content"] for c in (1, 2, 3, 4)}
    for c in (1, 2, 3, 4):
        assert RULES[c] in texts[c]
        assert all(RULES[o] not in texts[c] for o in (1, 2, 3, 4) if o != c)
    assert RULES[1] in build_messages(item(cat=9))[1]["content"]  # unknown category: text-in-chart


def test_parse_reply_variants():
    assert parse_reply('{"extracted_answer": "7", "score": 1}').score == 1
    assert parse_reply('```json\n{"extracted_answer": "x", "score": "0"}\n```').score == 0
    assert parse_reply('Here: {"extracted_answer": "x", "score": 1} hope it helps').extracted_answer == "x"
    for bad in ("not json", '{"extracted_answer": "x"}', '{"score": 7}', "[1]"):
        with pytest.raises(ValueError):
            parse_reply(bad)


def test_retry_after_parsing():
    assert retry_after_s("3") == 3.0
    assert retry_after_s(None) is None and retry_after_s("soon") is None
    future = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 5))
    assert 3.0 < retry_after_s(future) <= 5.0


def test_no_key_for_the_default_endpoint_is_a_config_error(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    with pytest.raises(ConfigError, match="OPENAI_API_KEY"):
        LLMJudge()


# --------------------------------------------------------------------------- llm: against a server


def test_failures_become_ungraded_never_exceptions(tmp_path):
    with JudgeServer() as srv:
        j = judge(srv, tmp_path, timeout_s=10.0)  # generous: only the markers may fail, even on a busy CPU
        items = [
            item(response="It is 42"),
            item(response="It is 41"),
            item("fenced"),
            item("flaky"),
            item("malformed"),
            item("500"),
            item("401"),
        ]
        verdicts = j.grade(items)
    assert [v.score for v in verdicts] == [1, 0, 1, 1, UNGRADED, UNGRADED, UNGRADED]
    assert verdicts[0].extracted_answer == "It is 42"
    assert "unparsable" in verdicts[4].error and "HTTP 500" in verdicts[5].error
    assert "HTTP 401" in verdicts[6].error
    assert srv.counts["malformed"] == srv.counts["500"] == 2  # max_attempts
    assert srv.counts["flaky"] == 2  # failed once, then graded
    assert srv.counts["401"] == 1  # a refused key is not retried
    assert j.stats["ungraded"] == 3
    body = srv.bodies[0]
    assert body["temperature"] == 0 and body["model"] == "gpt-4.1"
    assert body["response_format"] == {"type": "json_object"}
    assert srv.headers[0]["Authorization"] == "Bearer sk-test"


def test_a_timeout_is_retried_then_ungraded(tmp_path):
    with JudgeServer(slow_s=60.0) as srv:  # [[timeout]] is answered only when the server closes
        j = judge(srv, tmp_path, timeout_s=0.5)
        (v,) = j.grade([item("timeout")])
        # back while the server still holds every request: the client's own timeout ended them
        assert not srv.release.is_set()
    assert v.score == UNGRADED and "timed out" in v.error
    assert j.stats["retries"] == 1  # 2 attempts, both timed out
    assert 1 <= srv.counts["timeout"] <= 2  # the first may time out before a busy server logs it


def test_retry_after_is_honoured(tmp_path):
    with JudgeServer() as srv:
        (v,) = judge(srv, tmp_path, max_attempts=3).grade([item("429")])
    assert v.score == 1
    t = srv.times["429"]
    assert len(t) == 2 and t[1] - t[0] >= 0.95  # waited the server's 1 s, not the 0.01 s backoff


def test_cache_makes_a_rerun_free(tmp_path):
    items = [item(response="42 it is"), item("fenced"), item("500")]
    with JudgeServer() as srv:
        first = judge(srv, tmp_path).grade(items)
        n_first = len(srv.bodies)
        again = judge(srv, tmp_path).grade(items)
    assert [v.score for v in again] == [v.score for v in first] == [1, 1, UNGRADED]
    assert len(srv.bodies) - n_first == 2  # only the ungraded item was asked again (2 attempts)
    cached = list((tmp_path / "cache").glob("*.json"))
    assert len(cached) == 2
    assert all("sk-test" not in p.read_text() for p in cached)  # the key never reaches the disk


def test_concurrency_is_limited(tmp_path):
    srv = JudgeServer()
    srv.gate = threading.Event()  # requests wait here until two are in flight together
    with srv:
        j = judge(srv, tmp_path, concurrency=2, cache_dir=None, timeout_s=30.0)
        verdicts: list = []
        t = threading.Thread(
            target=lambda: verdicts.extend(j.grade([item(response=f"42 #{i}") for i in range(6)]))
        )
        t.start()
        assert _wait_for(lambda: srv.inflight >= 2)
        srv.gate.set()
        t.join(60)
    assert [v.score for v in verdicts] == [1] * 6
    assert srv.max_inflight == 2  # reached (the gate) and never exceeded (the limit)


def _wait_for(cond, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.01)
    return False


def test_grade_works_inside_a_running_event_loop(tmp_path):
    with JudgeServer() as srv:
        j = judge(srv, tmp_path)

        async def caller():
            return j.grade([item("right")])

        (v,) = asyncio.run(caller())
    assert v.score == 1


# --------------------------------------------------------------------------- llm: OpenAI's own types


def test_request_validator_can_fail():
    """The SDK-type check the server applies rejects what the SDK would not send."""
    ok = {"model": "gpt-4.1", "messages": [{"role": "user", "content": "hi"}], "temperature": 0}
    validate_request(ok)
    validate_request({**ok, "response_format": {"type": "json_object"}, "stream": False})
    for bad in (
        {**ok, "stream": True},  # streaming: not CompletionCreateParamsNonStreaming
        {**ok, "temperture": 0},  # a key the SDK does not know
        {**ok, "messages": [{"role": "judge", "content": "hi"}]},
        {**ok, "response_format": {"type": "json"}},
        {"messages": ok["messages"]},  # no model
    ):
        with pytest.raises(Exception):  # noqa: B017 - pydantic's ValidationError or our ValueError
            validate_request(bad)
    with pytest.raises(Exception):  # noqa: B017
        ChatCompletion.model_validate({"choices": [{"message": {"content": "x"}}]})  # the old reply


def test_judge_requests_are_the_sdks_own(tmp_path):
    """Every request the judge sends validates as the SDK's non-streaming parameters (the server
    checks each on arrival), asks for JSON output, and is byte-for-byte the body the official
    client sends for the same parameters."""
    with JudgeServer() as srv:
        j = judge(srv, tmp_path, cache_dir=None)
        items = [item(response="It is 42", cat=c) for c in (1, 2, 3, 4)]
        assert [v.score for v in j.grade(items)] == [1, 1, 1, 1]
        ours = [dict(b) for b in srv.bodies]
        client = openai.OpenAI(base_url=srv.url, api_key="sk-test", max_retries=0, timeout=30.0)
        for it in items:
            client.chat.completions.create(**j.request_body(it))
        sdk = srv.bodies[len(ours) :]
    assert all("stream" not in b and b["response_format"] == {"type": "json_object"} for b in ours)
    key = lambda b: b["messages"][-1]["content"]  # noqa: E731 - concurrent requests arrive in any order
    assert sorted(ours, key=key) == sorted(sdk, key=key)


def test_official_client_reads_the_test_server(tmp_path):
    """The test server's replies and errors are what the official client expects."""
    with JudgeServer() as srv:
        j = judge(srv, tmp_path)
        client = openai.OpenAI(base_url=srv.url, api_key="sk-test", max_retries=0, timeout=30.0)
        resp = client.chat.completions.create(**j.request_body(item(response="It is 42")))
        assert isinstance(resp, ChatCompletion) and resp.choices[0].finish_reason == "stop"
        assert parse_reply(resp.choices[0].message.content).score == 1
        for marker, exc, code in (
            ("401", openai.AuthenticationError, "invalid_api_key"),
            ("429", openai.RateLimitError, "rate_limit_exceeded"),
            ("500", openai.InternalServerError, None),
        ):
            with pytest.raises(exc) as e:
                client.chat.completions.create(**j.request_body(item(marker)))
            assert e.value.code == code and e.value.body["message"] == ERRORS[int(marker)][0]


def test_judge_reports_openai_error_bodies(tmp_path):
    with JudgeServer() as srv:
        v401, v500 = judge(srv, tmp_path).grade([item("401"), item("500")])
    assert v401.score == v500.score == UNGRADED
    assert v401.error == "HTTP 401 invalid_api_key: Incorrect API key provided: sk-test."
    assert v500.error == "HTTP 500 server_error: The server had an error while processing your request."
    assert api_error(502, "<html>Bad   gateway</html>") == "HTTP 502: <html>Bad gateway</html>"
    assert api_error(400, '{"error": "model not found"}') == "HTTP 400: model not found"
