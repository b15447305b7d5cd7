"""genesis_llm, the metered LLM gateway, against a real server and a real OpenAI-compatible
HTTP server on loopback (scripted replies with reported usage; it records every request)."""

from __future__ import annotations

import collections
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
import pytest

from agent_runtime import EcologyError
from tests.conftest import fails

C = grpc.StatusCode
KEY_ENV = "ECO_TEST_LLM_KEY"
KEY = "sk-test-0123456789"

# test-model: 1 micro-USD per prompt token, 2 per completion token.
PRICES = {"test-model": (1000, 2000), "odd-model": (333, 777)}


class FakeLLM:
    """An OpenAI-compatible endpoint: POST /v1/chat/completions. Replies come from a
    script (FIFO); without one, a fixed success. Every request is recorded."""

    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.script: collections.deque = collections.deque()
        self.stopping = threading.Event()
        self.arrived = threading.Event()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                fake.requests.append({"path": self.path, "auth": self.headers.get("Authorization"),
                                      "body": json.loads(raw)})
                fake.arrived.set()
                step = fake.script.popleft() if fake.script else {}
                if step.get("delay"):
                    fake.stopping.wait(step["delay"])
                status = step.get("status", 200)
                if "raw" in step:
                    body = step["raw"]
                else:
                    model = json.loads(raw).get("model")
                    body = json.dumps(step.get("json", {
                        "id": "chatcmpl-test", "object": "chat.completion", "model": model,
                        "choices": [{"index": 0, "finish_reason": "stop",
                                     "message": {"role": "assistant", "content": step.get("content", "scripted")}}],
                        "usage": {"prompt_tokens": step.get("prompt", 10),
                                  "completion_tokens": step.get("completion", 5),
                                  "total_tokens": step.get("prompt", 10) + step.get("completion", 5)},
                    })).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    for k, v in step.get("headers", {}).items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(body)
                except OSError:
                    pass  # the server under test went away

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def reply(self, **step) -> None:
        self.script.append(step)

    def close(self) -> None:
        self.stopping.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def fake_llm(monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)
    fake = FakeLLM()
    yield fake
    fake.close()


def openai_config(url: str, **llm) -> str:
    settings = {"backend": "openai", "base_url": url, "api_key_env": KEY_ENV, "default_model": "test-model",
                "default_max_tokens": 100, "max_tokens_cap": 1000, "tokens_per_minute": 100_000,
                "timeout_seconds": 10.0, **llm}
    lines = ["[llm]"] + [f"{k} = {json.dumps(v)}" for k, v in settings.items()]
    for name, (p, c) in PRICES.items():
        lines += [f"[llm.models.{name}]", f"prompt_micro_usd_per_1k = {p}", f"completion_micro_usd_per_1k = {c}"]
    return "\n".join(lines) + "\n"


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


X40 = user("x" * 40)  # estimated prompt: 40 chars / 4 + 4 (message overhead) = 14 tokens


def budget(agent) -> tuple[int, int, int]:
    b = agent.llm_budget()
    return b["remaining_micro_usd"], b["spent_micro_usd"], b["reserved_micro_usd"]


def compute(agent) -> float:
    return next(f.balance for f in agent.get_state().flow if f.name == "compute")


def reservations(server) -> list:
    conn = server.db()
    try:
        return conn.execute("SELECT principal_id, amount FROM llm_reservations").fetchall()
    finally:
        conn.close()


# -- OpenAI-compatible backend ---------------------------------------------------------------

