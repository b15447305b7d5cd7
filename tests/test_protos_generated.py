"""The checked-in stubs (ecology/v1/) are exactly what protos/ produces, and every
message, field, enum value, service and method in protos/ is documented by a comment."""

from __future__ import annotations

import importlib.util
import pathlib

import grpc_tools
from google.protobuf import descriptor_pb2
from grpc_tools import protoc

ROOT = pathlib.Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"


def _load_gen_protos():
    spec = importlib.util.spec_from_file_location("gen_protos", ROOT / "scripts" / "gen_protos.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _tree(base: pathlib.Path) -> dict[str, bytes]:
    """Generated files under base/ecology, by relative path (no caches)."""
    root = base / "ecology"
    return {
        p.relative_to(base).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and "__pycache__" not in p.parts and p.suffix in (".py", ".pyi")
    }


def test_checked_in_stubs_match_protos_byte_for_byte(tmp_path):
    generated_paths = _load_gen_protos().generate(tmp_path)
    fresh = _tree(tmp_path)
    checked_in = _tree(ROOT)
    assert {p.relative_to(tmp_path).as_posix() for p in generated_paths} == set(fresh)
    assert set(fresh) == set(checked_in), (
        "generated file set differs; run `python scripts/gen_protos.py`: "
        f"missing {sorted(set(fresh) - set(checked_in))}, extra {sorted(set(checked_in) - set(fresh))}"
    )
    assert any(name.endswith("world_pb2_grpc.py") for name in fresh)
    differing = [name for name in fresh if fresh[name] != checked_in[name]]
    assert not differing, f"stale stubs (run `python scripts/gen_protos.py`): {differing}"


# ------------------------------------------------------------------------- comments


def _descriptor_set(tmp_path) -> descriptor_pb2.FileDescriptorSet:
    out = tmp_path / "ecology.desc"
    files = sorted(p.relative_to(PROTOS).as_posix() for p in PROTOS.rglob("*.proto"))
    rc = protoc.main(["protoc", *_load_gen_protos().include_paths(), "--include_source_info",
                      f"--descriptor_set_out={out}", *files])
    assert rc == 0, "protoc failed"
    fds = descriptor_pb2.FileDescriptorSet()
    fds.ParseFromString(out.read_bytes())
    assert {f.name for f in fds.file} == set(files)
    return fds


# Field numbers in descriptor.proto, which make up SourceCodeInfo.Location.path.
_FILE_MESSAGE, _FILE_ENUM, _FILE_SERVICE = 4, 5, 6
_MSG_FIELD, _MSG_NESTED, _MSG_ENUM = 2, 3, 4
_ENUM_VALUE = 2
_SERVICE_METHOD = 2


def _undocumented(fds: descriptor_pb2.FileDescriptorSet) -> list[str]:
    missing: list[str] = []
    for f in fds.file:
        comments = {
            tuple(loc.path): (loc.leading_comments + loc.trailing_comments).strip()
            for loc in f.source_code_info.location
        }

        def check(path: tuple, name: str) -> None:
            if not comments.get(path):
                missing.append(f"{f.name}: {name}")

        def enum(e, path, prefix):
            check(path, f"enum {prefix}{e.name}")
            for i, v in enumerate(e.value):
                check(path + (_ENUM_VALUE, i), f"value {prefix}{e.name}.{v.name}")

        def message(m, path, prefix):
            full = f"{prefix}{m.name}"
            check(path, f"message {full}")
            for i, fld in enumerate(m.field):
                check(path + (_MSG_FIELD, i), f"field {full}.{fld.name}")
            for i, nested in enumerate(m.nested_type):
                if nested.options.map_entry:
                    continue
                message(nested, path + (_MSG_NESTED, i), full + ".")
            for i, e in enumerate(m.enum_type):
                enum(e, path + (_MSG_ENUM, i), full + ".")

        for i, m in enumerate(f.message_type):
            message(m, (_FILE_MESSAGE, i), "")
        for i, e in enumerate(f.enum_type):
            enum(e, (_FILE_ENUM, i), "")
        for i, s in enumerate(f.service):
            check((_FILE_SERVICE, i), f"service {s.name}")
            for j, rpc in enumerate(s.method):
                check((_FILE_SERVICE, i, _SERVICE_METHOD, j), f"rpc {s.name}.{rpc.name}")
    return missing


def test_every_message_field_and_rpc_is_documented(tmp_path):
    fds = _descriptor_set(tmp_path)
    # The check itself sees what it must: the World service and its messages.
    names = {m.name for f in fds.file for m in f.message_type}
    assert {"Artifact", "GetStateRequest", "CreateAgentRequest"} <= names
    missing = _undocumented(fds)
    assert not missing, "undocumented in protos/ (add a comment):\n  " + "\n  ".join(missing)


def test_comment_check_detects_a_missing_comment(tmp_path):
    """Guard against a vacuous check: an uncommented field is reported."""
    proto = tmp_path / "p" / "t.proto"
    proto.parent.mkdir()
    proto.write_text('syntax = "proto3";\npackage t;\n// Documented.\nmessage M {\n'
                     '  // Documented field.\n  string a = 1;\n  string b = 2;\n}\n')
    out = tmp_path / "t.desc"
    assert protoc.main(["protoc", f"-I{proto.parent}", "--include_source_info",
                        f"--descriptor_set_out={out}", "t.proto"]) == 0
    fds = descriptor_pb2.FileDescriptorSet()
    fds.ParseFromString(out.read_bytes())
    assert _undocumented(fds) == ["t.proto: field M.b"]
