"""A structlog logger that keeps what an in-process service logged, for tests to read."""

from __future__ import annotations

from typing import Any

import structlog
from structlog.testing import CapturingLogger


class Events:
    """What a service logged, as event dicts."""

    def __init__(self) -> None:
        self.capture = CapturingLogger()
        self.logger: Any = structlog.wrap_logger(
            self.capture, processors=[], wrapper_class=structlog.BoundLogger, context_class=dict
        )

    def named(self, event: str) -> list[dict[str, Any]]:
        return [call.kwargs for call in self.capture.calls if call.kwargs.get("event") == event]

    def all(self) -> list[dict[str, Any]]:
        return [dict(call.kwargs, level=call.method_name) for call in self.capture.calls]