def test_actual_cost_is_reconciled_exactly_and_the_request_is_what_was_asked(make_server, fake_llm):
    server = make_server(openai_config(fake_llm.url))
    a = server.agent("alice")
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hello"}]
    fake_llm.reply(content="Hello there", prompt=123, completion=45)
    r = a.complete(messages, max_tokens=200)
    # Reserved: (18 chars / 4 -> 5) + 2 * 4 = 13 prompt tokens + 200 -> 13 + 400 = 413 micro-USD.
    # Charged: 123 prompt tokens at 1000/1k + 45 completion tokens at 2000/1k = 123 + 90.
    assert r == {"content": "Hello there", "model": "test-model",
                 "usage": {"prompt_tokens": 123, "completion_tokens": 45},
                 "cost_micro_usd": 213, "budget_remaining_micro_usd": 1_000_000 - 213}
    sent = fake_llm.requests[-1]
    assert sent["path"] == "/v1/chat/completions"
    assert sent["auth"] == f"Bearer {KEY}"
    assert sent["body"] == {"model": "test-model", "messages": messages, "max_tokens": 200}
    assert budget(a) == (1_000_000 - 213, 213, 0)
    assert {s.name: (s.quota, s.used) for s in a.get_state().stock}["llm_budget"] == (1_000_000 - 213, 213)

    # Defaults, another model, response_format passed through; the cost rounds up:
    # 10 * 333 + 10 * 777 = 11100 -> 11.1 -> 12 micro-USD.
    fake_llm.reply(content="{}", prompt=10, completion=10)
    r = a.complete(user("hi"), model="odd-model", response_format={"type": "json_object"})
    assert (r["model"], r["cost_micro_usd"]) == ("odd-model", 12)
    assert fake_llm.requests[-1]["body"] == {"model": "odd-model", "messages": user("hi"), "max_tokens": 100,
                                             "response_format": {"type": "json_object"}}

    # The backend reports more than the worst case: the charge stops at the reservation.
    # Estimate: 14 prompt tokens + max_tokens 10 -> 14 * 1 + 10 * 2 = 34 micro-USD.
    fake_llm.reply(prompt=1000, completion=1000)
    assert a.complete(X40, max_tokens=10)["cost_micro_usd"] == 34
    assert budget(a) == (1_000_000 - 213 - 12 - 34, 213 + 12 + 34, 0)

    done = a.events(types=["llm.completed"])
    assert [e["data"]["cost_micro_usd"] for e in done] == [213, 12, 34]
    assert done[0]["principal_id"] == "alice" and done[0]["artifact_id"] == "genesis_llm"
    assert (done[0]["data"]["prompt_tokens"], done[0]["data"]["completion_tokens"]) == (123, 45)

    # A request id makes the call retry-safe: the repeat is neither sent nor charged.
    fake_llm.reply(content="once", prompt=5, completion=5)
    first = a.complete(user("retry me"), request_id="req-1")
    sent = len(fake_llm.requests)
    assert a.complete(user("retry me"), request_id="req-1") == first
    assert len(fake_llm.requests) == sent
    assert budget(a)[1] == 213 + 12 + 34 + 15

    # Invalid calls are refused before anything is reserved or sent.
    fails(lambda: a.complete(user("x"), model="nope"), C.INVALID_ARGUMENT, "INVALID_ARGS", "model")
    fails(lambda: a.complete(user("x"), max_tokens=1001), C.INVALID_ARGUMENT, "INVALID_ARGS", "max_tokens")
    fails(lambda: a.complete([{"role": "robot", "content": "x"}]), C.INVALID_ARGUMENT, "INVALID_ARGS")
    fails(lambda: a.invoke("genesis_llm", "complete"), C.INVALID_ARGUMENT, "INVALID_ARGS")
    assert len(fake_llm.requests) == sent


def test_exhausted_budget_freezes_only_that_agent(make_server, fake_llm):
    server = make_server(openai_config(fake_llm.url))
    poor = server.agent("poor", llm_budget_micro_usd=300)
    rich = server.agent("rich")
    # Worst case of each call: 14 prompt + 100 max_tokens -> 14 + 200 = 214 micro-USD.
    # Actual: 14 prompt + 50 completion -> 14 + 100 = 114.
    fake_llm.reply(prompt=14, completion=50)
    assert poor.complete(X40, max_tokens=100)["cost_micro_usd"] == 114
    assert budget(poor) == (186, 114, 0)
    sent = len(fake_llm.requests)
    err = fails(lambda: poor.complete(X40, max_tokens=100), C.RESOURCE_EXHAUSTED, "INSUFFICIENT_RESOURCES")
    assert err.retry_after is None  # waiting does not help: the budget does not renew
    assert "186" in err.message and "214" in err.message
    assert len(fake_llm.requests) == sent  # nothing was sent
    assert budget(poor) == (186, 114, 0)

    # Others go on; so does the frozen agent's non-LLM work.
    fake_llm.reply(prompt=14, completion=50)
    assert rich.complete(X40, max_tokens=100)["cost_micro_usd"] == 114
    poor.transfer("rich", 5)
    # A smaller worst case still fits (14 + 2 * 10 = 34).
    fake_llm.reply(prompt=14, completion=10)
    assert poor.complete(X40, max_tokens=10)["cost_micro_usd"] == 34
    # Budget given by another principal unfreezes it.
    rich.transfer_quota("poor", "llm_budget", 1000)
    fake_llm.reply(prompt=14, completion=50)
    assert poor.complete(X40, max_tokens=100)["cost_micro_usd"] == 114
    assert budget(poor) == (186 - 34 + 1000 - 114, 114 + 34 + 114, 0)


