"""`kubernetes` backend: one Pod per agent, through the official `kubernetes` Python client.

Never chosen by `auto`: only when asked by name (`--backend kubernetes`, or
`Launcher(backend="kubernetes", ...)`). Agents reach the world server over TCP (a Pod cannot
share the host's unix socket), so the server address is `IP:PORT` or an in-cluster Service name.

Per agent three objects, built by the pure functions below (plain dicts, the same that
`ecology agent manifest` prints as YAML) and applied in this order:

  * NetworkPolicy `ecology-agent-<name>`: selects only this agent's Pods; policyTypes Ingress and
    Egress with no ingress rule (nothing may connect to the agent) and exactly two egress rules:
    the world server's port (an `ipBlock` /32 or /128 for an IP address; for an in-cluster Service
    a namespaceSelector + podSelector on the server Pods' labels, since a NetworkPolicy cannot name
    a Service) and DNS (port 53 UDP and TCP) to the cluster DNS Pods (kube-system, k8s-app=kube-dns).
    It is applied before the Pod, so the Pod never runs unrestricted. It is only enforced where the
    cluster's network plugin implements NetworkPolicy (Calico, Cilium, ...).
  * Secret `ecology-agent-<name>`: the token (key `token`), the only place it appears; mounted
    read-only at /run/secrets/ecology (mode 0440, group 10001 through fsGroup), so the agent reads
    it from ECOLOGY_TOKEN_FILE=/run/secrets/ecology/token. The Pod spec holds only the Secret's name.
  * Pod: the agent image, the same limits as the docker backend -
      securityContext: runAsNonRoot, runAsUser/runAsGroup 10001, readOnlyRootFilesystem,
        allowPrivilegeEscalation false, privileged false, capabilities drop ALL,
        seccompProfile RuntimeDefault (Pod and container level);
      resources: CPU and memory limits (requests = limits: Guaranteed QoS, no swap);
      /tmp: an emptyDir in memory with the tmpfs size limit (it counts toward the memory limit);
      automountServiceAccountToken false, enableServiceLinks false, no host namespaces;
      an optional runtimeClassName (e.g. `gvisor`) for a sandboxed runtime.
    The pids limit has NO per-Pod field in the Pod spec: Kubernetes enforces it per node, with the
    kubelet setting `podPidsLimit` (KubeletConfiguration; `--pod-max-pids`). The wanted value is
    written on the Pod as the annotation `ecology.agent/pids-limit` for the operator to match, and
    is not enforced by the Pod itself.

Restarts: the backend creates Pods with restartPolicy Never and the launcher's supervisor
restarts a dead agent as a new Pod, with the same backoff, permanent-exit rules (2, 3, 4) and
restart records (exit code, "oom-killed") as every other backend. The manifest printed by
`ecology agent manifest` is for `kubectl apply` without a launcher, so it defaults to
restartPolicy OnFailure: the kubelet then restarts the container with its own exponential backoff
(CrashLoopBackOff: 10 s doubling to 5 min, reset after 10 min of running).

Pod status is followed with a watch (list, then watch from that resourceVersion; list again when
the watch ends or fails); stopping an agent deletes its Pod, then its Secret and NetworkPolicy.
Every object carries the label `ecology.launcher=<launcher id>` (backend) so
`kubectl delete pod,secret,networkpolicy -l ecology.launcher` removes what a dead launcher left.

Configuration of the backend (keyword arguments, else the environment):
    namespace       ECOLOGY_K8S_NAMESPACE       (default: the kubeconfig context's, else "default")
    image           ECOLOGY_K8S_IMAGE           (default ecology-agent:latest; must be pullable by the nodes)
    runtime_class   ECOLOGY_K8S_RUNTIME_CLASS   (default none)
    server_labels   ECOLOGY_K8S_SERVER_LABELS   "k=v,k2=v2": the server Pods' labels, for an in-cluster server
    kubeconfig      KUBECONFIG (its first file) (else ~/.kube/config, else the in-cluster service account)
    tls_files       {"ca": PATH, "cert": PATH, "key": PATH}: PEMs put in each agent's Secret for a
                    TLS (mutual TLS) server; the Pod's ECOLOGY_CA_FILE etc. point at them
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import os
import re
import threading
import time
from pathlib import Path

from agent_runtime.launcher.base import (
    AGENT_GID, AGENT_IMAGE, AGENT_UID, AgentLimits, AgentSpec, Backend, Instance, log)

SECRET_DIR = "/run/secrets/ecology"
TOKEN_KEY = "token"
TOKEN_PATH = f"{SECRET_DIR}/{TOKEN_KEY}"
CONTAINER = "agent"
LABEL_APP = "app.kubernetes.io/name"
APP = "ecology-agent"
LABEL_AGENT = "ecology.agent"
LABEL_LAUNCHER = "ecology.launcher"
ANNOTATION_AGENT_ID = "ecology.agent/id"
ANNOTATION_PIDS = "ecology.agent/pids-limit"
DEFAULT_SERVER_LABELS = {LABEL_APP: "ecology-server"}
DNS_PEER = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
            "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}
RESTART_POLICIES = ("Never", "OnFailure", "Always")
# Optional TLS files, also carried by the Secret: kind -> (key in the Secret, variable the agent reads)
TLS_FILES = {"ca": ("ca.crt", "ECOLOGY_CA_FILE"), "cert": ("tls.crt", "ECOLOGY_CERT_FILE"),
             "key": ("tls.key", "ECOLOGY_KEY_FILE")}

# Waiting reasons after which a Pod's container will not start without a change: the
# supervisor treats them as an ended run (and retries with its backoff).
_STUCK_REASONS = {"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "CreateContainerConfigError",
                  "CreateContainerError", "RunContainerError"}
START_FAILED = 125                                    # as `docker run`: the container could not run


# -- pure manifest building ---------------------------------------------------------------

def object_name(agent_id: str) -> str:
    """A DNS-1123 name (and label value) for an agent id: lowercased, other characters
    replaced by '-', and a short hash of the exact id appended when that changed it."""
    base = re.sub(r"[^a-z0-9-]+", "-", agent_id.lower()).strip("-")[:40].strip("-") or "agent"
    if base != agent_id:
        base = f"{base}-{hashlib.sha256(agent_id.encode()).hexdigest()[:8]}"
    return f"ecology-agent-{base}"


def cpu_quantity(cpus: float) -> str:
    return f"{max(1, round(cpus * 1000))}m"


def memory_quantity(n: int) -> str:
    for unit, size in (("Gi", 1024 ** 3), ("Mi", 1024 ** 2), ("Ki", 1024)):
        if n % size == 0:
            return f"{n // size}{unit}"
    return str(n)


def parse_cpu(value: str | float) -> float:
    """"0.5", "500m" or a number -> cores."""
    s = str(value).strip()
    try:
        cores = int(s[:-1]) / 1000 if s.endswith("m") else float(s)
    except ValueError:
        raise ValueError(f"bad cpu {value!r} (use e.g. 0.5 or 500m)") from None
    if cores <= 0:
        raise ValueError(f"bad cpu {value!r}: must be > 0")
    return cores


def split_address(server: str) -> tuple[str, int]:
    """"host:port" / "[v6]:port" -> (host, port). Kubernetes agents need TCP."""
    if server.startswith("unix:") or server.startswith("/"):
        raise ValueError(f"Kubernetes agents reach the world server over TCP, not {server!r}: "
                         "use IP:PORT or SERVICE[.NAMESPACE[.svc...]]:PORT")
    m = re.fullmatch(r"\[([0-9a-fA-F:.]+)\]:(\d+)|([^:\[\]]+):(\d+)", server.strip())
    if not m:
        raise ValueError(f"bad server address {server!r}: use HOST:PORT")
    host, port = (m.group(1), m.group(2)) if m.group(1) else (m.group(3), m.group(4))
    if not 0 < int(port) < 65536:
        raise ValueError(f"bad port in {server!r}")
    return host, int(port)


def server_peer(server: str, namespace: str, server_labels: dict | None = None) -> tuple[dict, int]:
    """The NetworkPolicy peer and port of the world server.

    An IP address -> an ipBlock of exactly that address. Any other host must be an in-cluster
    Service (`svc`, `svc.ns`, `svc.ns.svc[.cluster.local]`): a NetworkPolicy cannot match a
    Service or a DNS name, so the peer is the server Pods (their labels, default
    app.kubernetes.io/name=ecology-server) in the Service's namespace, and the port must be the
    Pods' port (give the Service the same port and targetPort)."""
    host, port = split_address(server)
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        ip = None
    if ip is not None:
        return {"ipBlock": {"cidr": f"{ip}/{ip.max_prefixlen}"}}, port
    labels = host.lower().rstrip(".").split(".")
    if host.lower() == "localhost" or not all(re.fullmatch(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?", x) for x in labels):
        raise ValueError(f"bad server host {host!r} for a Pod (use the server's IP or its Service name)")
    if len(labels) == 1:
        ns = namespace
    elif len(labels) == 2 or labels[2] == "svc":
        ns = labels[1]
    else:
        raise ValueError(f"server host {host!r} is neither an IP address nor an in-cluster Service name: "
                         "a NetworkPolicy can only allow an IP block or Pods, so use the server's IP")
    return {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns}},
            "podSelector": {"matchLabels": dict(server_labels or DEFAULT_SERVER_LABELS)}}, port


