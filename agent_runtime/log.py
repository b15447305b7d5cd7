"""Structured logs of the agent runtime: one JSON object per line on stderr.

    log = Logger(agent="alice")
    log.info("action", action="write", ok=True, ms=12)
    -> {"ts": "2026-05-09T07:35:25.123Z", "level": "info", "event": "action", "agent": "alice", ...}

Standard library only (the runtime runs inside small containers).
"""

from __future__ import annotations

import json
import sys
import threading
import time
from typing import Any, TextIO

LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40}


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1000):03d}Z"


class Logger:
    def __init__(self, stream: TextIO | None = None, level: str = "info", **context: Any) -> None:
        self.stream = stream
        self.level = LEVELS.get(level.lower(), 20)
        self.context = dict(context)
        self._lock = threading.Lock()

    def bind(self, **context: Any) -> None:
        self.context.update(context)

    def log(self, level: str, event: str, **fields: Any) -> None:
        if LEVELS[level] < self.level:
            return
        record = {"ts": _iso(time.time()), "level": level, "event": event, **self.context, **fields}
        line = json.dumps(record, default=str, ensure_ascii=False)
        with self._lock:
            stream = self.stream or sys.stderr
            try:
                stream.write(line + "\n")
                stream.flush()
            except (OSError, ValueError):
                pass

    def debug(self, event: str, **fields: Any) -> None:
        self.log("debug", event, **fields)

    def info(self, event: str, **fields: Any) -> None:
        self.log("info", event, **fields)

    def warning(self, event: str, **fields: Any) -> None:
        self.log("warning", event, **fields)

    def error(self, event: str, **fields: Any) -> None:
        self.log("error", event, **fields)
