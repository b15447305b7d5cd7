"""The kubernetes launcher backend (agent_runtime/launcher/kubernetes.py).

No Kubernetes cluster can run on these machines, so:
  * the manifests are validated against the Kubernetes JSON schemas shipped in kubernetes-validate
    (offline, strict: unknown fields fail) for a supported version and the newest it has, and every
    limit, securityContext field and NetworkPolicy rule is checked exactly;
  * `ecology agent manifest` is run as a command and its YAML parsed and validated;
  * the backend's apply path runs the official `kubernetes` client against a minimal API server on
    a real socket (tests/k8s_fake_api.py), through the real Launcher and its supervisor: objects
    created in order, replaced on conflict, Pod status followed by the watch, restarts with backoff,
    deletion on stop;
  * the live test against a real cluster is tests_live/test_kubernetes_live.py, outside the default
    suite (no cluster can run on these machines); run it with KUBECONFIG set.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from agent_runtime.launcher import Launcher, make_backend
from agent_runtime.launcher import kubernetes as k8s
from agent_runtime.launcher.base import AgentLimits
from tests.conftest import ROOT, wait_until
from tests.k8s_fake_api import K8S_VERSION, FakeKubeAPI

VERSIONS = (K8S_VERSION, kubernetes_validate.latest_version())
TOKEN = "tok_" + "s3cr3t" * 6
LIMITS = {"memory_mb": 256, "cpus": 0.5, "pids": 64}


def validate_all(objects: list[dict]) -> None:
    for obj in objects:
        for version in VERSIONS:
            kubernetes_validate.validate(obj, version, strict=True)     # raises on any schema error


def by_kind(objects: list[dict]) -> dict[str, dict]:
    return {o["kind"]: o for o in objects}


# -- pure manifests ---------------------------------------------------------------------

@pytest.mark.parametrize("server", ["10.0.0.5:50051", "[fd00::7]:50051", "world:50051", "world.prod:50051",
                                    "world.prod.svc.cluster.local:443"])
def test_manifests_validate_against_the_kubernetes_schemas(server):
    objects = k8s.agent_manifests("builder-1", TOKEN, server, LIMITS, namespace="eco",
                                  runtime_class="gvisor", tls={"ca": "CA PEM", "cert": "CERT", "key": "KEY"})
    assert [o["kind"] for o in objects] == ["NetworkPolicy", "Secret", "Pod"]   # the order they are applied
    validate_all(objects)
    assert all(o["metadata"]["namespace"] == "eco" for o in objects)


def test_the_schema_validation_can_fail():
    pod = k8s.pod_manifest("a", "10.0.0.5:1")
    pod["spec"]["containers"][0]["securityContext"]["runAsUsr"] = 10001         # a typo: refused
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(pod, K8S_VERSION, strict=True)
    pod = k8s.pod_manifest("a", "10.0.0.5:1")
    pod["spec"]["securityContext"]["runAsUser"] = "root"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(pod, K8S_VERSION, strict=True)


def test_pod_limits_and_security_context_are_those_of_the_docker_backend():
    limits = AgentLimits.from_config({"memory_mb": 300, "cpus": 0.25, "pids": 50, "tmpfs_mb": 8})
    pod = k8s.pod_manifest("builder-1", "10.0.0.5:50051", limits, namespace="eco", image="reg/agent:1",
                           runtime_class="gvisor", restart_policy="Never")
    spec = pod["spec"]
    assert spec["automountServiceAccountToken"] is False
    assert spec["enableServiceLinks"] is False
    assert (spec["hostNetwork"], spec["hostPID"], spec["hostIPC"]) == (False, False, False)
    assert spec["runtimeClassName"] == "gvisor"
    assert spec["restartPolicy"] == "Never"
    assert spec["securityContext"] == {"runAsNonRoot": True, "runAsUser": 10001, "runAsGroup": 10001,
                                       "fsGroup": 10001, "seccompProfile": {"type": "RuntimeDefault"}}
    [c] = spec["containers"]
    assert c["image"] == "reg/agent:1"
    assert c["securityContext"] == {
        "runAsNonRoot": True, "runAsUser": 10001, "runAsGroup": 10001, "readOnlyRootFilesystem": True,
        "allowPrivilegeEscalation": False, "privileged": False, "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"}}
    assert c["resources"] == {"limits": {"cpu": "250m", "memory": "300Mi"},
                              "requests": {"cpu": "250m", "memory": "300Mi"}}
    # /tmp is the only writable place, in memory, with the tmpfs size; the token dir is read-only
    assert {m["mountPath"]: m.get("readOnly", False) for m in c["volumeMounts"]} == \
        {"/tmp": False, "/run/secrets/ecology": True}
    vols = {v["name"]: v for v in spec["volumes"]}
    assert vols["tmp"]["emptyDir"] == {"medium": "Memory", "sizeLimit": "8Mi"}
    assert vols["token"]["secret"] == {"secretName": "ecology-agent-builder-1", "defaultMode": 0o440,
                                       "items": [{"key": "token", "path": "token"}]}
    env = {e["name"]: e["value"] for e in c["env"]}
    assert env["ECOLOGY_TOKEN_FILE"] == "/run/secrets/ecology/token"
    assert env["ECOLOGY_SERVER"] == "10.0.0.5:50051"
    assert env["ECOLOGY_ISOLATION"] == "kubernetes"
    # no per-Pod pids field exists: the wanted value is an annotation (the kubelet's podPidsLimit enforces)
    assert pod["metadata"]["annotations"]["ecology.agent/pids-limit"] == "50"
    # without a runtime class the field is absent (the cluster's default runtime)
    assert "runtimeClassName" not in k8s.pod_manifest("b", "10.0.0.5:1")["spec"]


def test_the_network_policy_allows_only_the_server_port_and_dns():
    dns = {"to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
                   "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}],
           "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]}
    pol = k8s.network_policy_manifest("builder-1", "10.0.0.5:50051", "eco")
    assert pol["spec"] == {
        "podSelector": {"matchLabels": {"app.kubernetes.io/name": "ecology-agent", "ecology.agent": "builder-1"}},
        "policyTypes": ["Ingress", "Egress"],
        "ingress": [],
        "egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.5/32"}}], "ports": [{"protocol": "TCP", "port": 50051}]},
                   dns],
    }
    assert k8s.network_policy_manifest("a", "[fd00::7]:443")["spec"]["egress"][0] == \
        {"to": [{"ipBlock": {"cidr": "fd00::7/128"}}], "ports": [{"protocol": "TCP", "port": 443}]}
    # in-cluster Services: the server Pods (by label) in the Service's namespace
    for server, ns in [("world:50051", "eco"), ("world.prod:50051", "prod"),
                       ("world.prod.svc:50051", "prod"), ("world.prod.svc.cluster.local:50051", "prod")]:
        spec = k8s.network_policy_manifest("a", server, "eco", server_labels={"app": "world"})["spec"]
        assert spec["egress"] == [
            {"to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns}},
                     "podSelector": {"matchLabels": {"app": "world"}}}],
             "ports": [{"protocol": "TCP", "port": 50051}]}, dns], server
    default = k8s.network_policy_manifest("a", "world:1")["spec"]["egress"][0]["to"][0]["podSelector"]
    assert default == {"matchLabels": {"app.kubernetes.io/name": "ecology-server"}}


@pytest.mark.parametrize("server, words", [
    ("unix:/run/ecology/world.sock", "over TCP"),
    ("/run/ecology/world.sock", "over TCP"),
    ("world.example.com:50051", "neither an IP address nor an in-cluster Service"),
    ("localhost:50051", "bad server host"),
    ("10.0.0.5", "HOST:PORT"),
    ("10.0.0.5:70000", "bad port"),
])
def test_addresses_no_network_policy_can_allow_are_refused(server, words):
    with pytest.raises(ValueError, match=words):
        k8s.agent_manifests("a", TOKEN, server)


def test_the_token_is_only_in_the_secret():
    objects = by_kind(k8s.agent_manifests("builder-1", TOKEN, "10.0.0.5:50051", LIMITS,
                                          tls={"ca": "CA-PEM-TEXT"}))
    secret = objects["Secret"]
    assert base64.b64decode(secret["data"]["token"]).decode() == TOKEN
    assert base64.b64decode(secret["data"]["ca.crt"]).decode() == "CA-PEM-TEXT"
    encoded = secret["data"]["token"]
    for kind in ("Pod", "NetworkPolicy"):
        text = json.dumps(objects[kind])
        assert TOKEN not in text and encoded not in text and "s3cr3t" not in text, kind
    pod_env = {e["name"]: e["value"] for e in objects["Pod"]["spec"]["containers"][0]["env"]}
    assert "ECOLOGY_TOKEN" not in pod_env
    assert pod_env["ECOLOGY_CA_FILE"] == "/run/secrets/ecology/ca.crt"


def test_names_are_dns_safe_and_distinct():
    assert k8s.object_name("builder-1") == "ecology-agent-builder-1"
    odd = [k8s.object_name(x) for x in ("Agent_X", "agent-x", "agent:x", "A" * 200)]
    assert len(set(odd)) == 4
    for name in odd:
        assert len(name) <= 63 and name == name.lower() and not name.endswith("-")
    validate_all(k8s.agent_manifests("Agent_X:1", TOKEN, "10.0.0.5:1"))


def test_cpu_and_memory_quantities():
    assert k8s.parse_cpu("500m") == 0.5 and k8s.parse_cpu("2") == 2.0
    with pytest.raises(ValueError):
        k8s.parse_cpu("lots")
    assert k8s.cpu_quantity(0.5) == "500m"
    assert k8s.memory_quantity(1024 ** 3) == "1Gi" and k8s.memory_quantity(1000) == "1000"


# -- ecology agent manifest -------------------------------------------------------------

def ecology(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "server.cli", *args], capture_output=True, text=True,
                          cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=60)


def test_agent_manifest_prints_yaml_that_parses_and_validates(tmp_path):
    (tmp_path / "tok").write_text(TOKEN + "\n")
    (tmp_path / "ca.pem").write_text("CA-PEM")
    r = ecology("agent", "manifest", "trader-2", "--server", "10.20.30.40:50051", "--token-file",
                str(tmp_path / "tok"), "--namespace", "agents", "--image", "registry.local/ecology-agent:7",
                "--runtime-class", "gvisor", "--cpu", "250m", "--memory", "512Mi", "--ca-file", str(tmp_path / "ca.pem"))
    assert r.returncode == 0, r.stderr
    objects = list(yaml.safe_load_all(r.stdout))
    assert [o["kind"] for o in objects] == ["NetworkPolicy", "Secret", "Pod"]
    validate_all(objects)
    o = by_kind(objects)
    pod = o["Pod"]["spec"]
    assert pod["runtimeClassName"] == "gvisor" and pod["restartPolicy"] == "OnFailure"
    assert pod["containers"][0]["image"] == "registry.local/ecology-agent:7"
    assert pod["containers"][0]["resources"]["limits"] == {"cpu": "250m", "memory": "512Mi"}
    assert all(x["metadata"]["namespace"] == "agents" for x in objects)
    assert o["NetworkPolicy"]["spec"]["egress"][0] == {"to": [{"ipBlock": {"cidr": "10.20.30.40/32"}}],
                                                       "ports": [{"protocol": "TCP", "port": 50051}]}
    assert [p["port"] for p in o["NetworkPolicy"]["spec"]["egress"][1]["ports"]] == [53, 53]
    assert base64.b64decode(o["Secret"]["data"]["token"]).decode() == TOKEN
    assert TOKEN not in json.dumps(o["Pod"])
    assert "podPidsLimit" in r.stdout                 # the YAML says where the pids limit lives


def test_agent_manifest_in_cluster_server_and_labels(tmp_path):
    (tmp_path / "tok").write_text(TOKEN)
    r = ecology("agent", "manifest", "a", "--server", "world.prod.svc:7000", "--token-file", str(tmp_path / "tok"),
                "--server-pod-label", "app=world", "--server-pod-label", "tier=core", "--restart-policy", "Never")
    assert r.returncode == 0, r.stderr
    o = by_kind(list(yaml.safe_load_all(r.stdout)))
    assert o["NetworkPolicy"]["spec"]["egress"][0]["to"] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "prod"}},
         "podSelector": {"matchLabels": {"app": "world", "tier": "core"}}}]
    assert o["Pod"]["spec"]["restartPolicy"] == "Never"


def test_agent_manifest_errors_are_clear(tmp_path):
    (tmp_path / "tok").write_text(TOKEN)
    r = ecology("agent", "manifest", "a", "--server", "unix:/x.sock", "--token-file", str(tmp_path / "tok"))
    assert r.returncode == 2 and "over TCP" in r.stderr and r.stdout == ""
    r = ecology("agent", "manifest", "a", "--server", "10.0.0.1:1", "--token-file", str(tmp_path / "missing"))
    assert r.returncode == 2 and "missing" in r.stderr
    r = ecology("agent", "manifest", "a", "--server", "10.0.0.1:1", "--token-file", str(tmp_path / "tok"),
                "--cpu", "x")
    assert r.returncode == 2 and "bad cpu" in r.stderr


def run_cli(*args: str, env: dict, timeout: float = 120) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if k not in ("ECOLOGY_K8S_SERVER", "KUBECONFIG")}
    return subprocess.run([sys.executable, "-m", "server.cli", *args], capture_output=True, text=True,
                          cwd=ROOT, env={**base, "PYTHONPATH": str(ROOT), **env}, timeout=timeout)


def test_run_with_the_kubernetes_backend_needs_the_agents_server_address(tmp_path):
    for env, words in [({}, "ECOLOGY_K8S_SERVER"), ({"ECOLOGY_K8S_SERVER": "unix:/x.sock"}, "over TCP")]:
        r = run_cli("run", "--backend", "kubernetes", "--agents", "1", "--duration", "1",
                    "--data-dir", str(tmp_path / "d"), env=env)
        assert r.returncode == 2 and words in r.stderr, r.stderr
        assert not (tmp_path / "d").exists()              # refused before anything started


def test_run_with_the_kubernetes_backend_creates_and_removes_the_agents_objects(api, kubeconfig, tmp_path):
    """The main job's wiring: one Pod (+ Secret + NetworkPolicy) per agent, in the kubeconfig's
    namespace, pointing at ECOLOGY_K8S_SERVER; all deleted when it stops. (Nothing runs the Pods.)"""
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
    r = run_cli("run", "--no-dashboard", "--backend", "kubernetes", "--agents", "2", "--duration", "3", "--data-dir",
                str(tmp_path / "w"), "--listen", "127.0.0.1:0", "--ca-file", str(ca),
                env={"KUBECONFIG": kubeconfig, "ECOLOGY_K8S_SERVER": "10.9.8.7:50051"})
    # Nothing runs these Pods (the test API server plays no kubelet that starts them), so no agent
    # acts, and `ecology run` says so and exits 1 - a run where nothing happened is no success.
    assert r.returncode == 1, r.stdout + r.stderr
    assert "no agent acted" in r.stderr
    assert "on backend 'kubernetes'" in r.stdout
    summary = json.loads(next(x for x in r.stdout.splitlines() if x.startswith("SUMMARY "))[8:])
    assert summary["backend"] == "kubernetes" and summary["agents"] == 2
    pods = [q["body"] for q in api.sent("POST", "pods")]
    assert sorted(p["metadata"]["annotations"]["ecology.agent/id"] for p in pods) == ["builder-1", "trader-1"]
    for p in pods:
        env = {e["name"]: e["value"] for e in p["spec"]["containers"][0]["env"]}
        assert env["ECOLOGY_SERVER"] == "10.9.8.7:50051" and p["metadata"]["namespace"] == "eco-test"
        assert env["ECOLOGY_CA_FILE"].endswith("/ca.crt")     # --ca-file: the CA travels in the Secret
    for q in api.sent("POST", "secrets"):
        secret = q["body"]
        data = secret.get("stringData") or {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
        assert data["ca.crt"] == ca.read_text()
    assert len(api.sent("POST", "secrets")) == 2 and len(api.sent("POST", "networkpolicies")) == 2
    assert api.objects == {}                              # the stop deleted Pods, Secrets, NetworkPolicies


# -- the backend against the official client and a minimal API server --------------------

@pytest.fixture
def api():
    a = FakeKubeAPI()
    yield a
    a.close()


@pytest.fixture
def kubeconfig(api, tmp_path):
    return api.kubeconfig(tmp_path / "kubeconfig")


def launcher_for(kubeconfig: str, **kw) -> Launcher:
    return Launcher("kubernetes", "10.0.0.5:50051", backoff_initial=0.2, backoff_max=1.0, poll_interval=0.05,
                    backend_options={"kubeconfig": kubeconfig, "runtime_class": "gvisor", **kw.pop("opts", {})}, **kw)


def test_backend_applies_network_policy_then_secret_then_pod(api, kubeconfig):
    with launcher_for(kubeconfig) as launcher:
        assert launcher.backend_name == "kubernetes"
        assert launcher.backend.namespace == "eco-test"                        # the kubeconfig context's
        launcher.start("builder-1", TOKEN, LIMITS, env={"ECOLOGY_BRAIN": "scripted"})
        creates = [r["plural"] for r in api.sent("POST")]
        assert creates == ["networkpolicies", "secrets", "pods"]
        [pod] = api.pods("eco-test")
        validate_all([pod])
        spec = pod["spec"]
        assert spec["restartPolicy"] == "Never"                                  # the supervisor restarts
        assert spec["runtimeClassName"] == "gvisor"
        assert spec["containers"][0]["securityContext"]["readOnlyRootFilesystem"] is True
        assert pod["metadata"]["labels"]["ecology.launcher"] == launcher.id
        env = {e["name"]: e["value"] for e in spec["containers"][0]["env"]}
        assert env["ECOLOGY_BRAIN"] == "scripted" and env["ECOLOGY_SERVER"] == "10.0.0.5:50051"
        secret = api.objects[("secrets", "eco-test", "ecology-agent-builder-1")]
        assert base64.b64decode(secret["data"]["token"]).decode() == TOKEN
        assert TOKEN not in json.dumps(api.sent("POST", "pods"))               # not sent with the Pod
        pol = api.objects[("networkpolicies", "eco-test", "ecology-agent-builder-1")]
        assert pol["spec"]["egress"][0]["to"] == [{"ipBlock": {"cidr": "10.0.0.5/32"}}]
        [row] = launcher.status()
        assert row["pod"] == pod["metadata"]["name"] and row["alive"]


def test_backend_follows_pod_status_restarts_with_backoff_and_deletes_on_stop(api, kubeconfig):
    with launcher_for(kubeconfig) as launcher:
        h = launcher.start("trader-1", TOKEN, LIMITS)
        first = h.instance.name
        api.set_pod_status(first, "Running")
        api.set_pod_status(first, "Failed", exit_code=1)
        wait_until(lambda: h.restarts == 1 and h.instance.name != first, 15, "the supervisor to act")
        assert h.history[0]["reason"] == "exit 1"
        assert ("pods", "eco-test", first) not in api.objects                    # the dead Pod was deleted
        # the second run re-applies: create -> 409 AlreadyExists -> replace
        assert [r["plural"] for r in api.sent("PUT")] == ["networkpolicies", "secrets"]
        second = h.instance.name
        assert [p["metadata"]["name"] for p in api.pods()] == [second]
        api.set_pod_status(second, "Failed", exit_code=137, reason="OOMKilled")
        wait_until(lambda: h.restarts == 2 and h.instance.name != second, 15, "the supervisor to act")
        assert h.history[1]["reason"] == "oom-killed"
        assert "log of " + second in h.last_output                               # the Pod's log tail
        assert h.failures == 2                                                   # backoff doubles
        third = h.instance.name
        api.set_pod_status(third, "Running")
        launcher.stop("trader-1", timeout=5)
        deletes = {(r["plural"], r["name"]) for r in api.sent("DELETE")}
        assert {("pods", third), ("secrets", "ecology-agent-trader-1"),
                ("networkpolicies", "ecology-agent-trader-1")} <= deletes
        assert api.objects == {}                                                 # nothing left behind
        assert launcher.status()[0]["state"] == "stopped"


def test_a_permanent_exit_is_not_restarted_and_a_stuck_image_pull_is(api, kubeconfig):
    with launcher_for(kubeconfig) as launcher:
        h = launcher.start("tester-1", TOKEN, LIMITS)
        api.set_pod_status(h.instance.name, "Failed", exit_code=3)             # unknown token: permanent
        wait_until(lambda: h.finished, 15, "the supervisor to act")
        assert h.restarts == 0 and h.last_exit == "exit 3"
        g = launcher.start("tester-2", TOKEN, LIMITS)
        first = g.instance.name
        api.set_pod_status(first, "Pending", waiting="ImagePullBackOff")
        wait_until(lambda: g.restarts == 1, 15, "the supervisor to act")
        assert g.history[0]["reason"] == f"exit {k8s.START_FAILED}"


def test_a_pod_deleted_behind_the_launchers_back_is_replaced(api, kubeconfig):
    with launcher_for(kubeconfig) as launcher:
        h = launcher.start("coordinator-1", TOKEN, LIMITS)
        first = h.instance.name
        api.handle("DELETE", "eco-test", "pods", first, None, None, {})          # as `kubectl delete pod`
        wait_until(lambda: h.restarts == 1, 15, "the supervisor to act")
        assert h.history[0]["reason"] == "pod deleted"


def test_an_object_the_api_refuses_is_a_failed_start_retried_with_backoff(api, kubeconfig):
    with launcher_for(kubeconfig) as launcher:
        # not a string: the client (its models check the dict) refuses it before sending
        h = launcher.start("builder-9", TOKEN, LIMITS, command=["python3", 7])
        assert h.instance is None and h.next_start is not None
        assert h.last_exit.startswith("start failed:") and "command" in h.last_exit
        wait_until(lambda: h.restarts >= 1, 15, "the supervisor to act")                          # tried again
        assert api.pods() == []


def test_auto_never_chooses_kubernetes(api, kubeconfig, monkeypatch):
    from agent_runtime.launcher import supervisor

    monkeypatch.setenv("KUBECONFIG", kubeconfig)                     # a cluster answers, still not chosen
    monkeypatch.setattr(supervisor, "_docker_backend", lambda *a: (None, "not in this test"))
    backend, skipped = make_backend("auto", "ecology-agent:latest", "t1", build_image=False)
    try:
        assert backend.name in ("bwrap", "process")
        assert set(skipped) <= {"docker", "bwrap"}                   # kubernetes was not even tried
    finally:
        backend.close()
    assert api.sent() == []                                          # auto did not even ask it


def test_kubernetes_backend_unavailable_says_why(tmp_path):
    dead = FakeKubeAPI()
    path = dead.kubeconfig(tmp_path / "kc")
    dead.close()                                                     # nothing listens there now
    with pytest.raises(RuntimeError, match="backend 'kubernetes' is not available: the Kubernetes API does not answer"):
        Launcher("kubernetes", "10.0.0.5:1", backend_options={"kubeconfig": path})
    with pytest.raises(RuntimeError, match="no Kubernetes configuration"):
        Launcher("kubernetes", "10.0.0.5:1", backend_options={"kubeconfig": str(tmp_path / "none")})
