"""structlog configured for JSON lines on stderr (one per event), and everything else
that logs routed into the same JSON lines.

The access log writes a line per RPC, so rendering is on the hot path. It does not go
through the structlog pipeline: `access_writer()` returns a pre-bound writer that renders
the same JSON line (the same fields, in the same order, the same ISO timestamp) with one
orjson call and one write + flush of the binary stream; the timestamp's date-and-seconds
prefix is formatted once per second. Measured: ~3.5 us per line (half of it the write and flush) instead of ~7.5 us through
structlog's processors (bench/bench_observability.py). Lines are still flushed one by one,
so a `kill -9` loses none that was written. A line is a single write() of the buffered
stream, whose own lock keeps it whole next to structlog's lines from other threads.

Every line on the server's stderr is one JSON object, tracebacks included:
* structlog events: an exception (`log.exception`, `exc_info=True`) becomes an
  `exception` field holding the formatted traceback (format_exc_info);
* the standard library's `logging` (grpc's own "Unexpected error raised by servicer
  method" with its traceback, asyncio's "Task exception was never retrieved", warnings
  through `logging.captureWarnings`): one handler on the root logger renders each record
  through the same JSON renderer, with `logger` naming its source;
* uncaught exceptions in threads (`threading.excepthook`) and in the main thread
  (`sys.excepthook`) are logged the same way instead of printed. When the lines go to a
  file rather than stderr (`ecology run` keeps the terminal for its progress), they are
  also printed as usual, so a crash is never silent.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
import traceback
from datetime import datetime, timezone

import orjson
import structlog

_RENDER = structlog.processors.JSONRenderer(serializer=orjson.dumps, option=orjson.OPT_NON_STR_KEYS)


class JsonFormatter(logging.Formatter):
    """A stdlib logging record as one JSON line: event, level, logger, timestamp and,
    with exc_info, `exception` (the traceback as a string)."""

    def format(self, record: logging.LogRecord) -> str:
        try:
            message = record.getMessage()
        except Exception:  # a bad %-format in someone's log call: still one JSON line
            message = f"{record.msg!r} % {record.args!r}"
        event = {
            "event": message,
            "level": record.levelname.lower(),
            "logger": record.name,
            "timestamp": datetime.fromtimestamp(record.created, timezone.utc).isoformat().replace("+00:00", "Z"),
        }
        if record.exc_info:
            event["exception"] = "".join(traceback.format_exception(*record.exc_info))
        elif record.exc_text:
            event["exception"] = record.exc_text
        if record.stack_info:
            event["stack"] = record.stack_info
        rendered = _RENDER(None, "", event)
        return (rendered.decode() if isinstance(rendered, bytes) else rendered) + "\n"


def _log_uncaught(kind: str, echo):
    """An excepthook that logs the exception as a JSON line; `echo(exc_type, exc, tb,
    thread_name)` also prints it (None: not printed)."""
    log = logging.getLogger("uncaught")

    def hook(exc_type, exc, tb, thread_name: str | None = None) -> None:
        if issubclass(exc_type, KeyboardInterrupt):
            sys.__excepthook__(exc_type, exc, tb)
            return
        log.error("uncaught_exception in %s%s", kind, f" {thread_name}" if thread_name else "",
                  exc_info=(exc_type, exc, tb))
        if echo is not None:
            echo(exc_type, exc, tb, thread_name)

    return hook


def _print_exception(exc_type, exc, tb, thread_name=None) -> None:
    if thread_name:
        print(f"Exception in thread {thread_name}:", file=sys.stderr)
    traceback.print_exception(exc_type, exc, tb, file=sys.stderr)


_STATE: dict = {"stream": None, "level": logging.INFO}


def _iso_timestamps():
    """time -> the ISO 8601 UTC string of structlog's TimeStamper(fmt="iso", utc=True)
    (datetime.isoformat: microseconds, omitted when 0; 'Z' for +00:00), with the
    strftime part cached per second."""
    cache = [-1, ""]
    gmtime, strftime = time.gmtime, time.strftime

    def stamp(now: float) -> str:
        sec = int(now)
        usec = int(round((now - sec) * 1e6))
        if usec >= 1_000_000:
            sec, usec = sec + 1, usec - 1_000_000
        if sec != cache[0]:
            cache[0], cache[1] = sec, strftime("%Y-%m-%dT%H:%M:%S", gmtime(sec))
        return f"{cache[1]}.{usec:06d}Z" if usec else f"{cache[1]}Z"

    return stamp


def configured() -> bool:
    return _STATE["stream"] is not None


def access_writer():
    """The access log's writer: `write(principal, method, code, duration_ms, request_id)`
    writes the line structlog would write for `log.info("rpc", principal=..., method=...,
    code=..., duration_ms=..., request_id=...)` (request_id only when not None) to the
    configured stream, or None when info lines are filtered out (--log-level warning or
    above) or logging was never configured. Bound to the configuration at call time."""
    stream = _STATE["stream"]
    if stream is None or _STATE["level"] > logging.INFO:
        return None
    dumps, stamp, clock = orjson.dumps, _iso_timestamps(), time.time
    write, flush = stream.write, stream.flush

    def access(principal, method, code, duration_ms, request_id=None) -> None:
        if request_id is None:
            line = {"principal": principal, "method": method, "code": code, "duration_ms": duration_ms,
                    "event": "rpc", "level": "info", "timestamp": stamp(clock())}
        else:
            line = {"principal": principal, "method": method, "code": code, "duration_ms": duration_ms,
                    "request_id": request_id, "event": "rpc", "level": "info", "timestamp": stamp(clock())}
        write(dumps(line, option=orjson.OPT_APPEND_NEWLINE | orjson.OPT_NON_STR_KEYS))
        flush()

    return access


def configure(level: str = "info", file=None) -> None:
    """`file`: a binary stream for the JSON lines (default: stderr)."""
    stream = file or sys.stderr.buffer
    _STATE.update(stream=stream, level=getattr(logging, level.upper()))
    handler = logging.StreamHandler(_TextOver(stream))
    handler.terminator = ""  # the formatter ends the line: one write per line
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(level.upper())
    logging.captureWarnings(True)
    echo = None if file is None else _print_exception
    thread_hook = _log_uncaught("thread", echo)
    threading.excepthook = lambda a: thread_hook(a.exc_type, a.exc_value, a.exc_traceback,
                                                 getattr(a.thread, "name", None))
    sys.excepthook = _log_uncaught("main", echo)
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            _RENDER,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level.upper())),
        logger_factory=structlog.BytesLoggerFactory(file=stream),
        cache_logger_on_first_use=True,
    )


class _TextOver:
    """A text stream for logging.StreamHandler that writes UTF-8 to the binary stream the
    structlog lines go to (one stream, so lines of both never interleave mid-line)."""

    def __init__(self, binary) -> None:
        self._b = binary

    def write(self, text: str) -> int:
        self._b.write(text.encode("utf-8", "replace"))
        return len(text)

    def flush(self) -> None:
        self._b.flush()
