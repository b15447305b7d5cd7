"""What a person is told about the sandbox's isolation: one sentence, shared by the
server's startup line, `ecology status`, `ecology serve` and the `ecology run` console.

Isolation levels (sandbox.isolation):
  * "bwrap"   - real isolation (bubblewrap namespaces + seccomp + rlimits).
  * "none"    - `auto` found no working bubblewrap: user code and user contracts are REFUSED
                (SANDBOX_UNAVAILABLE); nothing untrusted runs.
  * "process" - plain subprocesses, NOT isolated; only when the operator names it.
"""

from __future__ import annotations

INSTALL_HINT = "apt-get install bubblewrap"

NOTES = {
    "bwrap": "artifact code and user contracts run in bubblewrap namespaces with seccomp and rlimits",
    "none": ("no sandbox: artifact code and user-written contracts are refused (SANDBOX_UNAVAILABLE) "
             f"because bubblewrap is missing or does not work here; install it (as root: {INSTALL_HINT}) and restart the server"),
    "process": ("WARNING: sandbox.isolation = \"process\": artifact code and user contracts run as plain "
                "subprocesses with NO isolation (they can read this server's files and reach the network); "
                "development only"),
}


def isolation_note(isolation: str) -> str:
    """One sentence describing `isolation` (a level above, as reported by GetStats)."""
    return NOTES.get(isolation, f"unknown isolation {isolation!r}")


def isolation_warning(isolation: str) -> str | None:
    """The sentence to show prominently when isolation is weaker than bwrap, else None."""
    return None if isolation == "bwrap" else isolation_note(isolation)