def test_tokens_per_minute_limit_is_world_wide_with_exact_retry(make_server, fake_llm):
    # 600 tokens per minute: capacity 600, refilling 10 tokens a second.
    server = make_server(openai_config(fake_llm.url, tokens_per_minute=600))
    a, b = server.agent("a"), server.agent("b")
    # Estimated 14 + 400 = 414 tokens; used 14 + 386 = 400: the bucket keeps 600 - 400 = 200
    # (plus what refills meanwhile).
    fake_llm.reply(prompt=14, completion=386)
    started = time.monotonic()
    a.complete(X40, max_tokens=400)
    sent = len(fake_llm.requests)
    err = fails(lambda: b.complete(X40, max_tokens=400), C.RESOURCE_EXHAUSTED, "RATE_LIMITED")
    elapsed = time.monotonic() - started
    # 414 - 200 = 214 tokens missing at 10 a second: 21.4 s, less what refilled since the first call.
    assert 21.4 - elapsed - 0.05 <= err.retry_after <= 21.4 + 0.01, (err.retry_after, elapsed)
    assert len(fake_llm.requests) == sent
    assert budget(b) == (1_000_000, 0, 0)  # a refused call holds nothing
    assert 200 <= b.llm_budget()["tokens_available"] <= 200 + 10 * (time.monotonic() - started) + 1
    # What fits goes through (14 + 100 <= 200), for anyone.
    b.complete(X40, max_tokens=100)
    # A call larger than the whole bucket could never fit: refused as invalid, not "wait".
    fails(lambda: a.complete(X40, max_tokens=700), C.INVALID_ARGUMENT, "INVALID_ARGS", "max_tokens")


def test_malformed_or_failed_backend_answers_charge_nothing(make_server, fake_llm):
    server = make_server(openai_config(fake_llm.url, timeout_seconds=2.0))
    # A compute rate near zero: any compute charge that was not refunded would show.
    a = server.agent("a", compute_rate=0.001)
    before = compute(a)
    cases = [
        ({"raw": b"this is not json"}, "not JSON"),
        ({"json": {"id": "x", "object": "chat.completion"}}, "no choices"),
        ({"json": {"choices": []}}, "no choices"),
        ({"json": {"choices": [{"message": {"role": "assistant"}}]}}, "content"),
        ({"json": {"choices": [{"message": {"content": "hi"}}], "usage": {"prompt_tokens": -1,
                                                                         "completion_tokens": 1}}}, "usage"),
        ({"status": 500, "raw": b'{"error": "boom"}'}, "HTTP 500"),
        ({"delay": 3.0}, "no answer within 2s"),
    ]
    for step, words in cases:
        fake_llm.reply(**step)
        err = fails(lambda: a.complete(X40), C.UNAVAILABLE, "LLM_UNAVAILABLE")
        assert words in err.message and "nothing was charged" in err.message, err.message
        assert err.retry_after is None
    # The endpoint said "busy": the caller is told when to come back.
    fake_llm.reply(status=429, raw=b'{"error": "slow down"}', headers={"Retry-After": "7"})
    err = fails(lambda: a.complete(X40), C.UNAVAILABLE, "LLM_UNAVAILABLE")
    assert err.retry_after == pytest.approx(7.0)
    fake_llm.reply(status=503, raw=b"")
    assert fails(lambda: a.complete(X40), C.UNAVAILABLE, "LLM_UNAVAILABLE").retry_after == pytest.approx(1.0)

    assert compute(a) == pytest.approx(before, abs=0.01)
    assert budget(a) == (1_000_000, 0, 0)
    assert reservations(server) == []
    assert a.events(types=["llm.*"]) == []
    # And the next good answer is charged normally.
    fake_llm.reply(prompt=14, completion=1)
    assert a.complete(X40)["cost_micro_usd"] == 16


def test_a_reservation_pending_at_a_crash_is_released_at_restart(make_server, fake_llm):
    server = make_server(openai_config(fake_llm.url, timeout_seconds=60.0))
    a = server.agent("a")
    token = a.token
    fake_llm.reply(delay=60.0)  # a slow model: the call is in flight when the server dies
    outcome: list = []

    def call():
        try:
            outcome.append(a.complete(X40, max_tokens=100))
        except EcologyError as e:
            outcome.append(e)

    caller = threading.Thread(target=call)
    caller.start()
    assert fake_llm.arrived.wait(10)
    # While the call is in flight its worst case (14 + 200 = 214) is held.
    assert [tuple(r) for r in reservations(server)] == [("a", 214)]
    conn = server.db()
    held = conn.execute("SELECT quota, used FROM stock WHERE principal_id='a' AND resource='llm_budget'").fetchone()
    conn.close()
    assert tuple(held) == (1_000_000 - 214, 0)

    server.kill()  # SIGKILL mid-call
    caller.join(10)
    assert outcome and isinstance(outcome[0], EcologyError)
    server.start()
    assert reservations(server) == []
    a = server.client(token)
    assert budget(a) == (1_000_000, 0, 0)
    fake_llm.reply(prompt=14, completion=50)
    assert a.complete(X40, max_tokens=100)["cost_micro_usd"] == 114


