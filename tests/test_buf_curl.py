"""buf curl (a generic gRPC client that knows nothing of this project) against a real
server, schema from server reflection only: it lists the services on both reflection
versions, calls GetState with a token, makes an InvokeArtifact transfer, and prints the
error details of a refusal readably (the ErrorInfo and RetryInfo, as the Struct summary it
decodes). The README's own buf curl block runs in tests/test_readme_examples.py."""

from __future__ import annotations

import base64
import json
import os
import subprocess

import pytest
from google.protobuf import struct_pb2
from google.rpc import error_details_pb2

from tests.buf_tool import ensure_buf

FLAGS = ["--protocol", "grpc", "--http2-prior-knowledge"]
PROXY_VARS = {"grpc_proxy", "http_proxy", "https_proxy", "all_proxy", "no_proxy"}


@pytest.fixture(scope="module")
def buf():
    return ensure_buf()


def curl(buf, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k.lower() not in PROXY_VARS}
    return subprocess.run([str(buf), "curl", *FLAGS, *args], capture_output=True, text=True, timeout=timeout,
                          env=env)


def url(server, path: str = "") -> str:
    return f"http://{server.tcp}{path}"


def bearer(client) -> list[str]:
    return ["-H", f"authorization: Bearer {client.token}"]


@pytest.mark.parametrize("protocol", ["grpc-v1", "grpc-v1alpha"])
def test_lists_services_and_methods_on_both_reflection_versions(buf, server, protocol):
    out = curl(buf, "--reflect-protocol", protocol, "--list-services", url(server))
    assert out.returncode == 0, out.stderr
    assert set(out.stdout.split()) == {
        "ecology.v1.World", "ecology.v1.Admin", "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection"}
    out = curl(buf, "--reflect-protocol", protocol, "--list-methods", url(server))
    assert out.returncode == 0, out.stderr
    methods = set(out.stdout.split())
    assert {"ecology.v1.World/GetState", "ecology.v1.World/InvokeArtifact", "ecology.v1.World/Subscribe",
            "ecology.v1.Admin/GetStats", "grpc.health.v1.Health/List"} <= methods


def test_get_state_and_a_transfer(buf, server):
    alice, bob = server.agent("alice"), server.agent("bob")
    out = curl(buf, *bearer(alice), url(server, "/ecology.v1.World/GetState"))
    assert out.returncode == 0, out.stderr
    state = json.loads(out.stdout)
    assert state["principalId"] == "alice" and state["scrip"] == "1000"  # proto JSON: int64 as a string

    transfer = {"artifact_id": "genesis_ledger", "method": "transfer", "args": {"to": "bob", "amount": 5}}
    out = curl(buf, *bearer(alice), "-d", json.dumps(transfer), url(server, "/ecology.v1.World/InvokeArtifact"))
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)["result"]
    assert result["amount"] == 5 and result["to"] == "bob"
    assert (alice.get_state().scrip, bob.get_state().scrip) == (995, 1005)

    # The same over the unix socket.
    out = curl(buf, *bearer(bob), "--unix-socket", server.socket.removeprefix("unix:"),
               "http://localhost/ecology.v1.World/GetState")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["scrip"] == "1005"


def test_health_list_answers_every_service(buf, server):
    out = curl(buf, url(server, "/grpc.health.v1.Health/List"))
    assert out.returncode == 0, out.stderr
    statuses = json.loads(out.stdout)["statuses"]
    assert statuses == {name: {"status": "SERVING"} for name in ("", "ecology.v1.World", "ecology.v1.Admin")}


def _error(out: subprocess.CompletedProcess) -> dict:
    """buf curl's error JSON (it prints it on stderr)."""
    return json.loads(out.stderr)


