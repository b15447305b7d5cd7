"""A minimal Kubernetes API server for the kubernetes backend's apply path, on a real TCP socket.

No cluster can run on these machines, so test_kubernetes.py points the official `kubernetes`
client at this server through a real kubeconfig. It speaks the REST paths the backend uses
(Secrets, Pods with list/watch/log, NetworkPolicies: create -> 409 AlreadyExists when present,
replace -> 404 when missing, get, delete), checks the bearer token like an API server, and
validates every object it is sent against the Kubernetes JSON schema (kubernetes-validate,
strict: unknown fields are refused with 422 like a real API server). It does not run Pods: a test
plays the kubelet with `set_pod_status`. Everything received is recorded in `requests`.
"""

from __future__ import annotations

import copy
import json
import re
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import kubernetes_validate

K8S_VERSION = "1.30.0"          # a version kubernetes-validate ships schemas for (offline)
TOKEN = "fake-api-token"

_PATH = re.compile(r"^/(?:api/v1|apis/networking\.k8s\.io/v1)/namespaces/([^/]+)/"
                   r"(secrets|pods|networkpolicies)(?:/([^/]+))?(?:/(log))?$")
KINDS = {"secrets": "Secret", "pods": "Pod", "networkpolicies": "NetworkPolicy"}


class FakeKubeAPI:
    def __init__(self) -> None:
        self.objects: dict[tuple[str, str, str], dict] = {}      # (plural, ns, name) -> object
        self.requests: list[dict] = []                            # {method, plural, name, body}
        self.events: list[tuple[int, str, dict]] = []             # pods: (rv, type, object)
        self.rv = 100
        self.cond = threading.Condition()
        self.closing = False
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def _send(self, code: int, body: dict | str) -> None:
                data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "text/plain" if isinstance(body, str) else "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _handle(self, method: str) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                    return self._send(401, _status(401, "Unauthorized", "bad token"))
                url = urlparse(self.path)
                q = {k: v[-1] for k, v in parse_qs(url.query).items()}
                m = _PATH.match(url.path)
                if not m:
                    return self._send(404, _status(404, "NotFound", url.path))
                ns, plural, name, sub = m.groups()
                body = json.loads(raw) if raw else None
                with api.cond:
                    api.requests.append({"method": method, "plural": plural, "name": name, "body": body,
                                         "query": q, "sub": sub})
                if method == "GET" and name is None and q.get("watch") in ("true", "1", "True"):
                    return self._watch(ns, plural, q)
                code, out = api.handle(method, ns, plural, name, sub, body, q)
                self._send(code, out)

            def _watch(self, ns: str, plural: str, q: dict) -> None:
                self.send_response(200)                 # chunked, like an API server's watch
                self.send_header("Content-Type", "application/json")
                self.send_header("Transfer-Encoding", "chunked")
                self.send_header("Connection", "close")
                self.end_headers()
                self.close_connection = True
                rv = int(q.get("resourceVersion") or api.rv)
                deadline = time.monotonic() + float(q.get("timeoutSeconds") or 60)
                sel = _selector(q.get("labelSelector"))
                while time.monotonic() < deadline:
                    with api.cond:
                        new = [e for e in api.events if e[0] > rv]
                        if not new and not api.closing:
                            api.cond.wait(0.1)
                            continue
                        if api.closing:
                            break
                    for erv, typ, obj in new:
                        rv = erv
                        if obj["metadata"]["namespace"] == ns and _matches(obj, sel):
                            line = (json.dumps({"type": typ, "object": obj}) + "\n").encode()
                            try:
                                self.wfile.write(b"%x\r\n%s\r\n" % (len(line), line))
                                self.wfile.flush()
                            except OSError:
                                return
                try:
                    self.wfile.write(b"0\r\n\r\n")
                except OSError:
                    pass

            def do_GET(self):
                self._handle("GET")

            def do_POST(self):
                self._handle("POST")

            def do_PUT(self):
                self._handle("PUT")

            def do_DELETE(self):
                self._handle("DELETE")

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    # -- the API -------------------------------------------------------------------------

    def _bump(self, obj: dict) -> None:
        self.rv += 1
        obj["metadata"]["resourceVersion"] = str(self.rv)

    def _event(self, typ: str, obj: dict) -> None:
        self.events.append((self.rv, typ, copy.deepcopy(obj)))
        self.cond.notify_all()

    def handle(self, method, ns, plural, name, sub, body, q) -> tuple[int, dict | str]:
        kind = KINDS[plural]
        with self.cond:
            if method == "POST" or method == "PUT":
                if body.get("kind") != kind or body.get("metadata", {}).get("namespace", ns) != ns:
                    return 400, _status(400, "BadRequest", "kind or namespace does not match the path")
                try:
                    kubernetes_validate.validate(body, K8S_VERSION, strict=True)
                except kubernetes_validate.ValidationError as e:
                    return 422, _status(422, "Invalid", e.message)
                key = (plural, ns, body["metadata"]["name"])
                if method == "POST" and key in self.objects:
                    return 409, _status(409, "AlreadyExists", f'{plural} "{key[2]}" already exists')
                if method == "PUT" and (key not in self.objects or name != key[2]):
                    return 404, _status(404, "NotFound", f'{plural} "{name}" not found')
                obj = copy.deepcopy(body)
                old = self.objects.get(key)
                obj["metadata"]["uid"] = old["metadata"]["uid"] if old else str(uuid.uuid4())
                obj["metadata"]["creationTimestamp"] = "2026-01-01T00:00:00Z"
                if plural == "pods":
                    obj["status"] = {"phase": "Pending"}
                self._bump(obj)
                self.objects[key] = obj
                if plural == "pods":
                    self._event("ADDED" if method == "POST" else "MODIFIED", obj)
                return (201 if method == "POST" else 200), obj
            if name is None:                                   # list
                sel = _selector(q.get("labelSelector"))
                items = [o for (p, n, _), o in self.objects.items() if p == plural and n == ns and _matches(o, sel)]
                return 200, {"apiVersion": "v1", "kind": kind + "List", "metadata": {"resourceVersion": str(self.rv)},
                             "items": items}
            key = (plural, ns, name)
            if key not in self.objects:
                return 404, _status(404, "NotFound", f'{plural} "{name}" not found')
            if method == "GET":
                return 200, (f"log of {name}\nline 2\n" if sub == "log" else self.objects[key])
            if method == "DELETE":
                obj = self.objects.pop(key)
                self._bump(obj)
                if plural == "pods":
                    self._event("DELETED", obj)
                return 200, obj
        return 405, _status(405, "MethodNotAllowed", method)

    # -- playing the kubelet -------------------------------------------------------------

    def set_pod_status(self, name: str, phase: str, *, exit_code: int | None = None, reason: str | None = None,
                       waiting: str | None = None, ns: str | None = None) -> None:
        with self.cond:
            key = next(k for k in self.objects if k[0] == "pods" and k[2] == name and (ns is None or k[1] == ns))
            obj = self.objects[key]
            state: dict = {"running": {"startedAt": "2026-01-01T00:00:01Z"}}
            if exit_code is not None:
                state = {"terminated": {"exitCode": exit_code, "reason": reason or "Error"}}
            elif waiting:
                state = {"waiting": {"reason": waiting}}
            obj["status"] = {"phase": phase, "containerStatuses": [{
                "name": "agent", "image": obj["spec"]["containers"][0]["image"], "imageID": "", "ready": phase == "Running",
                "restartCount": 0, "state": state}]}
            self._bump(obj)
            self._event("MODIFIED", obj)

    def pods(self, ns: str | None = None) -> list[dict]:
        with self.cond:
            return [o for (p, n, _), o in self.objects.items() if p == "pods" and (ns is None or n == ns)]

    def sent(self, method: str | None = None, plural: str | None = None) -> list[dict]:
        with self.cond:
            return [r for r in self.requests if (method is None or r["method"] == method)
                    and (plural is None or r["plural"] == plural)]

    def kubeconfig(self, path, namespace: str = "eco-test") -> str:
        path.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "fake",
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "users": [{"name": "tester", "user": {"token": TOKEN}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "tester", "namespace": namespace}}],
        }))
        return str(path)

    def close(self) -> None:
        with self.cond:
            self.closing = True
            self.cond.notify_all()
        self.httpd.shutdown()
        self.httpd.server_close()


def _status(code: int, reason: str, message: str) -> dict:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code}


def _selector(text: str | None) -> dict:
    return dict(x.split("=", 1) for x in (text or "").split(",") if x)


def _matches(obj: dict, sel: dict) -> bool:
    labels = obj["metadata"].get("labels") or {}
    return all(labels.get(k) == v for k, v in sel.items())