def test_a_graceful_stop_mid_call_releases_the_reservation(make_server, fake_llm):
    server = make_server("[server]\nshutdown_grace_seconds = 0.5\n" + openai_config(fake_llm.url))
    a = server.agent("a")
    fake_llm.reply(delay=60.0)
    caller = threading.Thread(target=lambda: pytest.raises(EcologyError, a.complete, X40))
    caller.start()
    assert fake_llm.arrived.wait(10)
    assert len(reservations(server)) == 1
    assert server.stop() == 0  # SIGTERM: the call is cut short after the grace period
    caller.join(10)
    assert reservations(server) == []
    conn = server.db()
    assert conn.execute("SELECT quota, used FROM stock WHERE principal_id='a' AND resource='llm_budget'"
                        ).fetchone()[:] == (1_000_000, 0)
    conn.close()


def test_missing_api_key_stops_the_server_at_start(make_server, fake_llm, monkeypatch):
    monkeypatch.delenv(KEY_ENV)
    with pytest.raises(RuntimeError):
        make_server(openai_config(fake_llm.url))


# -- the offline model -----------------------------------------------------------------------

def test_offline_model_is_deterministic_metered_and_answers_json_when_asked(make_server):
    server = make_server()  # embedded defaults: the offline backend, no key
    a, b = server.agent("a"), server.agent("b")
    models = a.llm_models()
    assert models["backend"] == "offline" and models["default_model"] == "offline-small"
    prices = {m["name"]: m for m in models["models"]}["offline-small"]
    assert prices["prompt_micro_usd_per_1k"] > 0 and prices["completion_micro_usd_per_1k"] > 0

    r1 = a.complete(user("Hello, world. What should I build?"))
    r2 = b.complete(user("Hello, world. What should I build?"))
    assert r1["content"] == r2["content"] and r1["content"]
    assert r1["model"] == "offline-small"
    prompt = -(-len("Hello, world. What should I build?") // 4) + 4
    completion = -(-len(r1["content"]) // 4)
    assert r1["usage"] == {"prompt_tokens": prompt, "completion_tokens": completion}
    cost = -(-(prompt * prices["prompt_micro_usd_per_1k"] + completion * prices["completion_micro_usd_per_1k"]) // 1000)
    assert r1["cost_micro_usd"] == cost > 0
    assert budget(a) == (1_000_000 - cost, cost, 0)

    # JSON when the prompt mentions it, or when response_format asks for it.
    ask = [{"role": "system", "content": "You are an agent. Answer with one JSON action."},
           {"role": "user", "content": "scrip: 1000. time: 12:00."}]
    j1, j2 = a.complete(ask), b.complete(ask)
    assert j1["content"] == j2["content"]
    action = json.loads(j1["content"])
    assert action["action"] == "sleep" and 1 <= action["seconds"] <= 10 and isinstance(action["reason"], str)
    j3 = a.complete(user("what now?"), response_format={"type": "json_object"})
    assert isinstance(json.loads(j3["content"]), dict)
    # A tiny max_tokens still gives valid JSON; plain text is cut to max_tokens.
    assert "action" in json.loads(a.complete(ask, max_tokens=5)["content"])
    assert len(a.complete(user("tell me a long story " * 20), max_tokens=3)["content"]) <= 12

    # It is a genesis artifact like the others: listed, with a handbook page.
    assert "- complete(" in a.handbook("genesis_llm")
    assert a.get_metadata("genesis_llm")["id"] == "genesis_llm"


def test_complete_cannot_be_invoked_from_artifact_code(make_server):
    server = make_server()
    a = server.agent("a")
    code = ("def run():\n"
            "    try:\n"
            "        invoke('genesis_llm', 'complete', messages=[{'role': 'user', 'content': 'hi'}])\n"
            "    except RemoteError as e:\n"
            "        return {'reason': e.reason, 'message': e.message}\n"
            "    return {'reason': None}\n"
            "def models():\n"
            "    return invoke('genesis_llm', 'models')['default_model']\n")
    iface = [{"name": "run", "input_schema": {"type": "object"}},
             {"name": "models", "input_schema": {"type": "object"}}]
    a.write("llm_caller", code, can_execute=True, interface=iface)
    out = a.invoke("llm_caller", "run")
    assert out["reason"] == "NOT_NESTABLE" and "from artifact code" in out["message"]
    assert a.invoke("llm_caller", "models") == "offline-small"  # the other methods nest fine
    assert budget(a) == (1_000_000, 0, 0)
