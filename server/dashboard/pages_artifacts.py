"""Artifacts: search and list (`/artifacts?q=&creator=&kind=&cursor=`, paged through
Admin.ListArtifacts; the id substring is matched here, over the pages the server returns),
and one artifact (`/artifacts/<id>`: content, interface, contract, metadata, state, its
versions from its artifact.* events, and an SVG graph of who invokes and pays whom around it,
from artifact.invoked and ledger.* events)."""

from __future__ import annotations

import asyncio
import collections
import html
import json
import math
from urllib.parse import urlencode

from google.protobuf import json_format

from server.dashboard.render import EVENT_HEADERS, e, event_row, page, table, when

PAGE = 50
R, R_FOCUS = 16, 22  # node radii of the flow graph
MAX_PAGES_SCANNED = 40  # a search by id substring reads at most this many server pages per page shown


def _search(admin, q: str, creator: str, kind: str, cursor: str):
    found, nxt, scanned = [], cursor, 0
    while True:
        r = admin.list_artifacts(created_by=creator, kind=kind, include_deleted=True, page_size=PAGE, cursor=nxt)
        scanned += 1
        for a in r.artifacts:
            if q.lower() in a.id.lower():
                found.append(a)
        nxt = r.next_cursor
        if not nxt or len(found) >= PAGE or scanned >= MAX_PAGES_SCANNED or not q:
            return found, nxt


def artifact_rows(items, link) -> list[str]:
    return [f'<tr data-artifact="{e(a.id)}"><td>{link(a.id, "/artifacts/")}</td><td>{e(a.kind)}</td>'
            f'<td>{link(a.created_by)}</td><td class=num>{a.version}</td><td class=num>{a.size_bytes}</td>'
            f'<td>{e(a.access_contract_id)}</td><td>{e(", ".join(m.name for m in a.interface))}</td>'
            f'<td>{e(when(a.updated_at.seconds))}</td><td>{"deleted" if a.deleted else ""}</td></tr>' for a in items]


async def artifacts(admin, request, tq: str, link):
    from agent_runtime.errors import EcologyError

    q = request.query_params.get("q", "")
    creator = request.query_params.get("creator", "")
    kind = request.query_params.get("kind", "")
    cursor = request.query_params.get("cursor", "")
    try:
        items, nxt = await asyncio.to_thread(_search, admin, q, creator, kind, cursor)
        problem = ""
    except EcologyError as err:
        items, nxt, problem = [], "", f"<p class=bad>{e(err.reason)}: {e(err.message)}</p>"
    token = request.query_params.get("token")
    hidden = f'<input type=hidden name=token value="{e(token)}">' if token else ""
    form = (f'<form>id contains <input name=q value="{e(q)}" placeholder="e.g. tool"> creator '
            f'<input name=creator value="{e(creator)}" placeholder="agent id"> kind <select name=kind>'
            + "".join(f'<option{" selected" if kind == k else ""} value="{k}">{k or "any"}</option>'
                      for k in ("", "data", "tool", "agent", "account", "debt", "genesis"))
            + f"</select>{hidden} <button>search</button></form>")
    more = ""
    if nxt:
        params = {k: v for k, v in (("q", q), ("creator", creator), ("kind", kind), ("cursor", nxt),
                                    ("token", token)) if v}
        more = f'<p><a id="next-page" href="/artifacts?{e(urlencode(params))}">next page &rarr;</a></p>'
    first = f'<p><a href="/artifacts{tq}">&larr; first page</a></p>' if cursor else ""
    body = (f"<h1>Artifacts</h1>{form}{problem}<p class=muted>{len(items)} shown"
            f"{', after ' + e(cursor) if cursor else ''}; tombstones included</p>"
            + table(["Artifact", "Kind", "Creator", "Version", "Bytes", "Contract", "Methods", "Updated", ""],
                    artifact_rows(items, link), "artifacts", "no artifact matches")
            + first + more)
    return page("Artifacts", body, "", tq, "/artifacts")


