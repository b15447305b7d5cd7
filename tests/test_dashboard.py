"""The web dashboard (server/dashboard) as a real process against a real server: pages,
server-sent events, the token on non-loopback addresses, and a headless Chromium that
renders the pages (screenshots) and runs their live updates."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import ROOT

CHROMIUM = "/usr/bin/chromium"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Dashboard:
    def __init__(self, server, tmp_path: Path, host: str = "127.0.0.1") -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        token_file = tmp_path / "admin.token"
        token_file.write_text(server.admin_token)
        self.log = open(tmp_path / f"dashboard-{self.port}.log", "wb")
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        env.pop("ECOLOGY_ADMIN_TOKEN", None)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "server.cli", "dashboard", "--server", server.socket,
             "--admin-token-file", str(token_file), "--listen", f"{host}:{self.port}"],
            env=env, stdout=self.log, stderr=subprocess.STDOUT, cwd=ROOT)
        deadline = time.monotonic() + 60  # a loaded machine (shared cores) starts it slowly
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"dashboard did not start: {Path(self.log.name).read_text()}")
                time.sleep(0.05)

    def get(self, path: str, headers: dict | None = None) -> tuple[int, str]:
        req = urllib.request.Request(self.base + path, headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


@pytest.fixture
def dash_factory(server, tmp_path):
    made = []

    def make(host: str = "127.0.0.1") -> Dashboard:
        d = Dashboard(server, tmp_path, host)
        made.append(d)
        return d

    yield make
    for d in made:
        d.stop()


def wait_for(fn, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while True:
        v = fn()
        if v or time.monotonic() > deadline:
            return v
        time.sleep(0.1)


def sse_events(base: str, path: str, want, timeout: float = 10.0) -> list[tuple[str, dict]]:
    """Read the SSE stream until `want(events)` is true (or the timeout)."""
    got: list[tuple[str, dict]] = []
    with urllib.request.urlopen(base + path, timeout=timeout) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        kind = None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = r.readline().decode().rstrip("\n")
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: "):
                got.append((kind, json.loads(line[6:])))
                if want(got):
                    return got
    return got


def test_watch_events_is_subscribe_for_the_operator(server):
    """Admin.WatchEvents: World.Subscribe's filters and validation; admin token only."""
    from agent_runtime import AdminClient, EcologyError

    alice, bob = server.agent("alice"), server.agent("bob")
    alice.transfer("bob", 5)
    bob.transfer("alice", 2)
    admin = server.admin()
    with admin.watch_events(types=["ledger.transfer"], principal_ids=["bob"]) as sub:
        first, second = next(sub), next(sub)
    assert [first.type, second.type] == ["ledger.transfer", "ledger.transfer"]
    assert first.principal_id == "alice" and second.principal_id == "bob"
    with alice.subscribe(types=["ledger.transfer"], principal_ids=["bob"]) as sub:
        assert [next(sub).seq, next(sub).seq] == [first.seq, second.seq]  # the same stream
    with admin.watch_events(after_seq=second.seq, types=["ledger.transfer"]) as sub:
        later = threading.Timer(0.5, lambda: alice.transfer("bob", 1, memo="live"))
        later.start()
        live = next(sub)  # then live ones: the transfer made after the stream opened
        later.join()
    assert live.seq > second.seq and live.principal_id == "alice" and live.data["memo"] == "live"
    with pytest.raises(EcologyError) as e:
        next(admin.watch_events(after_seq=-1, resume=False))
    assert e.value.reason == "INVALID_ARGS"
    with pytest.raises(EcologyError) as e:
        next(AdminClient(server.socket, alice.token).watch_events(resume=False))
    assert e.value.reason == "ADMIN_ONLY"


