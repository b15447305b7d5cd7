"""Prometheus metrics (`[server] metrics_listen` / `ecology serve --metrics`), scraped over
real HTTP from a real server and parsed with prometheus_client's own parser."""

from __future__ import annotations

import json
import urllib.request

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from server.storage import db
from tests.conftest import fails, wait_until


def scrape(url: str) -> dict:
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def value(samples: dict, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_count_rpcs_rejections_commits_and_the_world(make_server):
    server = make_server('[server]\nmetrics_listen = "127.0.0.1:0"\n[oracle]\nenabled = false\n')
    url = json.loads((server.data_dir / "server.json").read_text())["metrics"]
    alice = server.agent("alice")
    server.agent("bob")
    for _ in range(3):
        alice.transfer("bob", 5)
    alice.get_state()
    answer = alice.complete([{"role": "user", "content": "hello"}])  # the offline model
    fails(lambda: alice.transfer("bob", 10**9), grpc.StatusCode.FAILED_PRECONDITION, "INSUFFICIENT_FUNDS")
    from agent_runtime import WorldClient

    with WorldClient(server.socket, "eco_not_a_token") as stranger:
        fails(stranger.get_state, grpc.StatusCode.UNAUTHENTICATED, "UNAUTHENTICATED")

    def settled():
        # A call is counted just after its answer is sent, and events after their commit: wait
        # until the last of both shows up.
        m = scrape(url)
        done = (value(m, "ecology_events_total", type="ledger.transfer") >= 3
                and value(m, "grpc_server_handled_total", grpc_type="unary", grpc_service="ecology.v1.World",
                          grpc_method="GetState", grpc_code="UNAUTHENTICATED") >= 1)
        return m if done else None

    s = wait_until(settled, 10, "the calls and events to be counted")
    rpc = dict(grpc_type="unary", grpc_service="ecology.v1.World", grpc_method="InvokeArtifact")
    assert value(s, "grpc_server_handled_total", **rpc, grpc_code="OK") == 4  # three transfers, one LLM call
    assert value(s, "grpc_server_handled_total", **rpc, grpc_code="FAILED_PRECONDITION") == 1
    assert value(s, "grpc_server_handling_seconds_count", **rpc) == 5
    assert value(s, "grpc_server_handled_total", grpc_type="unary", grpc_service="ecology.v1.World",
                 grpc_method="GetState", grpc_code="UNAUTHENTICATED") == 1
    assert value(s, "ecology_guard_rejections_total", reason="UNAUTHENTICATED") == 1
    assert value(s, "ecology_writer_batch_size_count") >= 5  # two agents created, three transfers
    assert value(s, "ecology_writer_commit_seconds_count") == value(s, "ecology_writer_batch_size_count")
    assert value(s, "ecology_scrip_supply") == 2000  # two endowments; transfers move, never create
    assert value(s, "ecology_agents") == 2
    assert value(s, "ecology_agents_active") == 1  # alice called; bob never did
    usage = answer["usage"]
    assert value(s, "ecology_llm_tokens_total", kind="prompt") == usage["prompt_tokens"] > 0
    assert value(s, "ecology_llm_tokens_total", kind="completion") == usage["completion_tokens"]
    assert value(s, "ecology_llm_cost_micro_usd_total") == answer["cost_micro_usd"]
    assert ("ecology_sandbox_workers", (("state", "warm"),)) in s


def test_no_metrics_listener_unless_asked(server):
    info = json.loads((server.data_dir / "server.json").read_text())
    assert "metrics" not in info


@pytest.mark.sqlite_only
def test_a_stopped_server_closes_the_scrapers_connection(make_server):
    """The scraper reads through its own connection; a server that stops closes it, so the
    database is left whole: no -wal or -shm file of an open connection stays behind."""
    server = make_server('[server]\nmetrics_listen = "127.0.0.1:0"\n[oracle]\nenabled = false\n')
    url = json.loads((server.data_dir / "server.json").read_text())["metrics"]
    server.agent("alice")
    assert value(scrape(url), "ecology_agents") == 1  # the scraper's connection is open now
    assert server.stop() == 0
    left = sorted(p.name for p in server.data_dir.iterdir() if p.name.startswith(db.DB_FILE))
    assert left == [db.DB_FILE]
