"""A fast acceptance test for the simple JSON Schemas most methods declare.

`jsonschema` (Draft 2020-12) is the authority on a method's `input_schema`
(artifacts.validate_args); it costs ~30 us per call even for a closed object of two
fields, on the writer thread, for every invoke. `compile_accept(schema)` turns a schema
made only of the keywords below into a plain Python predicate that answers True only
when jsonschema would accept the instance too. Anything else - a keyword outside the
subset, or an instance the predicate does not accept - goes to jsonschema, which then
decides and words the error. So the predicate may be stricter than jsonschema, never
looser, and a schema it does not understand costs one dict lookup more than before.

Supported, with jsonschema's meaning: `type` (a name or a list of names), `properties`,
`required`, `additionalProperties` (a boolean), `items` (one schema), `minItems`,
`maxItems`, `minLength`, `maxLength` (code points, as len() counts), `minimum`,
`maximum`, `exclusiveMinimum`, `exclusiveMaximum` (numbers), `enum` (of strings only),
and the annotations `description`, `title`, `default`, `examples`, `$comment`.
Types: `integer` is an int or a float with no fractional part, `number` an int or a
float, and neither is a bool; `array` is a list, `object` a dict.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Predicate = Callable[[Any], bool]

_ANNOTATIONS = frozenset({"description", "title", "default", "examples", "$comment"})
_KEYWORDS = frozenset({
    "type", "properties", "required", "additionalProperties", "items", "minItems", "maxItems",
    "minLength", "maxLength", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "enum",
}) | _ANNOTATIONS


def _is_number(x: Any) -> bool:
    return type(x) is int or type(x) is float


def _is_integer(x: Any) -> bool:
    return type(x) is int or (type(x) is float and x.is_integer())


_TYPES: dict[str, Predicate] = {
    "string": lambda x: type(x) is str,
    "integer": _is_integer,
    "number": _is_number,
    "boolean": lambda x: type(x) is bool,
    "object": lambda x: type(x) is dict,
    "array": lambda x: type(x) is list,
    "null": lambda x: x is None,
}


class Unsupported(Exception):
    """The schema uses something the fast path does not implement."""


def _count(value: Any) -> int:
    if type(value) is int and value >= 0:
        return value
    if type(value) is float and value.is_integer() and value >= 0:
        return int(value)
    raise Unsupported("a count must be a non-negative integer")


def _compile(schema: Any) -> Predicate:
    if schema is True or schema == {}:
        return lambda x: True
    if type(schema) is not dict:
        raise Unsupported("not an object schema")
    if not set(schema) <= _KEYWORDS:
        raise Unsupported(f"keywords {sorted(set(schema) - _KEYWORDS)}")
    checks: list[Predicate] = []

    if "type" in schema:
        names = schema["type"]
        names = [names] if type(names) is str else names
        if type(names) is not list or not names or any(n not in _TYPES for n in names):
            raise Unsupported("type")
        preds = [_TYPES[n] for n in names]
        checks.append(preds[0] if len(preds) == 1 else (lambda x, ps=tuple(preds): any(p(x) for p in ps)))

    if "enum" in schema:
        values = schema["enum"]
        if type(values) is not list or not values or any(type(v) is not str for v in values):
            raise Unsupported("enum of something else than strings")
        allowed = frozenset(values)
        checks.append(lambda x: type(x) is str and x in allowed)

    lo_len = _count(schema["minLength"]) if "minLength" in schema else None
    hi_len = _count(schema["maxLength"]) if "maxLength" in schema else None
    if lo_len is not None or hi_len is not None:
        lo, hi = lo_len or 0, hi_len
        checks.append(lambda x: type(x) is not str or (lo <= len(x) and (hi is None or len(x) <= hi)))

    bounds = []
    for key, test in (("minimum", lambda x, b: x >= b), ("maximum", lambda x, b: x <= b),
                      ("exclusiveMinimum", lambda x, b: x > b), ("exclusiveMaximum", lambda x, b: x < b)):
        if key in schema:
            bound = schema[key]
            if not _is_number(bound):
                raise Unsupported(key)
            bounds.append((test, bound))
    if bounds:
        checks.append(lambda x, bs=tuple(bounds): not _is_number(x) or all(t(x, b) for t, b in bs))

    lo_items = _count(schema["minItems"]) if "minItems" in schema else 0
    hi_items = _count(schema["maxItems"]) if "maxItems" in schema else None
    item = _compile(schema["items"]) if "items" in schema else None
    if lo_items or hi_items is not None or item is not None:
        def array_ok(x, lo=lo_items, hi=hi_items, item=item) -> bool:
            if type(x) is not list:
                return True
            if len(x) < lo or (hi is not None and len(x) > hi):
                return False
            return item is None or all(item(v) for v in x)
        checks.append(array_ok)

    props = schema.get("properties", {})
    if type(props) is not dict:
        raise Unsupported("properties")
    compiled = {name: _compile(sub) for name, sub in props.items()}
    required = schema.get("required", [])
    if type(required) is not list or any(type(r) is not str for r in required):
        raise Unsupported("required")
    extra = schema.get("additionalProperties", True)
    if type(extra) is not bool:
        raise Unsupported("additionalProperties as a schema")
    if compiled or required or extra is False:
        required_t = tuple(required)
        closed = extra is False

        def object_ok(x) -> bool:
            if type(x) is not dict:
                return True
            for name in required_t:
                if name not in x:
                    return False
            for name, value in x.items():
                check = compiled.get(name)
                if check is None:
                    if closed:
                        return False
                elif not check(value):
                    return False
            return True
        checks.append(object_ok)

    if not checks:
        return lambda x: True
    if len(checks) == 1:
        return checks[0]
    all_checks = tuple(checks)
    return lambda x: all(c(x) for c in all_checks)


def compile_accept(schema: Any) -> Predicate | None:
    """A predicate that is True only for instances jsonschema accepts under `schema`, or
    None when the schema uses anything outside the subset (module docstring)."""
    try:
        return _compile(schema)
    except (Unsupported, RecursionError):
        return None
