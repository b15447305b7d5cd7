"""The action language: what a brain may ask the loop to do, one JSON object per step.

Every action is a JSON object with an "action" key; any action may carry a short
"reason" (logged, and kept in the agent's recent history). `ACTIONS_DOC` below is the
text shown to an LLM brain; `parse_action` turns a model's answer into a checked action
or raises ActionError saying exactly what is wrong (that message is sent back to the
model once).

    {"action": "read", "artifact_id": ID}
    {"action": "write", "artifact_id": ID, "content": TEXT, "metadata"?: {...},
     "executable"?: bool, "interface"?: [{"name", "description"?, "input_schema"?}],
     "access_contract_id"?: ID}
    {"action": "delete", "artifact_id": ID}
    {"action": "invoke", "artifact_id": ID, "method": NAME, "args"?: {...}}
    {"action": "transfer", "to": ID, "amount": INT>0, "memo"?: TEXT}
    {"action": "escrow_list", "artifact_id": ID, "price": INT>=0}
    {"action": "escrow_purchase", "artifact_id": ID}
    {"action": "escrow_cancel", "artifact_id": ID}
    {"action": "listings"}
    {"action": "search", "query": TEXT, "limit"?: INT}
    {"action": "sleep", "seconds": NUMBER}
    {"action": "sleep_until_event", "types"?: [TYPE], "artifact_ids"?: [ID],
     "principal_ids"?: [ID], "timeout"?: SECONDS, "after_seq"?: INT}
    {"action": "sleep_until", "condition": {"scrip_at_least": INT} | {"compute_at_least": NUMBER}
     | {"artifact_exists": ID}, "timeout"?: SECONDS}
    {"action": "note", "text": TEXT}

In id lists of sleep_until_event, "me" stands for the agent's own id. It wakes on the first
matching event after `after_seq` (default: the last seq the loop observed before this
decision), so an event that happened while the brain was deciding is not missed.
"""

from __future__ import annotations

import json
import re
from typing import Any

ACTIONS_DOC = """\
Answer with exactly ONE JSON object: the next action. Every action has an "action" key and may
have a short "reason". Actions:
- {"action": "read", "artifact_id": "<id>"}                      read an artifact's content
- {"action": "write", "artifact_id": "<id>", "content": "<text>", "metadata": {...},
   "executable": false, "interface": [...]}                      create or update an artifact you control.
   For a tool: "executable": true, content = Python source defining one function per method (named
   arguments, JSON in and out), "interface": [{"name": "<fn>", "description": "...",
   "input_schema": {"type": "object", "properties": {...}}}], and "metadata": {"price": <scrip per call>,
   "description": "..."}.
- {"action": "delete", "artifact_id": "<id>"}
- {"action": "invoke", "artifact_id": "<id>", "method": "<name>", "args": {...}}   call a tool or a
   genesis artifact (you pay its metadata.price to its controller when it succeeds)
- {"action": "transfer", "to": "<principal id>", "amount": <int>, "memo": "<text>"}   give scrip
- {"action": "escrow_list", "artifact_id": "<id>", "price": <int>}     sell control of your artifact
- {"action": "escrow_purchase", "artifact_id": "<id>"}                 buy a listed artifact
- {"action": "escrow_cancel", "artifact_id": "<id>"}                   withdraw your listing
- {"action": "listings"}                                               see what is for sale
- {"action": "search", "query": "<words>"}                             find artifacts and agents
- {"action": "sleep", "seconds": <number>}
- {"action": "sleep_until_event", "types": ["ledger.transfer"], "principal_ids": ["me"], "timeout": 60}
   wake on the first matching event (types e.g. ledger.transfer, escrow.listed, escrow.purchased,
   artifact.written, "escrow.*"; "me" = your own id), or after timeout seconds
- {"action": "sleep_until", "condition": {"scrip_at_least": <int>}, "timeout": 300}
   (also {"compute_at_least": <number>} or {"artifact_exists": "<id>"})
- {"action": "note", "text": "<what to remember>"}                     add to your memory notes
The results of reads, searches, listings and invocations appear under "recent actions" next time.
"""

ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
CONDITIONS = ("scrip_at_least", "compute_at_least", "artifact_exists")
MAX_SLEEP = 3600.0
DEFAULT_EVENT_TIMEOUT = 300.0
MAX_TEXT = 4000