def _details(err: dict) -> tuple[dict, dict | None, dict]:
    """(ErrorInfo, RetryInfo or None, summary Struct) from buf's details: the typed ones
    decoded here from their base64 value, the summary as buf printed it (`debug`)."""
    by_type = {d["type"]: d for d in err["details"]}
    assert err["details"][-1]["type"] == "google.protobuf.Struct", err

    def raw(d):
        return base64.b64decode(d["value"] + "=" * (-len(d["value"]) % 4))

    info = error_details_pb2.ErrorInfo.FromString(raw(by_type["google.rpc.ErrorInfo"]))
    info_d = {"reason": info.reason, "domain": info.domain, "metadata": dict(info.metadata)}
    retry_d = None
    if "google.rpc.RetryInfo" in by_type:
        ri = error_details_pb2.RetryInfo.FromString(raw(by_type["google.rpc.RetryInfo"]))
        retry_d = {"seconds": ri.retry_delay.seconds + ri.retry_delay.nanos / 1e9}
    summary = by_type["google.protobuf.Struct"]
    # buf's base64 of the Struct and its decoded `debug` agree.
    assert json.loads(json.dumps(summary["debug"])) == json.loads(
        json.dumps(_struct_dict(struct_pb2.Struct.FromString(raw(summary)))))
    return info_d, retry_d, summary["debug"]


def _struct_dict(s: struct_pb2.Struct) -> dict:
    from google.protobuf import json_format

    return json_format.MessageToDict(s)


def test_an_error_prints_error_info_decoded(buf, server):
    alice = server.agent("alice")
    server.agent("bob")
    too_much = {"artifact_id": "genesis_ledger", "method": "transfer", "args": {"to": "bob", "amount": 10**6}}
    out = curl(buf, *bearer(alice), "-d", json.dumps(too_much), url(server, "/ecology.v1.World/InvokeArtifact"))
    assert out.returncode == 9 * 8, (out.returncode, out.stderr)  # FAILED_PRECONDITION
    err = _error(out)
    assert err["code"] == "failed_precondition"
    info, retry, summary = _details(err)
    assert info == {"reason": "INSUFFICIENT_FUNDS", "domain": "ecology.v1", "metadata": {}}
    assert retry is None
    assert summary == {"google.rpc.ErrorInfo": info}

    # Bad input names its field, in the summary too.
    bad = {"artifact_id": "genesis_ledger", "method": "transfer", "args": {"to": "bob", "amount": "lots"}}
    out = curl(buf, *bearer(alice), "-d", json.dumps(bad), url(server, "/ecology.v1.World/InvokeArtifact"))
    assert out.returncode == 3 * 8, out.stderr  # INVALID_ARGUMENT
    info, retry, summary = _details(_error(out))
    assert info["reason"] == "INVALID_ARGS" and info["metadata"]["field"]
    assert summary["google.rpc.ErrorInfo"]["metadata"]["field"] == info["metadata"]["field"]


def test_a_rate_limited_call_prints_retry_info_decoded(buf, make_server):
    server = make_server("[rate_limits]\nprincipal_rate = 0.01\nprincipal_burst = 1.0\n")
    alice = server.agent("alice")
    first = curl(buf, *bearer(alice), url(server, "/ecology.v1.World/GetState"))
    assert first.returncode == 0, first.stderr
    out = curl(buf, *bearer(alice), url(server, "/ecology.v1.World/GetState"))
    assert out.returncode == 8 * 8, (out.returncode, out.stderr)  # RESOURCE_EXHAUSTED
    err = _error(out)
    assert err["code"] == "resource_exhausted"
    info, retry, summary = _details(err)
    assert info["reason"] == "RATE_LIMITED" and retry is not None
    # 1 token at 0.01/s: about 100 s to wait, as RetryInfo, in the summary as a proto3 JSON duration.
    assert 90 < retry["seconds"] <= 100
    printed = summary["google.rpc.RetryInfo"]["retryDelay"]
    assert printed.endswith("s") and abs(float(printed[:-1]) - retry["seconds"]) < 1e-6
    assert summary["google.rpc.ErrorInfo"] == info
    assert float(info["metadata"]["retry_after_seconds"]) == pytest.approx(retry["seconds"], abs=1e-6)