def _history(admin, aid: str, types: list[str], cap_calls: int = 30) -> list[dict]:
    """Every stored event of this artifact of these types (ListEvents, from the start,
    at most cap_calls pages)."""
    from server.dashboard.app import event_dict

    out, after = [], 0
    for _ in range(cap_calls):
        r = admin.list_events(after_seq=after, types=types, artifact_ids=[aid], limit=1000)
        out.extend(event_dict(x) for x in r.events)
        if not r.more:
            break
        after = r.scanned_to
    return out


def flow_graph(evs: list[dict], focus: str, width: int = 720, height: int = 420) -> str:
    """SVG: principals and artifacts as nodes on a circle (the focus in the middle); an
    arrow per (from, to, kind) with its count (invocations) or amount (scrip)."""
    edges: collections.Counter = collections.Counter()
    for ev in evs:
        d = ev["data"]
        if ev["type"] == "artifact.invoked":
            edges[(ev["principal_id"], ev["artifact_id"], "invokes")] += 1
            if d.get("payer") and d["payer"] != ev["principal_id"]:
                edges[(d["payer"], ev["artifact_id"], "pays for")] += 1
        elif ev["type"].startswith("ledger.") and d.get("from") and d.get("to"):
            edges[(d["from"], d["to"], "scrip")] += int(d.get("amount") or 0)
    if not edges:
        return '<p class=muted id="graph-empty">no invocation or payment involving it yet</p>'
    nodes = list(dict.fromkeys([focus] + [n for (a, b, _k) in edges for n in (a, b)]))[:24]
    cx, cy, r = width / 2, height / 2 - 8, min(width, height) / 2 - 50
    pos = {focus: (cx, cy)}
    others = [n for n in nodes if n != focus]
    k = len(others)
    for i, n in enumerate(others):  # evenly round the focus; two or one nodes not opposite each other
        ang = -math.pi / 2 + (i - (k - 1) / 2) * 2 * math.pi / max(k, 3)
        pos[n] = (cx + r * math.cos(ang), cy + r * math.sin(ang))
    colors = {"invokes": "#2b6cb0", "pays for": "#9333ea", "scrip": "#137333"}
    parts = [f'<svg id="flow-graph" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" style="background:#fff;border:1px solid #dde2e8;border-radius:8px">',
             '<defs>' + "".join(f'<marker id="arrow-{k.replace(" ", "")}" viewBox="0 0 10 10" refX="10" refY="5" '
                                f'markerWidth="7" markerHeight="7" orient="auto-start-reverse"><path d="M 0 0 L 10 5 L 0 10 z" '
                                f'fill="{c}"/></marker>' for k, c in colors.items()) + '</defs>']
    for (a, b, kind), value in edges.items():
        if a not in pos or b not in pos or a == b:
            continue
        (x1, y1), (x2, y2) = pos[a], pos[b]
        dx, dy = x2 - x1, y2 - y1
        dist = math.hypot(dx, dy) or 1
        off = {"invokes": 0, "pays for": 7, "scrip": -7}[kind]
        nx, ny = -dy / dist * off, dx / dist * off
        ra, rb = (R_FOCUS if a == focus else R) + 4, (R_FOCUS if b == focus else R) + 4
        sx, sy = x1 + dx / dist * ra + nx, y1 + dy / dist * ra + ny
        ex, ey = x2 - dx / dist * rb + nx, y2 - dy / dist * rb + ny
        label = f"{value}× {kind}" if kind != "scrip" else f"{value} scrip"
        parts.append(f'<line class="edge" x1="{sx:.1f}" y1="{sy:.1f}" x2="{ex:.1f}" y2="{ey:.1f}" stroke="{colors[kind]}" '
                     f'stroke-width="{min(6, 1.5 + math.log1p(value) / 2):.1f}" marker-end="url(#arrow-{kind.replace(" ", "")})">'
                     f"<title>{html.escape(a)} {kind} {html.escape(b)}: {value}</title></line>")
        lo = {"invokes": 12, "pays for": 26, "scrip": -14}[kind]  # labels beside their own line
        parts.append(f'<text x="{(sx + ex) / 2 - dy / dist * lo:.1f}" y="{(sy + ey) / 2 + dx / dist * lo + 4:.1f}" '
                     f'font-size="11" fill="{colors[kind]}" text-anchor="middle">{html.escape(label)}</text>')
    for n in nodes:
        x, y = pos[n]
        fill = "#1f2d3d" if n == focus else ("#eef1f5" if n.startswith("genesis_") else "#dbeafe")
        rad = R_FOCUS if n == focus else R
        name = n if len(n) <= 30 else n[:29] + "…"
        parts.append(f'<g class="node"><circle cx="{x:.1f}" cy="{y:.1f}" r="{rad}" fill="{fill}" stroke="#5b6877"/>'
                     f'<text x="{x:.1f}" y="{y + rad + 13:.1f}" font-size="11.5" text-anchor="middle" fill="#1d232b" '
                     f'font-weight="{700 if n == focus else 400}">{html.escape(name)}</text>'
                     f'<title>{html.escape(n)}</title></g>')
    legend = " ".join(f'<tspan fill="{c}">■ {k}</tspan>' for k, c in colors.items())
    parts.append(f'<text x="10" y="{height - 10}" font-size="12">{legend}</text></svg>')
    return "".join(parts)