KINDS = ("read", "write", "delete", "invoke", "transfer", "escrow_list", "escrow_purchase", "escrow_cancel",
         "listings", "search", "sleep", "sleep_until_event", "sleep_until", "note")
SLEEPS = ("sleep", "sleep_until_event", "sleep_until")
# Actions that do something in the world (counted against loop.max_actions).
ACTING = tuple(k for k in KINDS if k not in SLEEPS)


class ActionError(ValueError):
    """An answer that is not a usable action; the message says why."""


def _id(a: dict, key: str, *, allow_me: bool = False) -> str:
    v = a.get(key)
    if not isinstance(v, str) or not (ID_RE.match(v) or (allow_me and v == "me")):
        raise ActionError(f"{a.get('action')}: {key!r} must be an artifact id "
                          f"(1-128 chars of A-Za-z0-9._:-), got {v!r}")
    return v


def _int(a: dict, key: str, minimum: int) -> int:
    v = a.get(key)
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    if isinstance(v, str) and v.strip().isdigit():
        v = int(v.strip())
    if not isinstance(v, int) or isinstance(v, bool) or v < minimum:
        raise ActionError(f"{a.get('action')}: {key!r} must be an integer >= {minimum}, got {v!r}")
    return v


def _number(a: dict, key: str, default: float | None = None, maximum: float = MAX_SLEEP) -> float:
    v = a.get(key, default)
    if isinstance(v, str):
        try:
            v = float(v)
        except ValueError:
            pass
    if not isinstance(v, (int, float)) or isinstance(v, bool) or v != v or v < 0:
        raise ActionError(f"{a.get('action')}: {key!r} must be a non-negative number of seconds, got {v!r}")
    return float(min(v, maximum))


def _text(a: dict, key: str, *, required: bool = True, limit: int = MAX_TEXT) -> str:
    v = a.get(key)
    if v is None and not required:
        return ""
    if not isinstance(v, str) or (required and not v.strip() and key != "content"):
        raise ActionError(f"{a.get('action')}: {key!r} must be a non-empty string")
    return v[:limit]


def _str_list(a: dict, key: str, *, ids: bool = False) -> list[str]:
    v = a.get(key, [])
    if isinstance(v, str):
        v = [v]
    if not isinstance(v, list) or not all(isinstance(x, str) and x for x in v) or len(v) > 64:
        raise ActionError(f"{a.get('action')}: {key!r} must be a list of strings")
    if ids:
        for x in v:
            if not (ID_RE.match(x) or x == "me"):
                raise ActionError(f"{a.get('action')}: {x!r} in {key!r} is not an id")
    return v


