"""Structured logging: JSON lines in production, readable lines on a terminal.

Everything goes through one stdlib handler whose formatter runs structlog's processors, so
records from libraries (aiohttp, confluent-kafka callbacks) get the same shape and, above all,
the same redaction as the relay's own. What is logged at INFO is a decision of the callers:
one line per state change and per dead-letter, never one per delivered event.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO

import orjson
import structlog
from structlog.typing import Processor

from consumer.observability.redact import redact_event_dict
from consumer.settings import Settings

# Libraries that would otherwise log per request or per poll at INFO.
_QUIET_LOGGERS = ("aiohttp.access", "aiohttp.server", "asyncio")


def _json_dumps(obj: Any, **_kw: Any) -> str:
    return orjson.dumps(obj, default=str).decode()


def _keep_message_field(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """JSON lines put the event in ``message``: a field of that name is kept as ``detail``
    (or ``message_field`` when that is taken too) instead of being overwritten."""
    if "message" in event_dict:
        spare = "detail" if "detail" not in event_dict else "message_field"
        event_dict[spare] = event_dict.pop("message")
    return event_dict


def _level(name: str) -> int:
    levels = logging.getLevelNamesMapping()
    try:
        return levels[name.upper()]
    except KeyError:
        raise ValueError(f"LOG_LEVEL: unknown level {name!r}") from None


def _use_console(log_format: str, stream: TextIO) -> bool:
    if log_format == "auto":
        return stream.isatty()
    return log_format == "console"


def configure_logging(settings: Settings, *, stream: TextIO | None = None) -> None:
    """Route all logging to ``stream`` (stderr by default) as redacted structured lines.

    Calling it again replaces the previous configuration (tests and the CLI both do).
    """
    out = stream if stream is not None else sys.stderr
    level = _level(settings.log_level)
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
        # Tracebacks become text *before* redaction, so exception messages are masked too.
        structlog.processors.format_exc_info,
    ]
    renderer: Processor
    if _use_console(settings.log_format, out):
        renderer = structlog.dev.ConsoleRenderer(colors=False)
        final: list[Processor] = [renderer]
    else:
        final = [
            _keep_message_field,
            structlog.processors.EventRenamer("message"),
            structlog.processors.JSONRenderer(serializer=_json_dumps),
        ]
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[structlog.stdlib.ExtraAdder(), *shared],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            redact_event_dict,
            *final,
        ],
    )
    handler = logging.StreamHandler(out)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    for name in _QUIET_LOGGERS:
        logging.getLogger(name).setLevel(max(level, logging.WARNING))

    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        # Not cached: reconfiguring must reach loggers created at import time.
        cache_logger_on_first_use=False,
    )


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    """The logger for a module: ``log = get_logger(__name__)``; fields as keyword arguments."""
    return structlog.stdlib.get_logger(name)