def _meta(agent_id: str, namespace: str, labels: dict | None) -> dict:
    return {"name": object_name(agent_id), "namespace": namespace,
            "labels": {LABEL_APP: APP, LABEL_AGENT: object_name(agent_id)[len("ecology-agent-"):],
                       **(labels or {})},
            "annotations": {ANNOTATION_AGENT_ID: agent_id}}


def _check_tls(tls: dict | None) -> dict:
    tls = {k: v for k, v in (tls or {}).items() if v}
    if set(tls) - set(TLS_FILES):
        raise ValueError(f"unknown TLS file kinds {sorted(set(tls) - set(TLS_FILES))}")
    if ("cert" in tls) != ("key" in tls):
        raise ValueError("a client certificate needs its key (and the key its certificate)")
    return tls


def secret_manifest(agent_id: str, token: str, namespace: str = "default", labels: dict | None = None,
                    tls: dict[str, str] | None = None) -> dict:
    """The token (and the optional TLS PEMs: tls = {"ca": ..., "cert": ..., "key": ...})."""
    data = {TOKEN_KEY: token, **{TLS_FILES[k][0]: v for k, v in _check_tls(tls).items()}}
    return {"apiVersion": "v1", "kind": "Secret", "metadata": _meta(agent_id, namespace, labels),
            "type": "Opaque", "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}}


def network_policy_manifest(agent_id: str, server: str, namespace: str = "default",
                            server_labels: dict | None = None, labels: dict | None = None) -> dict:
    peer, port = server_peer(server, namespace, server_labels)
    meta = _meta(agent_id, namespace, labels)
    return {
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": meta,
        "spec": {
            "podSelector": {"matchLabels": {LABEL_APP: APP, LABEL_AGENT: meta["labels"][LABEL_AGENT]}},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [],
            "egress": [
                {"to": [peer], "ports": [{"protocol": "TCP", "port": port}]},
                {"to": [DNS_PEER], "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]},
            ],
        },
    }


def pod_manifest(agent_id: str, server: str, limits: AgentLimits | dict | None = None, *,
                 namespace: str = "default", image: str = AGENT_IMAGE, runtime_class: str | None = None,
                 restart_policy: str = "OnFailure", env: dict[str, str] | None = None,
                 command: list[str] | None = None, labels: dict | None = None,
                 name: str | None = None, tls_kinds: tuple[str, ...] = ()) -> dict:
    """The agent's Pod. `tls_kinds`: which TLS files its Secret holds ("ca", "cert", "key");
    their variables (ECOLOGY_CA_FILE ...) point into the Secret's mount."""
    if restart_policy not in RESTART_POLICIES:
        raise ValueError(f"restart policy must be one of {', '.join(RESTART_POLICIES)}")
    split_address(server)
    limits = AgentLimits.from_config(limits)
    meta = _meta(agent_id, namespace, labels)
    if name:
        meta["name"] = name
    meta["annotations"][ANNOTATION_PIDS] = str(limits.pids)
    resources = {"cpu": cpu_quantity(limits.cpus), "memory": memory_quantity(limits.memory_bytes)}
    seccomp = {"type": "RuntimeDefault"}
    container = {
        "name": CONTAINER,
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "env": [{"name": k, "value": str(v)} for k, v in {
            "ECOLOGY_SERVER": server,
            "ECOLOGY_TOKEN_FILE": TOKEN_PATH,
            "ECOLOGY_AGENT_ID": agent_id,
            "ECOLOGY_ISOLATION": "kubernetes",
            **{TLS_FILES[k][1]: f"{SECRET_DIR}/{TLS_FILES[k][0]}" for k in tls_kinds},
            **(env or {})}.items()],
        "resources": {"limits": dict(resources), "requests": dict(resources)},
        "securityContext": {
            "runAsNonRoot": True, "runAsUser": AGENT_UID, "runAsGroup": AGENT_GID,
            "readOnlyRootFilesystem": True, "allowPrivilegeEscalation": False, "privileged": False,
            "capabilities": {"drop": ["ALL"]}, "seccompProfile": dict(seccomp),
        },
        "volumeMounts": [{"name": "token", "mountPath": SECRET_DIR, "readOnly": True},
                         {"name": "tmp", "mountPath": "/tmp"}],
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    if command:
        container["command"] = list(command)
    spec = {
        "restartPolicy": restart_policy,
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "hostNetwork": False, "hostPID": False, "hostIPC": False,
        "terminationGracePeriodSeconds": 10,
        "securityContext": {"runAsNonRoot": True, "runAsUser": AGENT_UID, "runAsGroup": AGENT_GID,
                            "fsGroup": AGENT_GID, "seccompProfile": dict(seccomp)},
        "containers": [container],
        "volumes": [
            {"name": "token", "secret": {"secretName": object_name(agent_id), "defaultMode": 0o440,
                                         "items": [{"key": key, "path": key} for key in
                                                   (TOKEN_KEY, *(TLS_FILES[k][0] for k in tls_kinds))]}},
            {"name": "tmp", "emptyDir": {"medium": "Memory", "sizeLimit": memory_quantity(limits.tmpfs_bytes)}},
        ],
    }
    if runtime_class:
        spec["runtimeClassName"] = runtime_class
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec}


def agent_manifests(agent_id: str, token: str, server: str, limits: AgentLimits | dict | None = None, *,
                    namespace: str = "default", image: str = AGENT_IMAGE, runtime_class: str | None = None,
                    server_labels: dict | None = None, restart_policy: str = "OnFailure",
                    env: dict[str, str] | None = None, command: list[str] | None = None,
                    labels: dict | None = None, pod_name: str | None = None,
                    tls: dict[str, str] | None = None) -> list[dict]:
    """[NetworkPolicy, Secret, Pod] for one agent, in the order they must be applied.
    `tls`: optional PEM texts {"ca", "cert", "key"} for a TLS / mutual-TLS server."""
    tls = _check_tls(tls)
    return [
        network_policy_manifest(agent_id, server, namespace, server_labels, labels),
        secret_manifest(agent_id, token, namespace, labels, tls),
        pod_manifest(agent_id, server, limits, namespace=namespace, image=image, runtime_class=runtime_class,
                     restart_policy=restart_policy, env=env, command=command, labels=labels, name=pod_name,
                     tls_kinds=tuple(k for k in TLS_FILES if k in tls)),
    ]


def to_yaml(objects: list[dict]) -> str:
    import yaml

    head = ("# Agent Ecology: one agent as a Pod (kubectl apply -f; applied in this order, so the\n"
            "# NetworkPolicy exists before the Pod runs). The token is only in the Secret.\n"
            "# Not expressible in a Pod: the pids limit (annotation ecology.agent/pids-limit) is the\n"
            "# kubelet's podPidsLimit. The NetworkPolicy needs a network plugin that enforces it.\n")
    return head + yaml.safe_dump_all(objects, sort_keys=False, default_flow_style=False)


def parse_labels(text: str | list[str] | None) -> dict[str, str]:
    """"k=v,k2=v2" (or a list of "k=v") -> dict."""
    items = text if isinstance(text, list) else [x for x in (text or "").split(",")]
    out = {}
    for item in items:
        item = item.strip()
        if not item:
            continue
        k, sep, v = item.partition("=")
        if not sep or not k:
            raise ValueError(f"bad label {item!r}: use KEY=VALUE")
        out[k.strip()] = v.strip()
    return out


# -- the backend -------------------------------------------------------------------------

def api_client(kubeconfig: str | None = None, context: str | None = None):
    """An ApiClient from a kubeconfig (argument, $KUBECONFIG, ~/.kube/config), else the
    in-cluster service account. Returns (client, namespace of the context or None)."""
    from kubernetes import client as k8s_client, config as k8s_config

    path = kubeconfig or os.environ.get("KUBECONFIG") or str(Path("~/.kube/config").expanduser())
    first = path.split(os.pathsep)[0]
    if Path(first).exists():
        contexts, active = k8s_config.list_kube_config_contexts(config_file=first)
        if context:
            active = next((c for c in contexts if c["name"] == context), None)
            if active is None:
                raise ValueError(f"no context {context!r} in {first}")
        ns = (active or {}).get("context", {}).get("namespace")
        return k8s_config.new_client_from_config(config_file=first, context=context), ns
    cfg = k8s_client.Configuration()
    k8s_config.load_incluster_config(client_configuration=cfg)
    ns_file = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
    return k8s_client.ApiClient(cfg), (ns_file.read_text().strip() if ns_file.exists() else None)


def _pod_state(pod) -> dict:
    """What the supervisor needs from a V1Pod: phase, and the container's end if it ended."""
    st = pod.status
    out = {"phase": getattr(st, "phase", None) or "Pending", "code": None, "reason": None,
           "uid": pod.metadata.uid}
    for cs in (getattr(st, "container_statuses", None) or []):
        if cs.name != CONTAINER or cs.state is None:
            continue
        if cs.state.terminated is not None:
            out["code"] = int(cs.state.terminated.exit_code)
            out["reason"] = cs.state.terminated.reason
        elif cs.state.waiting is not None and cs.state.waiting.reason in _STUCK_REASONS:
            out["code"], out["reason"] = START_FAILED, cs.state.waiting.reason
    if out["code"] is None and out["phase"] in ("Failed", "Succeeded"):
        out["code"] = 0 if out["phase"] == "Succeeded" else -9
        out["reason"] = getattr(st, "reason", None) or out["phase"]
    return out


class KubernetesInstance(Instance):
    def __init__(self, backend: "KubernetesBackend", name: str) -> None:
        self.backend = backend
        self.name = name
        self.ident = f"pod {name}"
        self._final: dict | None = None

    def _state(self) -> dict | None:
        if self._final is not None:
            return self._final
        st = self.backend.pods.get(self.name)
        if st is not None and (st.get("gone") or st["code"] is not None):
            self._final = dict(st, code=-9 if st["code"] is None else st["code"],
                               reason=st["reason"] or ("deleted" if st.get("gone") else None))
        return self._final

    def poll(self) -> int | None:
        st = self._state()
        return None if st is None else st["code"]

    def exit_reason(self) -> str:
        st = self._state()
        if st is None:
            return "running"
        if st["reason"] == "OOMKilled":
            return "oom-killed"
        code = st["code"]
        text = f"exit {code}" + (f" (signal {code - 128})" if code > 128 else "")
        return text if code >= 0 else f"pod {st['reason'] or 'gone'}"

    def _delete(self, grace: int) -> None:
        from kubernetes.client.exceptions import ApiException
        try:
            self.backend.core.delete_namespaced_pod(self.name, self.backend.namespace, grace_period_seconds=grace)
        except ApiException as e:
            if e.status != 404:
                log.warning("k8s_pod_delete_failed", pod=self.name, status=e.status)
        except Exception as e:  # noqa: BLE001 - API unreachable: stop goes on, the label finds it later
            log.warning("k8s_pod_delete_failed", pod=self.name, error=f"{type(e).__name__}: {str(e)[:200]}")

    def terminate(self) -> None:
        self._delete(self.backend.grace_seconds)

    def kill(self) -> None:
        self._delete(0)

    def wait(self, timeout: float) -> int | None:
        """Until the container ended or the Pod is gone (read directly, not from the watch)."""
        from kubernetes.client.exceptions import ApiException
        deadline = time.monotonic() + timeout
        while True:
            if self._state() is not None:
                return self._final["code"]
            try:
                st = _pod_state(self.backend.core.read_namespaced_pod(self.name, self.backend.namespace))
                if st["code"] is not None:
                    self._final = st
            except ApiException as e:
                if e.status == 404:
                    self._final = {"phase": "Gone", "code": -15, "reason": "deleted", "gone": True}
            except Exception:  # noqa: BLE001 - API unreachable: keep trying until the deadline
                pass
            if self._final is not None:
                return self._final["code"]
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.2)

    def output_tail(self, lines: int = 20) -> str:
        try:
            return self.backend.core.read_namespaced_pod_log(self.name, self.backend.namespace,
                                                             container=CONTAINER, tail_lines=lines)
        except Exception:               # noqa: BLE001 - logs are best effort (pod gone, not started)
            return ""

    def cleanup(self) -> None:
        self._delete(0)
        self.backend.own.discard(self.name)
        self.backend.pods.pop(self.name, None)

    def info(self) -> dict:
        return {"pod": self.name, "namespace": self.backend.namespace}


class KubernetesBackend(Backend):
    name = "kubernetes"

    def __init__(self, launcher_id: str, *, namespace: str | None = None, image: str | None = None,
                 runtime_class: str | None = None, server_labels: dict | str | None = None,
                 kubeconfig: str | None = None, context: str | None = None, grace_seconds: int = 10,
                 tls_files: dict[str, str] | None = None) -> None:
        try:
            from kubernetes import client as k8s_client
        except ImportError as e:          # pragma: no cover - a declared dependency
            raise RuntimeError(f"the kubernetes Python client is not installed ({e})") from e
        try:
            self.api, context_ns = api_client(kubeconfig, context)
        except Exception as e:
            raise RuntimeError(f"no Kubernetes configuration ({type(e).__name__}: {str(e)[:200]})") from e
        self.launcher_id = launcher_id
        self.namespace = namespace or os.environ.get("ECOLOGY_K8S_NAMESPACE") or context_ns or "default"
        self.image = image or os.environ.get("ECOLOGY_K8S_IMAGE") or AGENT_IMAGE
        self.runtime_class = runtime_class or os.environ.get("ECOLOGY_K8S_RUNTIME_CLASS") or None
        labels = server_labels if server_labels is not None else os.environ.get("ECOLOGY_K8S_SERVER_LABELS")
        self.server_labels = parse_labels(labels) if isinstance(labels, (str, list)) else labels
        self.grace_seconds = grace_seconds
        self.tls = {k: Path(v).read_text() for k, v in _check_tls(tls_files).items()}
        self.core = k8s_client.CoreV1Api(self.api)
        self.net = k8s_client.NetworkingV1Api(self.api)
        self.selector = f"{LABEL_LAUNCHER}={launcher_id}"
        try:
            self.core.list_namespaced_pod(self.namespace, label_selector=self.selector, limit=1)
        except Exception as e:
            self.api.close()
            raise RuntimeError(f"the Kubernetes API does not answer for namespace {self.namespace!r} "
                               f"({type(e).__name__}: {str(e)[:200]})") from e
        self.pods: dict[str, dict] = {}      # pod name -> _pod_state (+ gone), from the watch
        self.own: set[str] = set()            # the Pods this backend created and has not cleaned up
        self._closing = threading.Event()
        self._watch = None
        self._thread = threading.Thread(target=self._watch_loop, name="k8s-pod-watch", daemon=True)
        self._thread.start()

    def describe(self) -> str:
        rc = f", runtimeClass {self.runtime_class}" if self.runtime_class else ""
        return (f"kubernetes (namespace {self.namespace}, image {self.image}{rc}, NetworkPolicy egress to the "
                f"server and DNS only, read-only rootfs, caps dropped; pids limit = the kubelet's podPidsLimit)")

    def prepare_token_file(self, path: Path) -> None:
        os.chmod(path, 0o400)            # read by this process only; the Pod gets it from a Secret

    # -- watch ------------------------------------------------------------------------

    def _watch_loop(self) -> None:
        from kubernetes import watch
        while not self._closing.is_set():
            try:
                listed = self.core.list_namespaced_pod(self.namespace, label_selector=self.selector)
                current = {p.metadata.name: _pod_state(p) for p in listed.items}
                for name in list(self.pods):
                    if name not in current:
                        self.pods[name] = dict(self.pods[name], gone=True)
                self.pods.update({n: st for n, st in current.items() if n in self.own})
                w = watch.Watch()
                self._watch = w
                for ev in w.stream(self.core.list_namespaced_pod, self.namespace, label_selector=self.selector,
                                   resource_version=listed.metadata.resource_version, timeout_seconds=60):
                    if self._closing.is_set():
                        break
                    pod = ev["object"]
                    if pod.metadata.name not in self.own:
                        continue
                    if ev["type"] == "DELETED":
                        self.pods[pod.metadata.name] = dict(_pod_state(pod), gone=True)
                    elif ev["type"] in ("ADDED", "MODIFIED"):
                        self.pods[pod.metadata.name] = _pod_state(pod)
                w.stop()
            except Exception as e:  # noqa: BLE001 - expired resourceVersion, connection lost: list again
                if self._closing.is_set():
                    break
                log.warning("k8s_watch_restarted", error=f"{type(e).__name__}: {str(e)[:200]}")
                self._closing.wait(1.0)

    # -- apply ------------------------------------------------------------------------

    def _apply(self, kind: str, body: dict) -> None:
        """Create, or replace when it exists."""
        from kubernetes.client.exceptions import ApiException
        name, ns = body["metadata"]["name"], body["metadata"]["namespace"]
        create, replace = {
            "Secret": (self.core.create_namespaced_secret, self.core.replace_namespaced_secret),
            "NetworkPolicy": (self.net.create_namespaced_network_policy, self.net.replace_namespaced_network_policy),
        }[kind]
        try:
            create(ns, body)
        except ApiException as e:
            if e.status != 409:
                raise
            replace(name, ns, body)

    def spawn(self, spec: AgentSpec) -> Instance:
        token = spec.token_file.read_text().strip()
        base = object_name(spec.agent_id)
        pod_name = f"{base[:56]}-{os.urandom(3).hex()}"
        netpol, secret, pod = agent_manifests(
            spec.agent_id, token, spec.server, spec.limits, namespace=self.namespace, image=self.image,
            runtime_class=self.runtime_class, server_labels=self.server_labels, restart_policy="Never",
            env=spec.env, command=spec.command, labels={LABEL_LAUNCHER: self.launcher_id}, pod_name=pod_name,
            tls=self.tls)
        self._apply("NetworkPolicy", netpol)     # first: the Pod never runs without it
        self._apply("Secret", secret)
        self.own.add(pod_name)
        try:
            self.core.create_namespaced_pod(self.namespace, pod)
        except Exception:
            self.own.discard(pod_name)
            raise
        return KubernetesInstance(self, pod_name)

    def release(self, agent_id: str) -> None:
        """The agent was stopped: delete its Secret and NetworkPolicy (its Pod is gone already)."""
        from kubernetes.client.exceptions import ApiException
        name = object_name(agent_id)
        for delete in (self.core.delete_namespaced_secret, self.net.delete_namespaced_network_policy):
            try:
                delete(name, self.namespace)
            except ApiException as e:
                if e.status != 404:
                    log.warning("k8s_delete_failed", object=name, status=e.status)
            except Exception as e:  # noqa: BLE001 - API unreachable
                log.warning("k8s_delete_failed", object=name, error=f"{type(e).__name__}: {str(e)[:200]}")

    def close(self) -> None:
        self._closing.set()
        if self._watch is not None:
            self._watch.stop()
        # The watch thread may sit in a read until the next event or the watch's timeout; it is a
        # daemon and ends at its next step (closing is set), so it is not waited for long.
        self._thread.join(0.2)
        try:
            self.api.close()
        except Exception:  # noqa: BLE001
            pass