def validate(a: Any) -> dict:
    """A checked, normalised copy of action `a`, or ActionError."""
    if not isinstance(a, dict):
        raise ActionError(f"an action must be a JSON object, got {type(a).__name__}")
    kind = a.get("action")
    if kind not in KINDS:
        raise ActionError(f"unknown action {kind!r}; one of: {', '.join(KINDS)}")
    out: dict[str, Any] = {"action": kind}
    if isinstance(a.get("reason"), str) and a["reason"]:
        out["reason"] = a["reason"][:300]
    if kind in ("read", "delete", "escrow_purchase", "escrow_cancel"):
        out["artifact_id"] = _id(a, "artifact_id")
    elif kind == "write":
        out["artifact_id"] = _id(a, "artifact_id")
        content = a.get("content", "")
        if not isinstance(content, str):
            content = json.dumps(content)
        out["content"] = content
        meta = a.get("metadata") or {}
        if not isinstance(meta, dict):
            raise ActionError("write: 'metadata' must be an object")
        out["metadata"] = meta
        out["executable"] = bool(a.get("executable") or a.get("can_execute"))
        iface = a.get("interface") or []
        if not isinstance(iface, list) or not all(isinstance(m, dict) and isinstance(m.get("name"), str)
                                                  and NAME_RE.match(m["name"]) for m in iface):
            raise ActionError("write: 'interface' must be a list of {\"name\": <python identifier>, "
                              "\"description\"?, \"input_schema\"?}")
        if out["executable"] and not iface:
            raise ActionError("write: an executable artifact needs an 'interface' with at least one method")
        if iface and not out["executable"]:
            raise ActionError("write: an 'interface' needs \"executable\": true")
        out["interface"] = [{"name": m["name"], "description": str(m.get("description", ""))[:500],
                             "input_schema": m.get("input_schema") if isinstance(m.get("input_schema"), dict)
                             else {"type": "object"}} for m in iface]
        if a.get("access_contract_id"):
            out["access_contract_id"] = _id(a, "access_contract_id")
    elif kind == "invoke":
        out["artifact_id"] = _id(a, "artifact_id")
        method = a.get("method")
        if not isinstance(method, str) or not NAME_RE.match(method):
            raise ActionError(f"invoke: 'method' must be a method name, got {method!r}")
        out["method"] = method
        args = a.get("args", {})
        if args is None:
            args = {}
        if not isinstance(args, dict):
            raise ActionError("invoke: 'args' must be an object of named arguments")
        out["args"] = args
    elif kind == "transfer":
        out["to"] = _id(a, "to")
        out["amount"] = _int(a, "amount", 1)
        out["memo"] = _text(a, "memo", required=False, limit=200)
    elif kind == "escrow_list":
        out["artifact_id"] = _id(a, "artifact_id")
        out["price"] = _int(a, "price", 0)
    elif kind == "search":
        q = a.get("query")
        if not isinstance(q, str) or not q.strip():
            raise ActionError("search: 'query' must be a non-empty string")
        out["query"] = q.strip()[:200]
        out["limit"] = min(_int(a, "limit", 1), 100) if "limit" in a else 20
    elif kind == "sleep":
        out["seconds"] = _number(a, "seconds")
    elif kind == "sleep_until_event":
        out["types"] = _str_list(a, "types")
        out["artifact_ids"] = _str_list(a, "artifact_ids", ids=True)
        out["principal_ids"] = _str_list(a, "principal_ids", ids=True)
        out["timeout"] = _number(a, "timeout", DEFAULT_EVENT_TIMEOUT)
        if a.get("after_seq") is not None:
            out["after_seq"] = _int(a, "after_seq", 0)
    elif kind == "sleep_until":
        cond = a.get("condition")
        if not isinstance(cond, dict) or len(cond) != 1 or next(iter(cond)) not in CONDITIONS:
            raise ActionError("sleep_until: 'condition' must be one of {\"scrip_at_least\": <int>}, "
                              "{\"compute_at_least\": <number>}, {\"artifact_exists\": \"<id>\"}")
        (name, value), = cond.items()
        if name == "scrip_at_least":
            value = _int(cond | {"action": kind}, name, 0)
        elif name == "compute_at_least":
            value = _number(cond | {"action": kind}, name, maximum=1e12)
        else:
            value = _id(cond | {"action": kind}, name)
        out["condition"] = {name: value}
        out["timeout"] = _number(a, "timeout", DEFAULT_EVENT_TIMEOUT)
    elif kind == "note":
        out["text"] = _text(a, "text", limit=1000)
    return out


_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.DOTALL | re.IGNORECASE)


def parse_action(text: str) -> dict:
    """A model's answer (one JSON object, possibly in a ``` fence or after some words) as
    a checked action, or ActionError."""
    if not isinstance(text, str) or not text.strip():
        raise ActionError("the answer was empty; expected one JSON object")
    candidates = [text.strip()]
    candidates += [m.group(1).strip() for m in _FENCE.finditer(text)]
    start, end = text.find("{"), text.rfind("}")
    if 0 <= start < end:
        candidates.append(text[start:end + 1])
    first_error = None
    for c in candidates:
        try:
            value = json.loads(c)
        except ValueError as e:
            first_error = first_error or f"not valid JSON ({e})"
            continue
        if isinstance(value, list) and len(value) == 1:
            value = value[0]
        if isinstance(value, dict) and "action" not in value and isinstance(value.get("next_action"), dict):
            value = value["next_action"]
        return validate(value)
    raise ActionError(first_error or "no JSON object found in the answer")
