"""What wfctl prints: status events as JSON or as one text line, and progress on a terminal."""

from __future__ import annotations

import json
import shutil
import time
from typing import Any, TextIO

from worker.events import StatusEvent


def as_json(data: Any, *, pretty: bool = False) -> str:
    return json.dumps(data, ensure_ascii=False, indent=2 if pretty else None, sort_keys=pretty)


def _short(value: Any, width: int = 60) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return text if len(text) <= width else text[: width - 1] + "…"


def text_line(event: StatusEvent) -> str:
    """One status event as a line for a person: local time, event, instance, status, and
    what else it says."""
    when = event.occurred_at.astimezone().strftime("%H:%M:%S.%f")[:-3]
    parts = [
        when,
        f"{event.event.value:<12}",
        f"{event.instance_id or '(bulk)':<24}",
        f"{event.status or '-':<10}",
    ]
    extras: list[str] = []
    if event.workflow:
        extras.append(f"workflow={event.workflow}")
    if event.event_name:
        extras.append(f"event_name={event.event_name}")
    if event.count is not None:
        extras.append(f"count={event.count}")
    if event.failure is not None:
        failure = event.failure
        extras.append(f"failure={_short(f'{failure.type}: {failure.message}')}")
    if event.code is not None:
        extras.append(f"code={event.code.value}")
    if event.reason:
        extras.append(f"reason={_short(event.reason)}")
    if event.output is not None:
        extras.append(f"output={_short(event.output, 40)}")
    if event.step is not None:
        extras.append(f"step={event.step.kind}:{event.step.name}")
    if event.observed:
        extras.append("observed")
    elif event.correlation_id:
        extras.append(f"message={event.correlation_id[:8]}")
    return "  ".join(parts + extras).rstrip()


class Progress:
    """One line on a terminal, redrawn in place; nothing at all when not a terminal."""

    def __init__(self, stream: TextIO, enabled: bool) -> None:
        self._stream = stream
        self.enabled = enabled
        self._shown = False
        self._last = 0.0

    def show(self, text: str, *, every: float = 0.0) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if every and now - self._last < every:
            return
        self._last = now
        width = max(20, shutil.get_terminal_size((100, 20)).columns - 1)
        self._stream.write("\r\x1b[2K" + text[:width])
        self._stream.flush()
        self._shown = True

    def clear(self) -> None:
        if self._shown:
            self._stream.write("\r\x1b[2K")
            self._stream.flush()
            self._shown = False


def ago(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.0f}s"
    minutes, rest = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{rest:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"
