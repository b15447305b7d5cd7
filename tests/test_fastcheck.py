"""server/kernel/fastcheck.py: its predicate never accepts what jsonschema rejects.

Property test over generated schemas of the supported subset and generated instances
(hypothesis), against jsonschema's Draft202012Validator; plus the genesis schemas, the
fallback for keywords outside the subset, and the path through validate_args."""

from __future__ import annotations

import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from server.errors import KernelError, Reason
from server.kernel import artifacts, fastcheck

TYPES = ["string", "integer", "number", "boolean", "object", "array", "null"]

scalars = (st.none() | st.booleans() | st.integers(-6, 6) | st.integers(-2**60, 2**60)
           | st.floats(allow_nan=False, allow_infinity=False)
           | st.sampled_from([0.0, 1.0, -1.0, 0.5, 2.5, 2.0**53, 1e20])
           | st.sampled_from(["", "a", "ab", "abc", "abcd", "abcde", "b"]) | st.text(max_size=6))
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.sampled_from(["a", "b", "c", "d"]), inner, max_size=4),
    max_leaves=10)

numbers = st.integers(-5, 5) | st.sampled_from([0.5, -1.5, 2.0, 2**53])
counts = st.integers(0, 4)
KEYWORDS = {
    "type": st.sampled_from(TYPES) | st.lists(st.sampled_from(TYPES), min_size=1, max_size=3, unique=True),
    "minimum": numbers, "maximum": numbers, "exclusiveMinimum": numbers, "exclusiveMaximum": numbers,
    "minLength": counts, "maxLength": counts, "minItems": counts, "maxItems": counts,
    "enum": st.lists(st.sampled_from(["a", "b", "abc", ""]), min_size=1, max_size=3, unique=True),
    "description": st.just("annotation"),
}


def _few(options: dict, most: int):
    """A dict of at most `most` of `options`' keywords (few constraints: instances then
    pass often enough for the property to be tested on accepted ones)."""
    return st.lists(st.sampled_from(sorted(options)), max_size=most, unique=True).flatmap(
        lambda names: st.fixed_dictionaries({n: options[n] for n in names}))


def schemas(depth: int = 2):
    leaf = _few(KEYWORDS, 2)
    if depth == 0:
        return leaf
    sub = schemas(depth - 1)
    return st.tuples(leaf, _few({
        "properties": st.dictionaries(st.sampled_from(["a", "b", "c"]), sub, max_size=3),
        "required": st.lists(st.sampled_from(["a", "b", "c", "d"]), max_size=2, unique=True),
        "additionalProperties": st.booleans(),
        "items": sub,
    }, 2)).map(lambda parts: {**parts[0], **parts[1]})


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(schema=schemas(), instance=json_values)
def test_the_predicate_never_accepts_what_jsonschema_rejects(schema, instance):
    accept = fastcheck.compile_accept(schema)
    assert accept is not None, f"a schema of the subset was not compiled: {schema}"
    if accept(instance):
        assert jsonschema.Draft202012Validator(schema).is_valid(instance), (schema, instance)


@settings(max_examples=300, deadline=None)
@given(instance=json_values)
def test_it_agrees_with_jsonschema_on_a_closed_object_schema(instance):
    # Stricter-than-jsonschema is allowed in general; on a schema like the genesis ones it
    # should decide exactly as jsonschema does, or it saves nothing.
    schema = {"type": "object", "additionalProperties": False, "required": ["a"],
              "properties": {"a": {"type": "string", "minLength": 1, "maxLength": 3},
                             "b": {"type": "integer", "minimum": 1, "maximum": 2**53},
                             "c": {"type": "array", "items": {"type": "string"}, "maxItems": 2}}}
    accept = fastcheck.compile_accept(schema)
    assert accept(instance) == jsonschema.Draft202012Validator(schema).is_valid(instance)


def test_every_genesis_schema_is_in_the_subset_and_agrees_on_examples():
    from server import config
    from server.kernel.kernel import Kernel

    kernel = Kernel(config.build({}))
    seen = 0
    for g in kernel.genesis.values():
        for spec in g.interface():
            schema = spec["input_schema"]
            accept = fastcheck.compile_accept(schema)
            assert accept is not None, f"{g.id}.{spec['name']}: {schema}"
            validator = jsonschema.Draft202012Validator(schema)
            for example in ({}, {"to": "bob", "amount": 1}, {"to": "bob", "amount": 0}, {"amount": 1.0, "to": "x"},
                            {"amount": True, "to": "x"}, {"zzz": 1}, {"limit": 500}, {"limit": 501}):
                if accept(example):
                    assert validator.is_valid(example), (g.id, spec["name"], example)
            seen += 1
    assert seen > 20


@pytest.mark.parametrize("schema", [
    {"type": "string", "pattern": "^a"},
    {"$ref": "#/$defs/x", "$defs": {"x": {"type": "string"}}},
    {"type": "object", "additionalProperties": {"type": "string"}},
    {"enum": [1, 2]},
    {"type": "object", "properties": {"a": {"format": "email"}}},
    {"type": "frobnicate"},
])
def test_a_keyword_outside_the_subset_falls_back_to_jsonschema(schema):
    assert fastcheck.compile_accept(schema) is None


def test_validate_args_still_words_the_error_through_jsonschema():
    spec_schema = {"type": "object", "additionalProperties": False, "required": ["to", "amount"],
                   "properties": {"to": {"type": "string", "minLength": 1},
                                  "amount": {"type": "integer", "minimum": 1}}}

    class Art:  # the two attributes validate_args reads
        id, version, interface = "x_artifact", 1, [{"name": "pay", "input_schema": spec_schema}]

        def method(self, name):
            return self.interface[0] if name == "pay" else None

    artifacts.validate_args(Art(), "pay", {"to": "bob", "amount": 3})  # accepted by the fast path
    with pytest.raises(KernelError) as e:
        artifacts.validate_args(Art(), "pay", {"to": "bob", "amount": 0})
    assert e.value.reason is Reason.INVALID_ARGS and e.value.field == "args.amount"
    assert "minimum" in str(e.value) or "less than" in str(e.value)
    with pytest.raises(KernelError) as e:
        artifacts.validate_args(Art(), "pay", {"to": "bob", "amount": 1, "extra": 1})
    assert e.value.reason is Reason.INVALID_ARGS
