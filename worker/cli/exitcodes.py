"""wfctl's exit codes: distinct and stable, so a pipeline can branch on them."""

from __future__ import annotations

import textwrap
from enum import IntEnum


class Exit(IntEnum):
    OK = 0
    ERROR = 1
    USAGE = 2
    FAILED = 3
    TERMINATED = 4
    REJECTED = 5
    TIMEOUT = 6
    UNAVAILABLE = 7
    FORBIDDEN = 8
    INTERRUPTED = 130


MEANING: dict[Exit, str] = {
    Exit.OK: "done: the workflow completed or the action took effect (without --wait: "
    "the message was published)",
    Exit.ERROR: "an unexpected error in wfctl itself (a bug: please report it)",
    Exit.USAGE: "bad command line or input (unknown option, invalid JSON, a message the "
    "worker's schema refuses); nothing was published",
    Exit.FAILED: "the workflow failed (its failure on stderr)",
    Exit.TERMINATED: "the workflow was terminated while wfctl waited for it to finish",
    Exit.REJECTED: "the worker rejected the message, whatever the rejected event's code "
    "(code and reason on stderr, the event on stdout): unknown or not allowed workflow, unknown "
    "instance, an action its state forbids, ...",
    Exit.TIMEOUT: "no outcome within --timeout; the message was published and the work may "
    "still go on",
    Exit.UNAVAILABLE: "no usable sidecar or broker: not reachable or not healthy, no such "
    "pub/sub component, the broker failed the publish or the subscription, or the sidecar "
    "went away while waiting",
    Exit.FORBIDDEN: "the broker's scoping refused this app-id: publishing to the topic, or "
    "subscribing to the status topic, is not granted",
    Exit.INTERRUPTED: "stopped by Ctrl+C or SIGTERM while waiting (the message may be out)",
}


def table(width: int = 96) -> str:
    """The codes as help text: code, name, meaning (wrapped under itself)."""
    lines = []
    for code in Exit:
        head = f"{code.value:>3}  {code.name.lower():<11}  "
        lines.extend(
            textwrap.wrap(
                MEANING[code],
                width=width,
                initial_indent=head,
                subsequent_indent=" " * len(head),
            )
        )
    return "\n".join(lines)


class CliError(Exception):
    """Ends wfctl with ``code`` and one line on stderr: what went wrong and what to do."""

    def __init__(self, code: Exit, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
