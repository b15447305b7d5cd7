"""genesis_llm.complete keeps its first outcome under a request_id, failures included, like
every other mutating call (kernel.idempotent): a retry with the same id gets the same
answer and is neither sent nor charged again. Failures that waiting could fix (retry_after
set) are not remembered. Real server, real HTTP endpoint on loopback."""

from __future__ import annotations

import grpc

from tests.conftest import fails
from tests.test_llm_gateway import X40, budget, fake_llm, openai_config  # noqa: F401 - fake_llm is a fixture

C = grpc.StatusCode


def test_a_call_refused_for_budget_is_refused_again_under_its_request_id(make_server, fake_llm):  # noqa: F811
    server = make_server(openai_config(fake_llm.url))
    poor = server.agent("poor", llm_budget_micro_usd=100)     # worst case of a call: 14 + 2 * 100 = 214
    rich = server.agent("rich")
    first = fails(lambda: poor.complete(X40, max_tokens=100, request_id="r1"),
                  C.RESOURCE_EXHAUSTED, "INSUFFICIENT_RESOURCES")
    assert first.retry_after is None
    rich.transfer_quota("poor", "llm_budget", 1000)           # now it would fit
    again = fails(lambda: poor.complete(X40, max_tokens=100, request_id="r1"),
                  C.RESOURCE_EXHAUSTED, "INSUFFICIENT_RESOURCES")
    assert again.message == first.message
    assert fake_llm.requests == [] and budget(poor) == (1100, 0, 0)
    # The id stays bound to genesis_llm.complete; a new id runs.
    fails(lambda: poor.transfer("rich", 1, request_id="r1"), C.INVALID_ARGUMENT, "INVALID_ARGS", "request_id")
    fake_llm.reply(prompt=14, completion=10)
    assert poor.complete(X40, max_tokens=100, request_id="r2")["cost_micro_usd"] == 34
    # Invalid arguments too.
    fails(lambda: poor.complete(X40, model="nope", request_id="r3"), C.INVALID_ARGUMENT, "INVALID_ARGS", "model")
    fails(lambda: poor.complete(X40, request_id="r3"), C.INVALID_ARGUMENT, "INVALID_ARGS", "model")


def test_a_failed_model_call_is_remembered_unless_it_said_when_to_come_back(make_server, fake_llm):  # noqa: F811
    server = make_server(openai_config(fake_llm.url))
    a = server.agent("a")
    fake_llm.reply(status=500, raw=b'{"error": "boom"}')
    first = fails(lambda: a.complete(X40, request_id="m1"), C.UNAVAILABLE, "LLM_UNAVAILABLE")
    assert first.retry_after is None
    fake_llm.reply(prompt=14, completion=1)                   # would succeed now
    assert fails(lambda: a.complete(X40, request_id="m1"), C.UNAVAILABLE, "LLM_UNAVAILABLE").message \
        == first.message
    assert len(fake_llm.requests) == 1 and budget(a) == (1_000_000, 0, 0)

    # "Busy, come back in 7 s": not remembered, the same id runs again once it can.
    fake_llm.script.clear()
    fake_llm.reply(status=429, raw=b"{}", headers={"Retry-After": "7"})
    assert fails(lambda: a.complete(X40, request_id="m2"), C.UNAVAILABLE, "LLM_UNAVAILABLE").retry_after == 7.0
    fake_llm.reply(prompt=14, completion=1)
    done = a.complete(X40, request_id="m2")
    assert done["cost_micro_usd"] == 16 and a.complete(X40, request_id="m2") == done
    assert len(fake_llm.requests) == 3 and budget(a) == (1_000_000 - 16, 16, 0)
