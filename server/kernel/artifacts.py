"""The artifact model: validation of ids and fields (stored through server/storage)."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import jsonschema
import referencing.exceptions

from server.errors import KernelError, Reason, invalid
from server.kernel import fastcheck

# Ids: 1..128 characters from [A-Za-z0-9._:-], starting with a letter or digit.
ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:\-]{0,127}")
METHOD_PATTERN = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
RESERVED_PREFIX = "genesis_"
# The issuance account of the ledger: the source of mints and sink of burns.
SYSTEM_ACCOUNT = "genesis_system"


def check_id(value: Any, field_name: str = "artifact_id") -> str:
    if not isinstance(value, str) or not value:
        raise invalid(field_name, "an artifact id is required")
    if len(value) > 128:
        raise invalid(field_name, "at most 128 characters")
    if not ID_PATTERN.fullmatch(value):
        raise invalid(field_name, "allowed characters are A-Z a-z 0-9 . _ : - (first: letter or digit)")
    return value


def derive_kind(has_standing: bool, can_execute: bool) -> str:
    if has_standing:
        return "agent" if can_execute else "account"
    return "tool" if can_execute else "data"


def dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True, allow_nan=False)


@dataclass
class Artifact:
    id: str
    content: str
    created_by: str
    access_contract_id: str
    has_standing: bool
    can_execute: bool
    interface: list[dict]
    metadata: dict
    state: dict
    version: int
    created_at: float
    updated_at: float
    size_bytes: int
    billed_to: str
    deleted: bool = False

    @property
    def kind(self) -> str:
        return derive_kind(self.has_standing, self.can_execute)

    @property
    def controller(self) -> str | None:
        c = self.state.get("controller")
        return c if isinstance(c, str) else None

    def method(self, name: str) -> dict | None:
        for m in self.interface:
            if m["name"] == name:
                return m
        return None

    def to_dict(self, *, with_content: bool = True) -> dict:
        d = {
            "id": self.id,
            "content": self.content if with_content else "",
            "created_by": self.created_by,
            "access_contract_id": self.access_contract_id,
            "has_standing": self.has_standing,
            "can_execute": self.can_execute,
            "interface": self.interface,
            "metadata": self.metadata,
            "state": self.state,
            "kind": self.kind,
            "version": self.version,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "size_bytes": self.size_bytes,
            "deleted": self.deleted,
            "billed_to": self.billed_to,
        }
        return d

    def summary(self) -> dict:
        """Discovery view (ListArtifacts, genesis_store list/search/get_metadata), for
        anyone, whatever the contract says about `read`: everything but the content, and of
        the state only `controller` (who controls an artifact is public). The rest of the
        state, like the content, is returned only by a read the contract allows (listing
        runs on committed state without a contract check per row)."""
        d = self.to_dict(with_content=False)
        d["state"] = {"controller": self.controller} if self.controller is not None else {}
        return d


def get(conn, artifact_id: str) -> Artifact | None:
    return conn.artifact_get(artifact_id)


def require(conn, artifact_id: str, *, allow_deleted: bool = False) -> Artifact:
    art = get(conn, artifact_id)
    if art is None:
        raise KernelError(Reason.NOT_FOUND, f"no artifact {artifact_id!r}", field="artifact_id")
    if art.deleted and not allow_deleted:
        raise KernelError(Reason.DELETED, f"artifact {artifact_id!r} was deleted", field="artifact_id")
    return art


def insert(conn, art: Artifact) -> None:
    conn.artifact_insert(art)


def save(conn, art: Artifact) -> None:
    """Write back a changed artifact (caller bumps version and updated_at)."""
    conn.artifact_save(art)


def bump(art: Artifact, now: float, **changes: Any) -> Artifact:
    return replace(art, version=art.version + 1, updated_at=now, **changes)


def validate_interface(methods: Any, limits: dict) -> list[dict]:
    """Normalise and check an interface: unique method names, valid JSON Schemas."""
    if not isinstance(methods, list):
        raise invalid("interface", "must be a list of methods")
    if len(methods) > limits["max_interface_methods"]:
        raise invalid("interface", f"at most {limits['max_interface_methods']} methods")
    seen = set()
    out = []
    for i, m in enumerate(methods):
        name = m.get("name") if isinstance(m, dict) else None
        if not isinstance(name, str) or not METHOD_PATTERN.fullmatch(name):
            raise invalid(f"interface[{i}].name", "must match [A-Za-z_][A-Za-z0-9_]{0,63}")
        if name in seen:
            raise invalid(f"interface[{i}].name", f"duplicate method {name!r}")
        seen.add(name)
        schema = m.get("input_schema") or {}
        if not isinstance(schema, dict):
            raise invalid(f"interface[{i}].input_schema", "must be an object")
        if len(dumps(schema)) > limits["max_schema_bytes"]:
            raise invalid(f"interface[{i}].input_schema", "too large")
        try:
            jsonschema.Draft202012Validator.check_schema(schema)
        except jsonschema.SchemaError as e:
            raise invalid(f"interface[{i}].input_schema", f"not a valid JSON Schema: {e.message}")
        desc = m.get("description", "")
        if not isinstance(desc, str) or len(desc) > 4096:
            raise invalid(f"interface[{i}].description", "must be a string of at most 4096 characters")
        out.append({"name": name, "description": desc, "input_schema": schema})
    return out


_validators: dict[tuple, tuple[jsonschema.protocols.Validator, Callable[[Any], bool] | None]] = {}


def validate_args(art: Artifact, method: str, args: dict) -> None:
    spec = art.method(method)
    if spec is None:
        names = ", ".join(m["name"] for m in art.interface) or "none"
        raise KernelError(
            Reason.INVALID_ARGS, f"{art.id} has no method {method!r} (methods: {names})", field="method"
        )
    # Compiled validators are reused per artifact version (checked equal to the schema,
    # so two worlds in one process cannot mix them up).
    # `accept` (fastcheck) answers the common case, valid args of a simple schema, without
    # jsonschema; whatever it does not accept, jsonschema decides.
    key = (art.id, art.version, method)
    cached = _validators.get(key)
    if cached is None or cached[0].schema != spec["input_schema"]:
        cached = (jsonschema.Draft202012Validator(spec["input_schema"]),
                  fastcheck.compile_accept(spec["input_schema"]))
        if len(_validators) >= 4096:
            _validators.clear()
        _validators[key] = cached
    validator, accept = cached
    if accept is not None and accept(args):
        return
    try:
        if validator.is_valid(args):  # the common case; best_match is the slow path
            return
        error = jsonschema.exceptions.best_match(validator.iter_errors(args))
    except (referencing.exceptions.Unresolvable, RecursionError) as e:
        # A schema can pass check_schema and still not be applicable: a $ref to nowhere
        # (or to the network, which is never fetched), or a $ref cycle.
        raise KernelError(
            Reason.INVALID_ARGS,
            f"{art.id}.{method}: its input_schema cannot be applied ({type(e).__name__})",
            field="method",
        ) from None
    if error is not None:
        where = ".".join(str(p) for p in error.absolute_path)
        raise KernelError(
            Reason.INVALID_ARGS,
            f"args{'.' + where if where else ''}: {error.message}",
            field=f"args.{where}" if where else "args",
        )
