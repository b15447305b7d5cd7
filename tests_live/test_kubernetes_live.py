"""A live test of the kubernetes launcher backend against a real cluster.

Not part of `make test` (no Kubernetes cluster can run on the project's machines, and the
default suite skips nothing): run it where KUBECONFIG points at a cluster,

    KUBECONFIG=~/.kube/config .venv/bin/python -m pytest tests_live/

Without a cluster it fails and says why. The default suite covers the manifests (validated
against the Kubernetes schemas) and the apply path (against tests/k8s_fake_api.py).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from agent_runtime.launcher import Launcher
from agent_runtime.launcher import kubernetes as k8s
from tests.conftest import wait_until
from tests.test_kubernetes import LIMITS, TOKEN

LIVE = os.environ.get("KUBECONFIG", "")


def test_live_cluster():
    """On a real cluster (namespace $ECOLOGY_K8S_NAMESPACE or the context's; image
    $ECOLOGY_K8S_IMAGE, default ecology-agent:latest, must be pullable by the nodes): the API server
    admits the three objects; the Pod runs as uid 10001 with the token file readable, a read-only
    root and a writable /tmp; a failing run is restarted as a new Pod; stop deletes everything."""
    if not LIVE or not Path(LIVE.split(os.pathsep)[0]).exists():
        pytest.fail("KUBECONFIG does not point at a cluster's configuration: this test needs a real cluster")
    probe = ("import os, sys, pathlib\n"
             "tok = pathlib.Path(os.environ['ECOLOGY_TOKEN_FILE']).read_text()\n"
             "try:\n    open('/probe', 'w'); ro = False\nexcept OSError:\n    ro = True\n"
             "open('/tmp/x', 'w').write('ok')\n"
             "print('PROBE', os.getuid(), os.getgid(), tok == os.environ['WANT'], ro, flush=True)\n"
             "sys.exit(1)\n")
    with Launcher("kubernetes", os.environ.get("ECOLOGY_K8S_SERVER", "192.0.2.1:50051"), backoff_initial=1,
                  poll_interval=0.2, command=["python3", "-c", probe]) as launcher:
        h = launcher.start("live-probe", TOKEN, LIMITS, env={"WANT": TOKEN})
        wait_until(lambda: h.restarts >= 1, 300, "the Pod to run and fail once")
        assert h.history[0]["reason"] == "exit 1", h.last_output
        assert "PROBE 10001 10001 True True" in h.last_output
        backend = launcher.backend
        launcher.stop("live-probe", timeout=10)
        name = k8s.object_name("live-probe")
        from kubernetes.client.exceptions import ApiException
        for read in (backend.core.read_namespaced_secret, backend.net.read_namespaced_network_policy):
            with pytest.raises(ApiException) as e:
                read(name, backend.namespace)
            assert e.value.status == 404
