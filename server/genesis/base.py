"""What a genesis artifact is: a named set of methods, each with a JSON-Schema input,
invoked through the kernel's ordinary invoke path (same validation, same contract
check, same charging) - no mechanical privilege a user artifact could not be given."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from server.storage.store import Store

if TYPE_CHECKING:
    from server.kernel.kernel import Kernel

STRING = {"type": "string"}
ID = {"type": "string", "minLength": 1, "maxLength": 128}
INTEGER = {"type": "integer"}
AMOUNT = {"type": "integer", "minimum": 1, "maximum": 2**53}
COUNT = {"type": "integer", "minimum": 0, "maximum": 2**53}
LIMIT = {"type": "integer", "minimum": 1, "maximum": 500}


@dataclass(frozen=True)
class Call:
    """Everything a genesis method gets: the transaction, who calls, and when."""

    conn: Store
    caller: str
    now: float


def method(description: str, properties: dict | None = None, required: tuple[str, ...] = ()):
    """Declare a genesis method; its schema is closed (no unknown arguments)."""

    def wrap(fn: Callable) -> Callable:
        fn.__genesis_spec__ = {
            "name": fn.__name__.rstrip("_"),
            "description": description,
            "input_schema": {
                "type": "object",
                "properties": properties or {},
                "required": list(required),
                "additionalProperties": False,
            },
        }
        return fn

    return wrap


class Genesis:
    id: str = ""
    description: str = ""
    has_standing: bool = False

    def __init__(self, kernel: "Kernel") -> None:
        self.kernel = kernel
        self._methods: dict[str, Callable] = {}
        for name in dir(type(self)):
            fn = getattr(self, name)
            spec = getattr(fn, "__genesis_spec__", None)
            if spec is not None:
                self._methods[spec["name"]] = fn

    def interface(self) -> list[dict]:
        return [self._methods[n].__genesis_spec__ for n in sorted(self._methods)]

    def content(self) -> str:
        return self.description

    def setup(self, conn: Store, now: float) -> None:
        """Run at every start, after the artifact exists (idempotent): own tables' rows."""

    def call(self, conn: Store, caller: str, name: str, args: dict, now: float) -> Any:
        return self._methods[name](Call(conn, caller, now), **args)
