"""Decision traces: every action of a running agent is recorded with what it saw and how it
ended; an LLM brain's decisions link to the exact prompt and raw answer the gateway recorded.
Real server, real agent processes, a real HTTP server standing in for the model."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import grpc

from tests.conftest import ROOT, fails, plan_config, wait_until
from tests.test_agent_runtime import config, spawn  # noqa: F401 - spawn is a fixture
from tests.test_llm_gateway import fake_llm, openai_config  # noqa: F401 - fake_llm is a fixture


def decisions(server, agent_id: str) -> list:
    with server.admin() as admin:
        return list(admin.list_decisions(agent_id, limit=500).decisions)


def plain(value) -> object:
    from google.protobuf import json_format

    return json_format.MessageToDict(value)


def test_each_action_of_a_plan_agent_is_traced_with_what_it_saw_and_its_outcome(server, spawn):  # noqa: F811
    ticker = server.agent("ticker", config=plan_config("ticker"))
    spawn(server, ticker)
    found = wait_until(lambda: (lambda ds: ds if len(ds) >= 4 else None)(decisions(server, "ticker")), 20,
                       "four decisions")
    kinds = [plain(d.action)["action"] for d in found[:4]]
    assert kinds == ["write", "sleep", "write", "sleep"]
    first = found[0]
    assert plain(first.outcome)["ok"] is True
    observed = plain(first.observed)
    assert observed["scrip"] == 1000 and "compute" in observed and "last_event_seq" in observed
    assert [d.step for d in found[:4]] == [1, 2, 3, 4]
    assert all(not d.truncated and not d.llm for d in found)
    # the CLI prints the same trace as JSON lines
    r = subprocess.run([sys.executable, "-m", "server.cli", "agent", "decisions", "ticker", "--limit", "2",
                        "--server", server.socket], capture_output=True, text=True, cwd=ROOT, timeout=60,
                       env={**os.environ, "PYTHONPATH": str(ROOT), "ECOLOGY_ADMIN_TOKEN": server.admin_token})
    assert r.returncode == 0, r.stderr
    lines = [json.loads(line) for line in r.stdout.splitlines()]
    assert [line["action"]["action"] for line in lines] == ["write", "sleep"]


def test_an_llm_decision_links_to_the_exact_prompt_and_raw_answer(make_server, spawn, fake_llm):  # noqa: F811
    server = make_server(openai_config(fake_llm.url))
    fake_llm.reply(content='{"action": "note", "text": "remember the ledger"}')
    thinker = server.agent("thinker", config=config(brain="llm", model="test-model",
                                                    loop={"min_interval": 0.1, "fallback_sleep": 30}))
    spawn(server, thinker)
    d = wait_until(lambda: (decisions(server, "thinker") or [None])[0], 20, "the first decision")
    assert plain(d.action) == {"action": "note", "text": "remember the ledger"}
    assert len(d.llm) == 1 and d.llm_request_ids == [d.llm[0].request_id]
    exchange = d.llm[0]
    sent = fake_llm.requests[0]["body"]["messages"]
    assert plain(exchange.prompt) == sent                    # the exact messages the model got
    assert exchange.answer == '{"action": "note", "text": "remember the ledger"}'
    assert exchange.model and not exchange.truncated


def test_calls_without_a_request_id_keep_a_trace_each(make_server, fake_llm):  # noqa: F811
    """A completion without a request id is traced under its llm.completed event's number,
    which is never reused: reservation ids are (each reservation is deleted when settled,
    so the next one gets the same id), and keying by them let each call overwrite the last."""
    server = make_server(openai_config(fake_llm.url))
    a = server.agent("alice")
    answers = []
    for i in range(3):
        fake_llm.reply(content=f"answer {i}")
        answers.append(a.complete([{"role": "user", "content": f"question {i}"}])["content"])
    store = server.db()
    try:
        seqs = [e["seq"] for e in store.events_page(0, 10_000)[0] if e["type"] == "llm.completed"]
        traced = [store.llm_exchange_get("alice", f"auto-{seq}") for seq in seqs]
    finally:
        store.close()
    assert answers == ["answer 0", "answer 1", "answer 2"] and len(seqs) == 3
    assert [t["answer"] for t in traced] == answers
    assert [plain_prompt(t["prompt"]) for t in traced] == [f"question {i}" for i in range(3)]


def plain_prompt(prompt) -> str:
    return prompt[-1]["content"]


def test_oversized_fields_are_truncated_and_marked_bad_input_is_refused(make_server):
    server = make_server("[traces]\nmax_field_bytes = 200\n[oracle]\nenabled = false\n")
    alice = server.agent("alice")
    r = alice.record_decision(step=1, observed={"big": "x" * 5000}, action={"action": "note", "text": "hi"},
                              outcome={"ok": True})
    assert r.truncated
    (d,) = decisions(server, "alice")
    assert d.truncated
    observed = plain(d.observed)
    assert observed["truncated"] is True and observed["bytes"] > 5000 and len(observed["preview"]) < 200
    assert plain(d.action) == {"action": "note", "text": "hi"}     # small fields stay whole
    fails(lambda: alice.record_decision(step=-1, observed={}, action={"action": "x"}, outcome={}),
          grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGS", field="step")
    fails(lambda: alice.record_decision(step=1, observed={}, action={}, outcome={}),
          grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGS", field="action")
    fails(lambda: alice.record_decision(step=1, observed={}, action={"action": "x"}, outcome={},
                                        llm_request_ids=["r"] * 17),
          grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGS", field="llm_request_ids")
    assert len(decisions(server, "alice")) == 1
    # traces are the agent's own: another agent sees nothing through the operator API
    with server.admin() as admin:
        fails(lambda: admin.list_decisions("alice", limit=501), grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGS")
    from agent_runtime import AdminClient

    with AdminClient(server.socket, alice.token) as impostor:
        fails(lambda: impostor.list_decisions("alice"), grpc.StatusCode.PERMISSION_DENIED, "ADMIN_ONLY")
