"""Trading control: selling an agent's configuration through escrow (the running agent
follows its new controller), and spawning agents that start with nothing."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from agent_runtime import EcologyError
from tests.conftest import check_ledger
from tests.test_agent_runtime import spawn, wait_until  # noqa: F401 - spawn is a fixture


def reason(fn, *args, **kw) -> str:
    with pytest.raises(EcologyError) as e:
        fn(*args, **kw)
    return e.value.reason


def plan(*actions, prompt: str = "") -> str:
    return json.dumps({"brain": "plan", "prompt": prompt, "plan": list(actions), "loop": {"min_interval": 0.2}})


def exists(client, artifact_id: str) -> bool:
    try:
        client.read(artifact_id)
        return True
    except EcologyError as e:
        if e.reason == "NOT_FOUND":
            return False
        raise


def test_buying_an_agents_configuration_through_escrow_gives_control_of_the_running_agent(make_server, spawn):  # noqa: F811
    server = make_server()
    pawn = server.agent("pawn", config=plan({"action": "write", "artifact_id": "pawn.before", "content": "mine"},
                                            prompt="You work for yourself."))
    buyer = server.agent("buyer")
    agent = spawn(server, pawn)                                # a real `python -m agent_runtime.run`
    wait_until(lambda: exists(buyer, "pawn.before"), 15, "the agent's first plan")
    assert reason(buyer.write, "pawn", plan(prompt="obey")) == "ACCESS_DENIED"   # not for sale yet

    pawn.escrow_list("pawn", 50)                               # the agent sells control of its own configuration
    assert buyer.get_metadata("pawn")["state"]["controller"] == "genesis_escrow"
    buyer.escrow_purchase("pawn")
    assert buyer.get_metadata("pawn")["state"]["controller"] == "buyer"
    assert pawn.balance() == 1050 and buyer.balance() == 950

    # The seller lost write access (and every other control right).
    assert reason(pawn.write, "pawn", plan(prompt="I take it back")) == "ACCESS_DENIED"
    assert reason(pawn.escrow_list, "pawn", 1) == "ACCESS_DENIED"
    assert reason(pawn.transfer_control, "pawn", "pawn") == "ACCESS_DENIED"
    assert reason(pawn.delete, "pawn") == "ACCESS_DENIED"

    # The buyer rewrites the prompt and the plan; the running agent re-reads and follows.
    version = buyer.write("pawn", plan({"action": "write", "artifact_id": "pawn.for-buyer", "content": "yours"},
                                       prompt="You work for buyer now.")).artifact.version
    agent.wait_log(lambda r: r.get("event") == "config_loaded" and r.get("version") == version, timeout=15)
    wait_until(lambda: exists(buyer, "pawn.for-buyer"), 15, "the agent acting on the buyer's plan")
    made = buyer.get_metadata("pawn.for-buyer")
    assert made["created_by"] == "pawn"                        # the agent itself did it, on its own account
    assert json.loads(pawn.read("pawn").content)["prompt"] == "You work for buyer now."   # it still reads itself
    assert any(r.get("event") == "config_changed" and r.get("by") == "buyer" for r in agent.lines())
    assert agent.proc.poll() is None
    check_ledger(server)


def test_spawned_agent_starts_with_nothing_and_is_funded_by_transfers(make_server):
    server = make_server()
    creator = server.agent("creator")
    outsider = server.agent("outsider")
    config = plan({"action": "note", "text": "born"})
    used_before = {s["name"]: s["used"] for s in creator.quotas()["stock"]}["disk_bytes"]
    made = creator.create_agent("kid", config)
    assert made["controller"] == "creator" and made["access_contract_id"] == "genesis_self_owned"
    meta = creator.get_metadata("kid")
    assert meta["kind"] == "agent" and meta["has_standing"] and meta["can_execute"]
    assert meta["created_by"] == "creator" and meta["state"]["controller"] == "creator"
    assert meta["billed_to"] == "creator"
    assert {s["name"]: s["used"] for s in creator.quotas()["stock"]}["disk_bytes"] == used_before + len(config)

    q = creator.quotas("kid")
    assert creator.balance("kid") == 0
    assert [(f["rate"], f["capacity"], f["balance"]) for f in q["flow"]] == [(0.0, 0.0, 0.0)]
    assert {s["name"]: (s["quota"], s["used"]) for s in q["stock"]} == {"disk_bytes": (0, 0), "llm_budget": (0, 0)}

    # The creator manages it; others may not; the id is taken; quotas are respected.
    creator.write("kid", plan({"action": "note", "text": "born again"}))
    assert reason(outsider.write, "kid", "{}") == "ACCESS_DENIED"
    assert reason(creator.create_agent, "kid", "{}") == "ALREADY_EXISTS"
    assert reason(creator.create_agent, "genesis_kid", "{}") == "INVALID_ARGS"
    assert reason(creator.create_agent, "kid2", "{}", contract="no-such-contract") == "INVALID_ARGS"
    poor = server.agent("poor", disk_quota_bytes=10)
    assert reason(poor.create_agent, "kid3", "x" * 100) == "QUOTA_EXCEEDED"
    assert not exists(creator, "kid3")

    # Funding by transfers: scrip, compute rate and capacity, disk.
    creator.transfer("kid", 100)
    creator.transfer_quota("kid", "compute_rate", 2)
    creator.transfer_quota("kid", "compute_capacity", 20)
    creator.transfer_quota("kid", "disk_bytes", 10_000)
    q = creator.quotas("kid")
    assert creator.balance("kid") == 100
    assert (q["flow"][0]["rate"], q["flow"][0]["capacity"]) == (2.0, 20.0)
    assert {s["name"]: s["quota"] for s in q["stock"]}["disk_bytes"] == 10_000
    events = [e for e in creator.events(limit=500, types=["agent.created"]) if e["artifact_id"] == "kid"]
    assert len(events) == 1 and events[0]["principal_id"] == "creator"
    check_ledger(server)


def test_the_main_jobs_spawn_check_launches_a_funded_spawned_agent(tmp_path):
    from agent_runtime.launcher import Launcher
    from server.app import WorldServer
    from server.config import build
    from server.main_job import MainJob
    from tests.conftest import storage_overrides

    data = tmp_path / "world"
    job = MainJob(build(storage_overrides()), data, agents=0, duration=None, backend="process", brain="scripted", listen=[])

    async def scenario() -> dict:
        data.mkdir()
        job.tokens_dir.mkdir()
        job.socket.parent.mkdir()
        server = WorldServer(job.config, data, [f"unix:{job.socket}"])
        await server.start()
        job.server = server
        kernel, ex = server.kernel, server.executor

        def invoke(caller, artifact_id, method, **args):
            return ex.run(lambda conn: kernel.op_invoke(conn, caller, artifact_id, method, args))

        launcher = await asyncio.to_thread(Launcher, "process", f"unix:{job.socket}",
                                           state_dir=data / "launcher", restart="never")
        out: dict = {}
        try:
            await ex.run(lambda conn: kernel.op_create_agent(conn, "creator", "{}"))   # operator's: never auto-started
            await invoke("creator", "genesis_store", "create_agent", agent_id="kid",
                         config=plan({"action": "write", "artifact_id": "kid.hello", "content": "hi"}))
            out["unfunded"] = await job.launch_spawned(launcher)          # no compute rate yet
            await invoke("creator", "genesis_rights_registry", "transfer_quota", to="kid",
                         resource="compute_rate", amount=5)
            await invoke("creator", "genesis_rights_registry", "transfer_quota", to="kid",
                         resource="compute_capacity", amount=50)
            await invoke("creator", "genesis_rights_registry", "transfer_quota", to="kid",
                         resource="disk_bytes", amount=100_000)
            out["funded"] = await job.launch_spawned(launcher)
            out["again"] = await job.launch_spawned(launcher)             # already known: not twice
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                row = server.reader.execute("SELECT created_by FROM artifacts WHERE id='kid.hello'").fetchone()
                if row:
                    out["hello_by"] = row[0]
                    break
                await asyncio.sleep(0.1)
            out["status"] = {s["agent_id"]: s["alive"] for s in launcher.status()}
            out["token_file"] = (job.tokens_dir / "kid.token").exists()
            out["spawned"] = list(job.spawned)
        finally:
            await asyncio.to_thread(launcher.close, 10.0)
            await server.stop()
        return out

    out = asyncio.run(scenario())
    assert out["unfunded"] == [] and out["funded"] == ["kid"] and out["again"] == []
    assert out["hello_by"] == "kid", out
    assert out["status"] == {"kid": True} and out["token_file"] and out["spawned"] == ["kid"]
