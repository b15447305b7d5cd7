"""structlog configured for JSON lines on stderr (one per event).

The access log writes a line per RPC, so rendering is on the hot path: orjson renders
the event dict to bytes and the line goes straight to the binary stream.
"""

from __future__ import annotations

import logging
import sys

import orjson
import structlog


def configure(level: str = "info", file=None) -> None:
    """`file`: a binary stream for the JSON lines (default: stderr)."""
    logging.basicConfig(stream=sys.stderr, format="%(message)s", level=level.upper())
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(serializer=orjson.dumps, option=orjson.OPT_NON_STR_KEYS),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level.upper())),
        logger_factory=structlog.BytesLoggerFactory(file=file or sys.stderr.buffer),
        cache_logger_on_first_use=True,
    )
