"""The agent runtime against a real server: every agent is a real process started with
`python -m agent_runtime.run` (or `python -m server.cli agent run`) and the environment a
container would give it (ECOLOGY_SERVER, ECOLOGY_TOKEN / ECOLOGY_TOKEN_FILE, ECOLOGY_BRAIN).
What the agents did is read back from the world (event log, artifacts) and, for the
server's view of refused calls, from the server's access log."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from unittest import mock

import grpc
import pytest

from agent_runtime import EcologyError
from agent_runtime.actions import ActionError, parse_action, validate
from agent_runtime.brains.llm import LLMBrain
from agent_runtime.client import RetryPolicy, WorldClient, call_with_retry
from agent_runtime.config import parse as parse_config
from agent_runtime.loop import Observation
from tests import conftest
from tests.conftest import ROOT, ServerProcess, check_ledger, wait_until
from tests.test_llm_gateway import fake_llm, openai_config  # noqa: F401 - fake_llm is a fixture

PY = sys.executable


# -- helpers ------------------------------------------------------------------------------


class AgentProcess:
    """One agent as a real process, its stderr (JSON lines) in a file."""

    def __init__(self, server: ServerProcess, token: str, log_path: Path, *, brain: str = "",
                 token_file: bool = False, cli: bool = False, extra_env: dict | None = None) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("ECOLOGY_")}
        env.update(PYTHONPATH=str(ROOT), ECOLOGY_SERVER=server.socket, **(extra_env or {}))
        if token_file:
            path = log_path.with_suffix(".token")
            path.write_text(token + "\n")
            env["ECOLOGY_TOKEN_FILE"] = str(path)
        elif token:
            env["ECOLOGY_TOKEN"] = token
        if brain:
            env["ECOLOGY_BRAIN"] = brain
        cmd = [PY, "-m", "server.cli", "agent", "run"] if cli else [PY, "-m", "agent_runtime.run"]
        self.log_path = log_path
        self._log = open(log_path, "w")
        self.proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=self._log, cwd=ROOT)

    def lines(self) -> list[dict]:
        out = []
        for line in self.log_path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                out.append({"event": "non-json", "text": line})
        return out

    def wait_log(self, pred, timeout: float = 10.0) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for rec in self.lines():
                if pred(rec):
                    return rec
            assert self.proc.poll() is None, f"agent exited {self.proc.returncode}:\n{self.log_path.read_text()[-3000:]}"
            time.sleep(0.05)
        raise AssertionError(f"no such log line within {timeout}s:\n{self.log_path.read_text()[-3000:]}")

    def terminate(self, sig=signal.SIGTERM, timeout: float = 10.0) -> tuple[int, float]:
        t0 = time.monotonic()
        self.proc.send_signal(sig)
        code = self.proc.wait(timeout=timeout)
        return code, time.monotonic() - t0

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._log.close()


@pytest.fixture
def spawn(tmp_path):
    procs: list[AgentProcess] = []

    def start(server: ServerProcess, client, **kw) -> AgentProcess:
        p = AgentProcess(server, client.token, tmp_path / f"agent-{client.agent_id}-{len(procs)}.log", **kw)
        procs.append(p)
        return p

    yield start
    for p in procs:
        p.kill()


@pytest.fixture
def logged_server(tmp_path):
    """A server whose access log (one JSON line per RPC, with its status code) is kept."""
    servers = []

    def factory(config: str = "") -> ServerProcess:
        s = ServerProcess(tmp_path / f"logged{len(servers)}", config)
        real = subprocess.Popen

        def popen(args, **kw):
            return real([("info" if a == "warning" else a) for a in args], **kw)

        with mock.patch.object(conftest.subprocess, "Popen", popen):
            s.start()
        servers.append(s)
        return s

    yield factory
    for s in servers:
        s.kill()


def rpc_log(server: ServerProcess) -> list[dict]:
    out = []
    for line in Path(server.log.name).read_text().splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if rec.get("event") == "rpc":
            out.append(rec)
    return out


def config(**kw) -> str:
    return json.dumps(kw)


def all_events(client: WorldClient, types=()) -> list[dict]:
    out, after = [], 0
    while True:
        page = client.events(after=after, limit=500, types=list(types))
        if not page:
            return out
        out += page
        after = page[-1]["seq"]



def memory(client: WorldClient, agent_id: str) -> dict | None:
    try:
        art = client.read(f"{agent_id}.memory")
    except EcologyError as e:
        if e.reason == "NOT_FOUND":
            return None
        raise
    return {**json.loads(art.content), "updated_at": art.updated_at.seconds + art.updated_at.nanos / 1e9}


def notes(client: WorldClient, agent_id: str) -> list[str]:
    m = memory(client, agent_id)
    return [n["text"] for n in m["notes"]] if m else []


# -- sleeping until an event -----------------------------------------------------------------


def test_an_agent_asleep_until_a_transfer_wakes_within_a_second(make_server, spawn):
    server = make_server()
    sleeper = server.agent("sleeper", config=config(brain="plan", plan=[
        {"action": "sleep_until_event", "types": ["ledger.transfer"], "principal_ids": ["me"], "timeout": 120},
        {"action": "note", "text": "woken by a transfer"}]))
    payer = server.agent("payer")
    agent = spawn(server, sleeper, token_file=True)        # the token from a mounted file
    agent.wait_log(lambda r: r.get("event") == "sleeping_until_event")
    time.sleep(0.5)
    assert memory(sleeper, "sleeper") is None              # asleep: nothing written yet

    payer.transfer("sleeper", 7, memo="wake up")
    sent = next(e for e in all_events(payer, ["ledger.transfer"]) if e["data"].get("memo") == "wake up")
    woke = wait_until(lambda: memory(sleeper, "sleeper"), 5, "the note written on waking")
    assert woke["notes"][0]["text"] == "woken by a transfer"
    delay = woke["updated_at"] - sent["at"]                # both server times
    assert 0 < delay < 1.0, delay
    # Woken by the Subscribe stream, not by polling: the agent made no call while asleep
    # (its only action before the note was the sleep itself).
    agent.wait_log(lambda r: r.get("event") == "action" and r.get("action") == "note")  # logged after the write
    acts = [r for r in agent.lines() if r.get("event") == "action"]
    assert [a["action"] for a in acts] == ["sleep_until_event", "note"]
    assert acts[0]["woke"] == "event"


# -- the scripted brain ---------------------------------------------------------------------


def test_scripted_agents_of_every_personality_act_and_trade(make_server, spawn):
    server = make_server()
    roles = {"bob": "builder", "trey": "trader", "tina": "tester", "cora": "coordinator"}
    clients = {n: server.agent(n, config=config(personality=p, loop={"min_interval": 0.2}))
               for n, p in roles.items()}
    agents = {n: spawn(server, c) for n, c in clients.items()}
    observer = clients["bob"]

    def progress():
        evs = all_events(observer)
        by = {n: [e for e in evs if e["principal_id"] == n] for n in roles}
        tools = [e for e in by["bob"] if e["type"] == "artifact.written" and e["artifact_id"].startswith("bob.")
                 and e["artifact_id"] != "bob.memory"]
        paid_calls = [e for e in by["tina"] + by["cora"] if e["type"] == "ledger.transfer"
                      and e["data"].get("memo") == "price"]
        reviews = [e for e in by["tina"] if e["artifact_id"].startswith("tina.review.")]
        trader = [e for e in by["trey"] if e["type"] in ("escrow.purchased", "ledger.transfer")]
        coord = [e for e in by["cora"] if e["type"] == "ledger.transfer" or e["artifact_id"] == "cora.board"]
        listed = [e for e in by["bob"] if e["type"] == "escrow.listed"]
        ok = tools and paid_calls and reviews and trader and coord and listed
        return (ok and {"tools": tools, "paid": paid_calls, "reviews": reviews, "trader": trader,
                        "coord": coord, "listed": listed})

    found = wait_until(progress, 20, "every personality to act", every=0.5)
    # The builder's tools are real: executable, priced, and they run.
    tool_id = found["tools"][0]["artifact_id"]
    meta = observer.get_metadata(tool_id)
    assert meta["can_execute"] and meta["metadata"]["price"] >= 1 and meta["interface"]
    review = json.loads(clients["tina"].read(found["reviews"][0]["artifact_id"]).content)
    assert review["reviewer"] == "tina" and review["ok"] is True, review
    # Each wrote its personality into its memory first.
    for name, role in roles.items():
        assert notes(clients[name], name)[0].startswith(f"I am a {role}")
    for name, p in agents.items():
        code, took = p.terminate()
        assert code == 0 and took < 5, (name, code, took)
        assert not [r for r in p.lines() if r.get("level") == "error"], p.log_path.read_text()[-2000:]
    check_ledger(server)


# -- compute debt -----------------------------------------------------------------------------


def test_in_compute_debt_the_loop_waits_exactly_until_usable(logged_server, spawn):
    # Every write costs 5 compute; the agent refills 5/s with a capacity of 5, so after
    # two writes each write leaves it 1 s in debt.
    server = logged_server('[costs]\nwrite = 5.0\nread = 0.0\n')
    debtor = server.agent("debtor", compute_rate=5.0, compute_capacity=5.0, config=config(
        brain="plan", repeat=True, plan=[{"action": "write", "artifact_id": "debtor.scratch", "content": "x"}],
        loop={"min_interval": 0}))
    watcher = server.agent("watcher")          # reads the log (the debtor's compute is for the debtor)
    agent = spawn(server, debtor)
    wait_until(lambda: len([e for e in all_events(watcher, ["artifact.written"])
                            if e["principal_id"] == "debtor"]) >= 5, 10, "five writes", every=0.2)
    agent.terminate()
    writes = [e["at"] for e in all_events(watcher, ["artifact.written"]) if e["principal_id"] == "debtor"]
    gaps = [b - a for a, b in zip(writes[1:], writes[2:])]
    assert gaps and all(0.98 <= g < 1.3 for g in gaps), gaps          # exactly the debt, not more
    calls = [r for r in rpc_log(server) if r.get("principal") == "debtor"]
    assert len([r for r in calls if r["method"].endswith("/WriteArtifact") and r["code"] == "OK"]) >= 5
    refused = [r for r in calls if r["code"] == "RESOURCE_EXHAUSTED"]
    assert not refused, refused                                        # no RESOURCE_EXHAUSTED hammering
    waits = [r for r in agent.lines() if r.get("event") == "in_debt"]
    assert waits and all(0.9 <= w["seconds"] <= 1.0 for w in waits), waits


# -- configuration is the agent's artifact --------------------------------------------------


def test_the_controller_rewrites_the_configuration_and_the_agent_follows(make_server, spawn):
    server = make_server()
    shifty = server.agent("shifty", config=config(personality="builder", loop={"min_interval": 0.2}))
    boss = server.agent("boss")
    boss.write("boss.echo", "def echo(text):\n    return text\n", can_execute=True,
               interface=[{"name": "echo", "input_schema": {"type": "object", "properties": {"text": {"type": "string"}}}}],
               metadata={"price": 1})
    shifty.transfer_control("shifty", "boss")    # whoever controls the artifact controls the agent
    agent = spawn(server, shifty)
    wait_until(lambda: any(e["principal_id"] == "shifty" and e["artifact_id"].startswith("shifty.")
                           and e["artifact_id"] != "shifty.memory"
                           for e in all_events(boss, ["artifact.written"])), 10, "a tool by the builder")
    outsider = server.agent("outsider")
    with pytest.raises(EcologyError) as e:
        outsider.write("shifty", config(personality="trader"))
    assert e.value.reason == "ACCESS_DENIED"

    boss.write("shifty", config(personality="tester", loop={"min_interval": 0.2}))
    agent.wait_log(lambda r: r.get("event") == "config_loaded" and r.get("personality") == "tester")
    wait_until(lambda: any(n.startswith("I am a tester") for n in notes(shifty, "shifty")), 10, "the tester's note")
    review = wait_until(lambda: [e for e in all_events(boss, ["artifact.written"])
                                 if e["artifact_id"] == "shifty.review.boss.echo"], 10, "a review of boss.echo")
    assert review[0]["principal_id"] == "shifty"
    assert any(r.get("event") == "config_changed" and r.get("by") == "boss" for r in agent.lines())


# -- the LLM brain ----------------------------------------------------------------------------


def test_llm_brain_retries_a_malformed_answer_once_then_falls_back(make_server, spawn, fake_llm):  # noqa: F811
    server = make_server(openai_config(fake_llm.url))
    fake_llm.reply(content="I think I will rest for now.")                        # malformed
    fake_llm.reply(content='{"action": "note", "text": "the model took notes"}')  # the retry: fine
    fake_llm.reply(content="still no JSON here")                                  # malformed
    fake_llm.reply(content='{"action": "fly", "to": "the moon"}')                 # malformed again
    thinker = server.agent("thinker", config=config(
        brain="llm", personality="a careful scholar", prompt="Keep notes of everything.", model="test-model",
        loop={"min_interval": 0.1, "fallback_sleep": 30, "max_tokens": 200}))
    agent = spawn(server, thinker)
    wait_until(lambda: len(fake_llm.requests) >= 4, 15, "four model calls")
    time.sleep(0.5)
    assert len(fake_llm.requests) == 4            # then it sleeps 30 s instead of asking again

    first = fake_llm.requests[0]["body"]
    assert first["response_format"] == {"type": "json_object"} and first["model"] == "test-model"
    assert first["max_tokens"] == 200
    system, user = first["messages"][0]["content"], first["messages"][1]["content"]
    assert "a careful scholar" in system and "Keep notes of everything." in system and '"sleep_until_event"' in system
    assert "Server time (UTC):" in user and "Scrip: 1000" in user and "Your id: thinker" in user

    retry = fake_llm.requests[1]["body"]["messages"]
    assert retry[:2] == first["messages"]
    assert retry[2] == {"role": "assistant", "content": "I think I will rest for now."}
    assert retry[3]["role"] == "user" and "could not be used" in retry[3]["content"]
    assert "not valid JSON" in retry[3]["content"] or "no JSON object" in retry[3]["content"]
    assert notes(thinker, "thinker") == ["the model took notes"]

    # The next decision shows the note and its result among the recent actions.
    third_user = fake_llm.requests[2]["body"]["messages"][1]["content"]
    assert '"action": "note"' in third_user and "the model took notes" in third_user
    fourth = fake_llm.requests[3]["body"]["messages"]
    assert "unknown action 'fly'" not in fourth[-1]["content"]    # the 4th call is the retry of the 3rd
    assert fourth[-2] == {"role": "assistant", "content": "still no JSON here"}
    sleeps = agent.wait_log(lambda r: r.get("event") == "sleeping")
    assert sleeps["seconds"] == 30 and "unusably twice" in sleeps["why"]
    bad = [r for r in agent.lines() if r.get("event") == "llm_answer_malformed"]
    assert [b["attempt"] for b in bad] == [1, 1, 2] and "unknown action 'fly'" in bad[-1]["error"]
    budget = thinker.llm_budget()
    assert budget["spent_micro_usd"] > 0                      # it paid for its thinking


def _obs(**kw) -> Observation:
    cfg = parse_config(config(brain="llm", loop={"fallback_sleep": 7}), "unit")
    base = dict(agent_id="unit", now=1_800_000_000.0, scrip=50,
                compute={"balance": 10.0, "rate": 1.0, "capacity": 100.0, "seconds_until_usable": 0.0},
                stock={"llm_budget": {"used": 1, "quota": 99}}, last_event_seq=3, config=cfg,
                extras={"next_mint_at": "2027-01-15T08:00:00Z"})
    return Observation(**{**base, **kw})


def test_llm_brain_parser_and_single_retry_unit():
    """Unit level, with a plain function standing in for genesis_llm.complete (the real
    gateway and a real HTTP model are exercised by the test above)."""
    asked: list[list[dict]] = []

    def complete(answers):
        it = iter(answers)

        def fn(messages, model=None, max_tokens=None, response_format=None, request_id=""):
            assert request_id  # each call carries an id the decision trace links to
            asked.append(messages)
            assert response_format == {"type": "json_object"}
            return {"content": next(it), "cost_micro_usd": 3}
        return fn

    obs = _obs()
    brain = LLMBrain(obs.config, complete(['```json\n{"action": "transfer", "to": "bob", "amount": "5"}\n```']))
    assert brain.decide(obs) == {"action": "transfer", "to": "bob", "amount": 5, "memo": ""}
    assert "Next mint at" in asked[0][1]["content"]          # injected state, whatever GetState adds
    asked.clear()
    brain = LLMBrain(obs.config, complete(["{not json", '{"action": "sleep", "seconds": 2}']))
    assert brain.decide(obs) == {"action": "sleep", "seconds": 2.0}
    assert len(asked) == 2 and "not valid JSON" in asked[1][-1]["content"]
    asked.clear()
    brain = LLMBrain(obs.config, complete(["nope", '{"action": "transfer", "to": "bob", "amount": -1}', "x"]))
    fallback = brain.decide(obs)
    assert fallback["action"] == "sleep" and fallback["seconds"] == 7 and len(asked) == 2
    assert brain.stats == {"calls": 2, "retries": 1, "fallbacks": 1, "cost_micro_usd": 6}

    def broke(messages, **kw):
        raise EcologyError(grpc.StatusCode.RESOURCE_EXHAUSTED, "INSUFFICIENT_RESOURCES", "budget")
    waiting = LLMBrain(obs.config, broke).decide(obs)
    assert waiting["action"] == "sleep_until_event" and waiting["types"] == ["quota.transferred"]


def test_action_language_validation():
    assert validate({"action": "invoke", "artifact_id": "t.x", "method": "run"}) == {
        "action": "invoke", "artifact_id": "t.x", "method": "run", "args": {}}
    assert parse_action('Sure! {"action": "sleep_until", "condition": {"scrip_at_least": 10}}')["timeout"] == 300
    for bad, msg in [({"action": "write", "artifact_id": "a", "content": "x", "interface": [{"name": "f"}]},
                      "executable"),
                     ({"action": "transfer", "to": "b", "amount": 0}, "amount"),
                     ({"action": "sleep_until", "condition": {"sunrise": 1}}, "condition"),
                     ({"action": "read", "artifact_id": "bad id"}, "artifact id"),
                     ({"do": "read"}, "unknown action")]:
        with pytest.raises(ActionError, match=msg):
            validate(bad)


# -- failures -------------------------------------------------------------------------------


def test_repeated_failures_are_reported_and_the_loop_slows_down(make_server, spawn):
    server = make_server()
    clumsy = server.agent("clumsy", config=config(
        brain="plan", repeat=True, plan=[{"action": "read", "artifact_id": "no.such.thing"}],
        loop={"min_interval": 0, "error_backoff": 0.02, "error_backoff_max": 0.6, "report_after": 5}))
    agent = spawn(server, clumsy)
    report = agent.wait_log(lambda r: r.get("event") == "repeated_failures", timeout=10)
    assert report["failures"] == 5 and report["reason"] == "NOT_FOUND" and report["level"] == "error"
    saved = wait_until(lambda: (memory(clumsy, "clumsy") or {}).get("reports"), 5, "the report in memory")
    assert saved[0]["type"] == "agent.repeated_failures" and saved[0]["failures"] == 5
    t0 = time.monotonic()
    before = len([r for r in agent.lines() if r.get("event") == "action"])
    time.sleep(1.5)
    after = len([r for r in agent.lines() if r.get("event") == "action"])
    assert after - before <= 4, (before, after)       # at the slow pace (0.6 s), not a tight loop
    assert time.monotonic() - t0 < 5


# -- restarts, signals ------------------------------------------------------------------------


def test_the_agent_reconnects_after_the_server_is_killed_and_restarted(make_server, spawn):
    server = make_server()
    phoenix = server.agent("phoenix", config=config(brain="plan", repeat=True, plan=[
        {"action": "write", "artifact_id": "phoenix.tick", "content": "tick"}, {"action": "sleep", "seconds": 0.2}],
        loop={"min_interval": 0.1}))
    agent = spawn(server, phoenix)
    token = phoenix.token

    def version(client, aid="phoenix.tick"):
        try:
            return client.read(aid).version
        except EcologyError:
            return 0

    wait_until(lambda: version(phoenix) >= 2, 10, "ticks")
    server.kill()                       # SIGKILL: the agent's streams and calls break
    time.sleep(1.0)
    server.start()
    again = server.client(token)
    v = version(again)
    wait_until(lambda: version(again) >= v + 3, 10, "ticks after the restart")
    assert agent.proc.poll() is None
    # The configuration stream resumed too: a new configuration is followed.
    again.write("phoenix", config(brain="plan", repeat=True, plan=[
        {"action": "write", "artifact_id": "phoenix.after", "content": "new"}, {"action": "sleep", "seconds": 0.2}]))
    wait_until(lambda: version(again, "phoenix.after") >= 1, 10, "the new configuration followed")
    code, took = agent.terminate()
    assert code == 0 and took < 3
    assert not [r for r in agent.lines() if r.get("event") in ("crashed", "fatal")]


def test_sigterm_and_sigint_stop_the_agent_promptly_with_exit_0(make_server, spawn):
    server = make_server()
    for i, sig in enumerate((signal.SIGTERM, signal.SIGINT)):
        napper = server.agent(f"napper{i}", config=config(brain="plan", plan=[{"action": "sleep", "seconds": 600}]))
        agent = spawn(server, napper, cli=(i == 0))           # `ecology agent run` and `python -m agent_runtime.run`
        agent.wait_log(lambda r: r.get("event") == "started")
        time.sleep(0.3)
        code, took = agent.terminate(sig)
        assert code == 0 and took < 2.0, (sig, code, took)
        assert agent.lines()[-1]["event"] == "stopped"


def test_exit_codes_without_a_token_or_with_an_unknown_one(make_server, spawn):
    server = make_server()

    class Nobody:
        token, agent_id = "", "nobody"
    missing = spawn(server, Nobody)
    assert missing.proc.wait(timeout=10) == 2
    Nobody.token = "eco_not_a_real_token"
    unknown = spawn(server, Nobody)
    assert unknown.proc.wait(timeout=10) == 3
    assert unknown.lines()[-1]["event"] == "fatal"


# -- the SDK ------------------------------------------------------------------------------------


def test_call_with_retry_sleeps_exactly_the_retry_info_and_is_bounded():
    slept: list[float] = []
    calls = {"n": 0}

    def flaky(fail_times, err):
        def fn():
            calls["n"] += 1
            if calls["n"] <= fail_times:
                raise err
            return "done"
        return fn

    limited = EcologyError(grpc.StatusCode.RESOURCE_EXHAUSTED, "RATE_LIMITED", "slow down", retry_after=0.125)
    assert call_with_retry(flaky(3, limited), sleep=slept.append) == "done"
    assert slept == [0.125, 0.125, 0.125]
    calls["n"], slept[:] = 0, []
    with pytest.raises(EcologyError):
        call_with_retry(flaky(99, limited), policy=RetryPolicy(attempts=4), sleep=slept.append)
    assert calls["n"] == 4 and slept == [0.125] * 3
    # No RetryInfo (budget exhausted): raised at once. Too long a RetryInfo: raised too.
    calls["n"], slept[:] = 0, []
    broke = EcologyError(grpc.StatusCode.RESOURCE_EXHAUSTED, "INSUFFICIENT_RESOURCES", "no budget")
    with pytest.raises(EcologyError):
        call_with_retry(flaky(1, broke), sleep=slept.append)
    long = EcologyError(grpc.StatusCode.RESOURCE_EXHAUSTED, "INSUFFICIENT_RESOURCES", "debt", retry_after=99)
    calls["n"] = 0
    with pytest.raises(EcologyError):
        call_with_retry(flaky(1, long), policy=RetryPolicy(max_delay=30), sleep=slept.append)
    assert slept == []
    # A lost connection: backoff, but only for calls that are safe to repeat.
    down = EcologyError(grpc.StatusCode.UNAVAILABLE, "UNAVAILABLE", "connection refused")
    calls["n"] = 0
    assert call_with_retry(flaky(2, down), sleep=slept.append) == "done" and len(slept) == 2
    calls["n"] = 0
    with pytest.raises(EcologyError):
        call_with_retry(flaky(1, down), idempotent=False, sleep=slept.append)


def test_a_client_with_a_policy_honours_rate_limits_instead_of_hammering(logged_server):
    server = logged_server("[rate_limits]\nprincipal_rate = 20.0\nprincipal_burst = 5.0\n")
    plain = server.agent("eager")
    with WorldClient(server.socket, plain.token, retry=RetryPolicy()) as patient:
        t0 = time.monotonic()
        for _ in range(25):
            patient.get_state()
        took = time.monotonic() - t0
    assert 0.8 < took < 3.0, took                  # 20 calls beyond the burst at 20/s
    calls = [r for r in rpc_log(server) if r.get("principal") == "eager"]
    refused = [r for r in calls if r["code"] != "OK"]
    # Each call beyond the burst is refused at most once, then sent again after exactly
    # its RetryInfo (when its token has arrived): no hammering.
    assert all(r["code"] == "RESOURCE_EXHAUSTED" for r in refused)
    assert len(refused) <= 20 and len(calls) - len(refused) == 25, (len(calls), len(refused))
    with pytest.raises(EcologyError) as e:         # without a policy the refusal reaches the caller
        for _ in range(10):
            plain.get_state()
    assert e.value.reason == "RATE_LIMITED" and e.value.retry_after > 0


def test_sleep_until_a_condition_is_rechecked_on_events_not_polled(make_server, spawn):
    server = make_server()
    saver = server.agent("saver", config=config(brain="plan", plan=[
        {"action": "sleep_until", "condition": {"scrip_at_least": 1100}, "timeout": 120},
        {"action": "note", "text": "rich enough"}]))
    donor = server.agent("donor")
    agent = spawn(server, saver)
    agent.wait_log(lambda r: r.get("event") == "sleeping_until")
    donor.transfer("saver", 60)                   # 1060: checked again, still asleep
    time.sleep(0.6)
    assert memory(saver, "saver") is None
    donor.transfer("saver", 40)                   # 1100: wakes
    woke = wait_until(lambda: memory(saver, "saver"), 5, "the note")
    assert woke["notes"][0]["text"] == "rich enough"
    acts = [r for r in agent.lines() if r.get("event") == "action"]
    assert acts[0]["action"] == "sleep_until" and acts[0]["woke"] == "condition"