async def artifact(admin, aid: str, tq: str, link):
    from agent_runtime.errors import EcologyError
    from server.dashboard.app import _ints

    def load():
        art = admin.get_artifact(aid)
        versions = _history(admin, aid, ["artifact.written", "artifact.deleted", "control.transferred", "escrow.*"])
        flows = _history(admin, aid, ["artifact.invoked", "ledger.*"])
        return art, versions, flows

    try:
        art, versions, flows = await asyncio.to_thread(load)
    except EcologyError as err:
        return page(aid, f"<h1>{e(aid)}</h1><p class=bad>{e(err.reason)}: {e(err.message)}</p>", "", tq, "/artifacts")
    meta = _ints(json_format.MessageToDict(art.metadata))
    state = _ints(json_format.MessageToDict(art.state))
    iface = [{"name": m.name, "description": m.description,
              "input_schema": _ints(json_format.MessageToDict(m.input_schema))} for m in art.interface]
    facts = [("Kind", e(art.kind)), ("Created by", link(art.created_by)), ("Contract", link(art.access_contract_id)),
             ("Version", art.version), ("Bytes", art.size_bytes), ("Billed to", link(art.billed_to)),
             ("Created", e(when(art.created_at.seconds))), ("Updated", e(when(art.updated_at.seconds))),
             ("Deleted", "yes" if art.deleted else "no")]
    fact_html = "".join(f'<div class=card><div class=k>{k}</div><div style="margin-top:4px">{v}</div></div>'
                        for k, v in facts)
    version_rows = [event_row(x, link) for x in reversed(versions)]
    body = (f"<h1>Artifact {e(aid)}</h1><div class=cards>{fact_html}</div>"
            f"<h2>Content</h2><pre id=content>{e(art.content) or '<span class=muted>(empty)</span>'}</pre>"
            "<div class=two><div><h2>Interface</h2>"
            + (f"<pre id=interface>{e(json.dumps(iface, indent=1, ensure_ascii=False))}</pre>" if iface
               else "<p class=muted>no methods</p>")
            + f"</div><div><h2>Metadata and state</h2><pre>{e(json.dumps({'metadata': meta, 'state': state}, indent=1, ensure_ascii=False))}</pre></div></div>"
            + f"<h2>Who invokes and pays whom ({len(flows)} events)</h2>{flow_graph(flows, aid)}"
            + f"<h2>Versions and control ({len(versions)} events, newest first)</h2>"
            + table(EVENT_HEADERS, version_rows, "versions"))
    return page(aid, body, "", tq, "/artifacts")