def test_watch_event_batches_are_watch_events_several_to_a_message(server):
    """Admin.WatchEventBatches: the same events as WatchEvents, in order, up to max_events a
    message; events committed while the server waits out interval_ms go out together."""
    import grpc

    from agent_runtime import AdminClient, EcologyError
    from ecology.v1 import admin_pb2

    alice, bob = server.agent("alice"), server.agent("bob")
    for i in range(12):
        alice.transfer("bob", 1, memo=f"t{i}")
    admin = server.admin()
    last = admin.get_stats().last_event_seq
    with admin.watch_events() as sub:
        plain = [next(sub).seq for _ in range(last)]
    raw = admin._stub.WatchEventBatches(admin_pb2.WatchEventBatchesRequest(max_events=5), metadata=admin._md)
    sizes, seqs = [], []
    for batch in raw:
        sizes.append(len(batch.events))
        seqs.extend(e.seq for e in batch.events)
        if len(seqs) >= last:
            break
    raw.cancel()
    assert seqs == plain and max(sizes) == 5 and len(sizes) == -(-last // 5)  # a backlog: full batches
    with admin.watch_event_batches(types=["ledger.transfer"], principal_ids=["bob"], max_events=4) as sub:
        mine = [next(sub) for _ in range(12)]
    assert [e.data["memo"] for e in mine] == [f"t{i}" for i in range(12)]

    # Live: after a batch the server waits interval_ms; what commits meanwhile is one batch.
    raw = admin._stub.WatchEventBatches(admin_pb2.WatchEventBatchesRequest(
        after_seq=last - 1, interval_ms=3000, types=["ledger.transfer"]), metadata=admin._md)
    first = next(raw)
    assert [e.data["memo"] for e in first.events] == ["t11"]
    for i in range(4):
        bob.transfer("alice", 1, memo=f"back{i}")
    second = next(raw)
    raw.cancel()
    assert [e.data["memo"] for e in second.events] == [f"back{i}" for i in range(4)]
    back = [e.seq for e in second.events]
    with admin.watch_event_batches(after_seq=last - 1, interval=0.05, types=["ledger.transfer"]) as sub:
        assert next(sub).seq == last and sub.buffered == 4  # the four transfers back: the same batch
        assert [next(sub).seq for _ in range(4)] == back
        assert sub.buffered == 0 and sub.last_seq == back[-1]

    for bad, reason in ((dict(interval_ms=-1), "INVALID_ARGS"), (dict(interval_ms=10_001), "INVALID_ARGS"),
                        (dict(max_events=1001), "INVALID_ARGS"), (dict(after_seq=-1), "INVALID_ARGS")):
        with pytest.raises(grpc.RpcError) as e:
            next(admin._stub.WatchEventBatches(admin_pb2.WatchEventBatchesRequest(**bad), metadata=admin._md))
        assert EcologyError.from_rpc_error(e.value).reason == reason, bad
    with pytest.raises(EcologyError) as e:
        next(AdminClient(server.socket, alice.token).watch_event_batches(resume=False))
    assert e.value.reason == "ADMIN_ONLY"


def test_pages_show_the_world_agents_and_decisions(server, dash_factory):
    alice, bob = server.agent("alice"), server.agent("bob")
    alice.transfer("bob", 7, memo="hello")
    alice.record_decision(step=1, observed={"balance": 100}, action={"kind": "transfer", "to": "bob"},
                          outcome={"status": "ok", "scrip": 93})
    alice.record_decision(step=2, observed={}, action={"kind": "idle"}, outcome={"status": "waited"})
    dash = dash_factory()

    status, body = dash.get("/")
    assert status == 200
    stats = server.admin().get_stats()
    assert "Ledger invariant" in body and "holds" in body
    assert f'id="supply">{stats.total_balances}<' in body
    assert f'id="agents">{stats.agents}<' in body
    assert f'id="isolation">{stats.sandbox_isolation}<' in body and 'id="paused">running<' in body
    assert 'class="v ok" id="invariant">holds<' in body
    server.admin().pause()
    assert wait_for(lambda: 'class="v bad" id="paused">paused<' in dash.get("/")[1])
    server.admin().resume()

    status, body = dash.get("/agents")
    assert status == 200
    assert '<a href="/agents/alice">alice</a>' in body and '<a href="/agents/bob">bob</a>' in body
    bal = {a.agent_id: a.scrip for a in server.admin().list_agents()}
    # bob has made no call (it only received): "dead" as the server sees it; alice called
    # within the last minute (acting or sleeping, depending on how long ago).
    assert (f'<tr data-agent="bob"><td><a href="/agents/bob">bob</a></td><td class="state-dead">dead</td>'
            f'<td class=num>{bal["bob"]}</td>') in body
    alice_row = body.split('data-agent="alice"')[1].split("</tr>")[0]
    assert '<td class="state-acting">acting</td>' in alice_row or '<td class="state-sleeping">sleeping</td>' in alice_row

    status, body = dash.get("/agents/alice")
    assert status == 200
    assert body.count("<tr class=decision>") == 2
    assert "kind=transfer" in body and "status=ok" in body and "kind=idle" in body and "status=waited" in body
    status, body = dash.get("/agents/bob")
    assert status == 200 and body.count("<tr class=decision>") == 0

    status, body = dash.get("/events?type=ledger.transfer")
    assert status == 200 and "ledger.transfer" in body and "agent.created" not in body.split("<tbody")[1]
    status, body = dash.get("/events?principal=bob")
    assert status == 200 and "ledger.transfer" in body


def test_stream_delivers_an_event_after_a_transfer(server, dash_factory):
    alice, _ = server.agent("alice"), server.agent("bob")
    dash = dash_factory()
    memo = "sse-" + str(time.time())
    import threading

    threading.Timer(1.0, lambda: alice.transfer("bob", 3, memo=memo)).start()
    t0 = time.monotonic()
    got = sse_events(dash.base, "/stream?type=ledger.transfer&agents=1",
                     lambda evs: any(k == "event" and memo in json.dumps(d) for k, d in evs), timeout=10)
    kinds = [k for k, _ in got]
    assert kinds[:2] == ["stats", "agents"]  # agents=1: a page that shows the agents list
    assert {a["agent_id"] for k, d in got if k == "agents" for a in d["agents"]} >= {"alice", "bob"}
    events = [d for k, d in got if k == "event"]
    assert events and all(e["type"] == "ledger.transfer" for e in events)
    assert any(memo in json.dumps(e) for e in events), got
    assert time.monotonic() - t0 < 5
    # The transfer (an agent's event after the dashboard started) shows in the actions rate.
    got = sse_events(dash.base, "/stream", lambda evs: any(k == "stats" and d["rate"] > 0 for k, d in evs))
    assert any(k == "stats" and d["rate"] > 0 and d["invariant_holds"] for k, d in got), got
    # Without agents=1 (the World page) the stream carries no agents list: between two polls'
    # stats messages there is none.
    got = sse_events(dash.base, "/stream", lambda evs: [k for k, _ in evs].count("stats") >= 3)
    assert [k for k, _ in got].count("stats") >= 3 and "agents" not in [k for k, _ in got], got


def test_non_loopback_listen_requires_the_admin_token(server, dash_factory):
    dash = dash_factory("0.0.0.0")
    status, body = dash.get("/")
    assert status == 401 and "admin token is required" in body
    assert dash.get("/stream")[0] == 401
    assert dash.get("/", {"Authorization": "Bearer wrong"})[0] == 401
    assert dash.get("/", {"Authorization": f"Bearer {server.admin_token}"})[0] == 200
    status, body = dash.get(f"/agents?token={server.admin_token}")
    assert status == 200 and "?token=" in body  # links keep the token


def test_dashboard_refuses_a_wrong_admin_token(server, tmp_path):
    bad = tmp_path / "bad.token"
    bad.write_text("nope")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("ECOLOGY_ADMIN_TOKEN", None)
    r = subprocess.run([sys.executable, "-m", "server.cli", "dashboard", "--server", server.socket,
                        "--admin-token-file", str(bad), "--listen", f"127.0.0.1:{free_port()}"],
                       env=env, cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert r.returncode == 1 and "refused the admin token" in r.stderr


def chromium() -> str:
    path = shutil.which("chromium") or (CHROMIUM if os.path.exists(CHROMIUM) else None)
    if path is None:
        pytest.fail("chromium is not installed: apt-get install chromium")
    return path


def browser(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([chromium(), "--headless=new", "--no-sandbox", "--disable-gpu",
                           "--no-first-run", "--disable-dev-shm-usage", *args],
                          capture_output=True, text=True, timeout=timeout)


class Page:
    """A headless Chromium showing one URL, driven over the DevTools protocol (the page's
    JavaScript keeps running: `--dump-dom --virtual-time-budget` never returns while the
    page holds its EventSource open, so the live check evaluates in the running page)."""

    def __init__(self, url: str, profile: Path) -> None:
        import websocket  # websocket-client (dev dependency)

        self.proc = subprocess.Popen(
            [chromium(), "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--disable-dev-shm-usage", "--remote-debugging-port=0", f"--user-data-dir={profile}",
             "--window-size=1280,800", url], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port_file = profile / "DevToolsActivePort"
        assert wait_for(port_file.exists, 30), "chromium did not open its DevTools port"
        port = int(wait_for(lambda: port_file.read_text().split("\n")[0], 10))
        targets = wait_for(lambda: [t for t in json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list"))
                                    if t["type"] == "page"], 10)
        self.ws = websocket.create_connection(targets[0]["webSocketDebuggerUrl"], timeout=20)
        self._id = 0

    def call(self, method: str, **params) -> dict:
        self._id += 1
        self.ws.send(json.dumps({"id": self._id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == self._id:
                assert "error" not in msg, msg
                return msg["result"]

    def eval(self, expression: str):
        return self.call("Runtime.evaluate", expression=expression, returnByValue=True)["result"].get("value")

    def close(self) -> None:
        self.ws.close()
        self.proc.kill()
        self.proc.wait()


def test_chromium_renders_pages_and_live_updates(server, dash_factory, tmp_path):
    alice, _ = server.agent("alice"), server.agent("bob")
    alice.record_decision(step=1, observed={"balance": 100}, action={"kind": "transfer", "to": "bob"},
                          outcome={"status": "ok"})
    dash = dash_factory()
    shots = tmp_path / "screenshots"
    shots.mkdir()
    for name, path in (("world", "/"), ("agent", "/agents/alice"), ("agents", "/agents"), ("events", "/events")):
        png = shots / f"{name}.png"
        r = browser(f"--screenshot={png}", "--window-size=1280,800", dash.base + path)
        assert png.exists(), r.stderr
        assert png.stat().st_size > 10_000, (png, png.stat().st_size)
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # Live update: the page is loaded and connected, then a transfer happens; the page's
    # EventSource handlers put bob's new balance into the table without a reload.
    before = {a.agent_id: a.scrip for a in server.admin().list_agents()}
    page = Page(dash.base + "/agents", tmp_path / "profile")
    try:
        assert wait_for(lambda: page.eval("document.getElementById('live').textContent") == "live", 20)
        page.eval("window.marker = 'not reloaded'")
        alice.transfer("bob", 11, memo="live")
        cell = "document.querySelector('tr[data-agent=bob] td.num').textContent"
        assert wait_for(lambda: page.eval(cell) == str(before["bob"] + 11), 20), page.eval(cell)
        assert page.eval("window.marker") == "not reloaded"
        png = shots / "agents-live.png"
        png.write_bytes(__import__("base64").b64decode(page.call("Page.captureScreenshot")["data"]))
        assert png.stat().st_size > 10_000
    finally:
        page.close()


def test_run_serves_the_dashboard_while_agents_act(tmp_path):
    """`ecology run --dashboard HOST:PORT`: the URL first, then the job's agents on /agents."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "server.cli", "run", "--data-dir", str(tmp_path / "w"), "--agents", "2",
         "--duration", "30", "--backend", "process", "--dashboard", f"127.0.0.1:{port}"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        def agents_page():
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/agents", timeout=5) as r:
                    body = r.read().decode()
            except OSError:
                return None
            return body if "/agents/builder-1" in body and "/agents/trader-1" in body else None
        body = wait_for(agents_page, 60)
        assert body, "the dashboard of `ecology run` did not list its agents"
        got = sse_events(f"http://127.0.0.1:{port}", "/stream", lambda evs: any(k == "event" for k, _ in evs))
        assert any(k == "event" for k, _ in got)
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=60)
    lines = [line for line in out.splitlines() if line.strip()]
    assert any(f"dashboard: http://127.0.0.1:{port}/" in line for line in lines[:3]), out + err
    with pytest.raises(OSError):  # stopped with the job
        urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2)


def test_run_dashboard_is_on_by_default_and_a_taken_port_fails_loud(tmp_path):
    from server.cli import build_parser

    args = build_parser().parse_args(["run"])
    assert args.dashboard == "127.0.0.1:8765" and not args.no_dashboard
    assert build_parser().parse_args(["run", "--no-dashboard"]).no_dashboard
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        r = subprocess.run([sys.executable, "-m", "server.cli", "run", "--data-dir", str(tmp_path / "w"),
                            "--agents", "1", "--duration", "5", "--backend", "process",
                            "--dashboard", f"127.0.0.1:{port}"],
                           capture_output=True, text=True, cwd=ROOT, timeout=60,
                           env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 1, r.stdout + r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and str(port) in lines[0] and "--dashboard HOST:PORT" in lines[0] \
        and "--no-dashboard" in lines[0], r.stderr
    assert r.stdout == "" and not (tmp_path / "w").exists()  # nothing started


def test_the_charts_notice_names_the_install_command(monkeypatch, tmp_path):
    from server.dashboard import render

    monkeypatch.setattr(render, "UPLOT_DIST", tmp_path / "nothing")
    head, notice = render.uplot_head()
    assert head == "" and "Charts are off" in notice and "npm ci" in notice and "scripts/setup.sh" in notice
    monkeypatch.undo()
    head, notice = render.uplot_head("?token=t")
    assert notice == "" and '/static/uplot/uPlot.iife.min.js?token=t' in head, \
        "the chart library is not installed: run scripts/setup.sh (npm ci in server/dashboard/static)"


MARKET_CONFIG = """
[oracle]
interval_seconds = 8.0
"""


class LivePage(Page):
    """Page plus navigation, clicks and screenshots. A navigation waits for the new
    document's load event (Page.loadEventFired): an evaluation sent while the old document
    is being replaced may never be answered. (Chromium allows 6 connections per host: before
    the pages closed their EventSource on `pagehide`, the seventh page never loaded.)"""

    def _load_fired(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            msg = json.loads(self.ws.recv())
            if msg.get("method") == "Page.loadEventFired":
                return
        raise AssertionError("the page did not load")

    def goto(self, url: str) -> None:
        self.call("Page.enable")
        self.call("Page.navigate", url=url)
        self._load_fired()
        assert self.eval("location.href") == url
        assert wait_for(lambda: self.eval("document.getElementById('live').textContent") == "live", 30)

    def click_and_load(self, expression: str) -> None:
        self.call("Page.enable")
        self.eval(expression)
        self._load_fired()

    def shot(self, path: Path) -> Path:
        height = min(4000, int(self.eval("document.documentElement.scrollHeight") or 800))
        self.call("Emulation.setDeviceMetricsOverride", width=1400, height=height, deviceScaleFactor=1, mobile=False)
        data = self.call("Page.captureScreenshot", captureBeyondViewport=True,
                         clip={"x": 0, "y": 0, "width": 1400, "height": height, "scale": 1})["data"]
        path.write_bytes(__import__("base64").b64decode(data))
        self.call("Emulation.clearDeviceMetricsOverride")
        assert path.stat().st_size > 10_000
        return path


def test_browser_drives_the_dashboard_of_a_running_world(tmp_path):
    """While `ecology run` runs real agents, headless Chromium: agents appear and their figures
    change without a reload; clicking an agent shows its decisions; pause drops actions/s to 0
    and resume brings them back; the charts render with data; Artifacts and Market show real
    rows; an agent stopped from its page shows as stopped. Screenshots of every page go to
    $ECOLOGY_SCREENSHOTS (else tmp_path/screenshots)."""
    shots = Path(os.environ.get("ECOLOGY_SCREENSHOTS") or tmp_path / "screenshots")
    shots.mkdir(parents=True, exist_ok=True)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    config = tmp_path / "world.toml"
    config.write_text(MARKET_CONFIG)
    proc = subprocess.Popen(
        [sys.executable, "-m", "server.cli", "run", "--data-dir", str(tmp_path / "w"), "--agents", "4",
         "--duration", "400", "--backend", "process", "--config", str(config), "--dashboard", f"127.0.0.1:{port}"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)})
    page = None
    try:
        def listed():
            try:
                with urllib.request.urlopen(base + "/agents", timeout=5) as r:
                    return "/agents/builder-1" in r.read().decode()
            except OSError:
                return False
        assert wait_for(listed, 90), "the dashboard did not list the agents"
        page = LivePage(base + "/agents", tmp_path / "profile")

        # Agents: four rows, and their figures change while the page stays loaded.
        page.goto(base + "/agents")
        page.eval("window.marker = 'not reloaded'")
        rows = "Array.from(document.querySelectorAll('#agents tr')).map(r => r.textContent).join('|')"
        assert wait_for(lambda: page.eval("document.querySelectorAll('#agents tr[data-agent]').length") == 4, 30)
        first = page.eval(rows)
        assert wait_for(lambda: page.eval(rows) != first, 60), first
        assert page.eval("window.marker") == "not reloaded"
        page.shot(shots / "agents.png")

        # Clicking an agent's row link opens its page with its decisions.
        page.click_and_load("document.querySelector('tr[data-agent=\"builder-1\"] a').click()")
        assert page.eval("location.pathname") == "/agents/builder-1"
        assert page.eval("document.querySelectorAll('tr.decision').length") > 0
        assert "Artifacts it created" in page.eval("document.body.textContent")
        page.shot(shots / "agent.png")

        # World: actions per second, charts with data; pause -> 0, resume -> back.
        page.goto(base + "/")
        rate = "parseFloat(document.getElementById('rate').textContent)"
        assert wait_for(lambda: page.eval(rate) > 0, 60), page.eval(rate)
        assert wait_for(lambda: page.eval("cols.t.length") >= 5, 30)
        assert page.eval("document.querySelectorAll('.uplot canvas').length") >= 7
        assert page.eval("plots.length") == 7 and page.eval("plots[1].data[1].some(v => v > 0)")
        assert page.eval("document.getElementById('charts-missing')") is None
        assert wait_for(lambda: page.eval("document.querySelectorAll('#mints tr:not(.empty)').length") > 0, 60)
        page.shot(shots / "world.png")
        page.eval("document.getElementById('btn-pause').click()")
        assert wait_for(lambda: page.eval("document.getElementById('paused').textContent") == "paused", 20)
        assert wait_for(lambda: page.eval(rate) == 0, 30), page.eval(rate)
        page.shot(shots / "world-paused.png")
        page.eval("document.getElementById('btn-resume').click()")
        assert wait_for(lambda: page.eval("document.getElementById('paused').textContent") == "running", 20)
        assert wait_for(lambda: page.eval(rate) > 0, 60), page.eval(rate)

        # Artifacts: agents' artifacts listed; one artifact's page with its history and graph.
        page.goto(base + "/artifacts?creator=builder-1")
        assert page.eval("document.querySelectorAll('#artifacts tr[data-artifact]').length") > 0
        page.shot(shots / "artifacts.png")
        from agent_runtime import AdminClient

        with AdminClient(f"unix:{tmp_path / 'w' / 'sock' / 'world.sock'}",
                         (tmp_path / "w" / "admin.token").read_text().strip()) as admin:
            invoked = wait_for(lambda: [x.artifact_id for x in admin.list_events(types=["artifact.invoked"]).events
                                        if not x.artifact_id.startswith("genesis_")], 60)
        page.goto(base + "/artifacts/" + invoked[0])
        assert page.eval("document.querySelectorAll('#versions tr:not(.empty)').length") > 0
        assert page.eval("document.getElementById('content').textContent").strip()
        assert page.eval("document.querySelectorAll('#flow-graph line.edge').length") > 0
        page.shot(shots / "artifact.png")

        # Market: real listings/sales and oracle bids.
        visits = iter(range(1000))

        def market_has_bids():  # the agents bid on the mint at their own pace: look again until they did
            page.goto(base + f"/market?visit={next(visits)}")
            if page.eval("document.querySelectorAll('#bids tr:not(.empty)').length") > 0:
                return True
            time.sleep(2)  # not yet: load the page again in a moment
            return False
        assert wait_for(market_has_bids, 120)
        assert page.eval("document.querySelectorAll('#market-events tr:not(.empty)').length") > 0
        assert page.eval("document.querySelectorAll('#sales tr:not(.empty)').length"
                         " + document.querySelectorAll('#listings tr:not(.empty)').length") > 0
        page.shot(shots / "market.png")

        page.goto(base + "/events?type=ledger.*")
        assert page.eval("document.querySelectorAll('#events tr').length") > 0
        page.shot(shots / "events.png")

        # Stop an agent from its page: it shows stopped (and the run does not restart it).
        page.goto(base + "/agents/trader-1")
        page.eval("document.getElementById('btn-stop').click()")
        assert wait_for(lambda: page.eval("document.getElementById('state').textContent") == "stopped", 30)
        assert "stopped" in page.eval("document.getElementById('control-result').textContent")
        page.shot(shots / "agent-stopped.png")
        page.goto(base + "/agents")
        cell = "document.querySelector('tr[data-agent=\"trader-1\"] td:nth-child(2)').textContent"
        assert page.eval(cell) == "stopped"
        page.shot(shots / "agents-stopped.png")
    finally:
        if page is not None:
            page.close()
        proc.terminate()
        out, _ = proc.communicate(timeout=90)
    assert "agent trader-1 stopped by the operator" in out, out[-3000:]
    assert "Traceback" not in out, out[-5000:]
    print(f"screenshots: {shots}")


def test_the_operators_reads_behind_the_pages(server):
    """Admin.ListEvents, ListArtifacts, GetArtifact, QueryGenesis: what the pages read, with
    their validation (the dashboard never opens the database)."""
    import grpc

    from tests.conftest import fails

    alice, bob = server.agent("alice"), server.agent("bob")
    alice.write("alice.secret", "only mine", access_contract_id="genesis_private")
    alice.transfer("bob", 4, memo="reads")
    admin = server.admin()
    page = admin.list_events(types=["ledger.transfer"], principal_ids=["bob"])
    assert [e.data["memo"] for e in page.events] == ["reads"] and not page.more
    assert page.scanned_to == admin.get_stats().last_event_seq
    first = admin.list_events(limit=1)
    assert len(first.events) == 1 and first.more and first.scanned_to == first.events[0].seq
    fails(lambda: admin.list_events(limit=1001), grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGS", "limit")
    assert admin.get_artifact("alice.secret").content == "only mine"  # whatever its contract
    fails(lambda: bob.read("alice.secret"), grpc.StatusCode.PERMISSION_DENIED, "ACCESS_DENIED")
    fails(lambda: admin.get_artifact("nope"), grpc.StatusCode.NOT_FOUND, "NOT_FOUND")
    assert "alice.secret" in [a.id for a in admin.list_artifacts(created_by="alice").artifacts]
    assert admin.query_genesis("genesis_ledger", "balance", principal_id="bob")["scrip"] == \
        {a.agent_id: a.scrip for a in admin.list_agents()}["bob"]
    assert "listings" in admin.query_genesis("genesis_escrow", "listings")
    fails(lambda: admin.query_genesis("genesis_ledger", "transfer", to="bob", amount=1),
          grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGS", "method")
    fails(lambda: admin.query_genesis("genesis_ledger", "balance", bogus=1),
          grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGS")
    stats = admin.get_stats()
    assert stats.agents_active >= 1 and stats.agents_stopped == 0 and stats.sandbox_workers_warm >= 0


def test_artifacts_search_pages_and_artifact_page(server, dash_factory):
    from agent_runtime import EcologyError

    alice = server.agent("alice")

    def write(*args, **kw):
        while True:
            try:
                return alice.write(*args, **kw)
            except EcologyError as err:  # compute debt: wait exactly as told
                if err.retry_after is None:
                    raise
                time.sleep(err.retry_after)
    for i in range(60):
        write(f"alice.n{i:02d}", f"note {i}")
    write("alice.findme", "here", access_contract_id="genesis_private")
    dash = dash_factory()
    status, body = dash.get("/artifacts?q=FINDME")  # the id substring, any case
    assert status == 200 and body.count('<tr data-artifact="') == 1 and 'data-artifact="alice.findme"' in body
    status, body = dash.get("/artifacts?creator=alice")
    assert body.count('<tr data-artifact="') == 50 and 'id="next-page"' in body
    nxt = body.split('id="next-page" href="')[1].split('"')[0].replace("&amp;", "&")
    status, rest = dash.get(nxt)
    assert status == 200 and rest.count('<tr data-artifact="') > 0
    shown = {x.split('"')[0] for x in (body + rest).split('<tr data-artifact="')[1:]}
    assert {f"alice.n{i:02d}" for i in range(60)} | {"alice.findme"} <= shown
    status, page = dash.get("/artifacts/alice.findme")
    assert status == 200 and "<pre id=content>here</pre>" in page and "artifact.written" in page
    assert dash.get("/artifacts/nope")[1].count("NOT_FOUND") == 1
