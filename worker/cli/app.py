"""``wfctl``: the commands (Click). See ``wfctl --help`` and docs/operate/wfctl.md."""

from __future__ import annotations

import functools
import getpass
import os
import signal
import socket
import sys
import time
import traceback
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any, NoReturn, TextIO, TypeVar, get_args

import click
from pydantic import JsonValue

from worker import __version__
from worker.actions import ACTIONS, BY_NAME, Action
from worker.cli import requests as rq
from worker.cli.exitcodes import CliError, Exit, table
from worker.cli.ordering import InOrder
from worker.cli.outcome import parse_status
from worker.cli.render import Progress, ago, as_json, text_line
from worker.cli.sidecar import (
    Address,
    Connection,
    Listener,
    Metadata,
    Seen,
    stdout_kept_clean,
    subscribe_error,
)
from worker.events import EventType
from worker.topics import STATUS, Topic

F = TypeVar("F", bound=Callable[..., Any])

DEFAULT_TIMEOUT = "300"
DEFAULT_CONNECT_TIMEOUT = "10"
# Events that occurred this long before `watch` started are still shown (clock skew between
# this machine and the worker's).
_WATCH_SKEW = timedelta(seconds=2)

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}

EXIT_CODES_HELP = "\b\nExit codes:\n" + table()


class Interrupted(Exception):
    """SIGTERM, handled like Ctrl+C."""


@dataclass
class Options:
    """Global options: where the sidecar is, which pub/sub and topics, who is asking."""

    address: Address
    pubsub: str
    topic_prefix: str
    source: str
    connect_timeout: float
    out: TextIO
    err: TextIO

    def topic(self, topic: Topic) -> str:
        return self.topic_prefix + topic.default

    @property
    def status_topic(self) -> str:
        return self.topic(STATUS)


def default_source() -> str:
    """CloudEvent source of wfctl's messages: who and where (the worker's audit log shows it)."""
    try:
        user = getpass.getuser()
    except Exception:
        user = "unknown"
    return f"wfctl/{user}@{socket.gethostname()}"


@click.group(context_settings=CONTEXT, epilog=EXIT_CODES_HELP)
@click.option(
    "--dapr-host",
    envvar="DAPR_RUNTIME_HOST",
    default="127.0.0.1",
    show_default=True,
    help="Sidecar host [env DAPR_RUNTIME_HOST].",
)
@click.option(
    "--dapr-http-port",
    envvar="DAPR_HTTP_PORT",
    type=int,
    default=3500,
    show_default=True,
    help="Sidecar HTTP port: health and metadata [env DAPR_HTTP_PORT, set by dapr run].",
)
@click.option(
    "--dapr-grpc-port",
    envvar="DAPR_GRPC_PORT",
    type=int,
    default=50001,
    show_default=True,
    help="Sidecar gRPC port: publish and subscribe [env DAPR_GRPC_PORT, set by dapr run].",
)
@click.option(
    "--pubsub",
    envvar="WFCTL_PUBSUB",
    default="pubsub",
    show_default=True,
    help="Pub/sub component the worker uses [env WFCTL_PUBSUB].",
)
@click.option(
    "--topic-prefix",
    envvar="WFCTL_TOPIC_PREFIX",
    default="",
    help="Prefix of the worker's topics, for a worker run with prefixed WORKER_*_TOPIC "
    "settings (e.g. 'team-a.' for team-a.workflow.start) [env WFCTL_TOPIC_PREFIX].",
)
@click.option(
    "--source",
    envvar="WFCTL_SOURCE",
    default=None,
    help="CloudEvent source of the messages, shown in the worker's audit log "
    "[env WFCTL_SOURCE; default wfctl/<user>@<host>].",
)
@click.option(
    "--connect-timeout",
    envvar="WFCTL_CONNECT_TIMEOUT",
    default=DEFAULT_CONNECT_TIMEOUT,
    show_default=True,
    help="Seconds to wait for the sidecar to be healthy, to subscribe and to publish "
    "[env WFCTL_CONNECT_TIMEOUT].",
)
@click.version_option(__version__, "--version", prog_name="wfctl")
@click.pass_context
def cli(
    ctx: click.Context,
    dapr_host: str,
    dapr_http_port: int,
    dapr_grpc_port: int,
    pubsub: str,
    topic_prefix: str,
    source: str | None,
    connect_timeout: str,
) -> None:
    """Control Dapr workflows through dapr-workflow-worker, from a pipeline or a terminal.

    Each command publishes one message to the worker through a local Dapr sidecar. With
    --wait it also listens on the status topic (a streaming subscription: no app port) and
    waits for the outcome: it prints the final status event as JSON and exits with a code a
    pipeline can branch on (below). `watch` streams status events as they come.

    The sidecar is found through Dapr's usual variables (DAPR_HTTP_PORT, DAPR_GRPC_PORT,
    DAPR_RUNTIME_HOST, or DAPR_HTTP_ENDPOINT/DAPR_GRPC_ENDPOINT, DAPR_API_TOKEN), which
    `dapr run` sets, or the flags below. In the shared profile give wfctl a sidecar of its
    own with app-id workflow-client and components/client; in the embedded default, use
    the worker's own sidecar.

    \b
    Examples:
      wfctl start approval_workflow --id order-7 --input '{"order_id": "7", "amount": 5000}'
      wfctl start task_processing_workflow --input '{"tasks": ["a", "b"]}' --wait
      wfctl approve order-7 --by ana --wait --until finished
      wfctl watch --instance order-7
      dapr run --app-id workflow-client --resources-path components/client \\
        -- wfctl start task_processing_workflow --input '{"tasks": ["a"]}' --wait
    """
    env = os.environ
    source_of = ctx.get_parameter_source
    # Like the SDK: DAPR_*_ENDPOINT wins over host and port, unless a flag names the port.
    explicit_http = source_of("dapr_http_port") is click.core.ParameterSource.COMMANDLINE
    explicit_grpc = source_of("dapr_grpc_port") is click.core.ParameterSource.COMMANDLINE
    http_endpoint = env.get("DAPR_HTTP_ENDPOINT") or None
    grpc_endpoint = env.get("DAPR_GRPC_ENDPOINT") or None
    state: Options = ctx.ensure_object(_Streams).options(
        address=Address(
            host=dapr_host,
            http_port=dapr_http_port,
            grpc_port=dapr_grpc_port,
            http_endpoint=None if explicit_http else http_endpoint,
            grpc_endpoint=None if explicit_grpc else grpc_endpoint,
            api_token=env.get("DAPR_API_TOKEN") or None,
        ),
        pubsub=pubsub,
        topic_prefix=topic_prefix,
        source=source or default_source(),
        connect_timeout=_seconds(connect_timeout, "--connect-timeout"),
    )
    ctx.obj = state


@dataclass
class _Streams:
    """Where output goes; replaced by the global options once parsed."""

    out: TextIO | None = None
    err: TextIO | None = None

    def options(self, **fields: Any) -> Options:
        return Options(out=self.out or sys.stdout, err=self.err or sys.stderr, **fields)


def _seconds(text: str, option: str) -> float:
    value = rq.seconds(text, option)
    if value <= 0:
        raise CliError(Exit.USAGE, f"{option} must be more than 0 seconds")
    return value


# -- the sidecar options, also accepted after the command ------------------------------

_OVERRIDES: list[tuple[str, str, dict[str, Any]]] = [
    ("--dapr-host", "dapr_host", {}),
    ("--dapr-http-port", "dapr_http_port", {"type": int}),
    ("--dapr-grpc-port", "dapr_grpc_port", {"type": int}),
    ("--pubsub", "pubsub", {}),
    ("--topic-prefix", "topic_prefix", {}),
    ("--source", "source", {}),
    ("--connect-timeout", "connect_timeout", {}),
]


def sidecar_options(fn: Callable[..., int]) -> Callable[..., int]:
    """The global options again on the command (`wfctl start --source ci ...` works as
    `wfctl --source ci start ...`); the command receives the resolved `Options` first."""

    @functools.wraps(fn)
    def command(**kwargs: Any) -> int:
        options: Options = click.get_current_context().find_object(Options)  # type: ignore[assignment]
        given = {key: kwargs.pop(key) for _, key, _ in _OVERRIDES}
        address = options.address
        if given["dapr_host"] is not None:
            address = replace(address, host=given["dapr_host"])
        if given["dapr_http_port"] is not None:
            address = replace(address, http_port=given["dapr_http_port"], http_endpoint=None)
        if given["dapr_grpc_port"] is not None:
            address = replace(address, grpc_port=given["dapr_grpc_port"], grpc_endpoint=None)
        options = replace(
            options,
            address=address,
            pubsub=given["pubsub"] or options.pubsub,
            topic_prefix=(
                given["topic_prefix"] if given["topic_prefix"] is not None else options.topic_prefix
            ),
            source=given["source"] or options.source,
            connect_timeout=(
                _seconds(given["connect_timeout"], "--connect-timeout")
                if given["connect_timeout"] is not None
                else options.connect_timeout
            ),
        )
        return fn(options, **kwargs)

    for flag, key, extra in reversed(_OVERRIDES):
        command = click.option(
            flag, key, default=None, help="As before the command (see wfctl --help).", **extra
        )(command)
    return command


# -- the wait options every publishing command has -------------------------------------


def wait_options(
    *, wait_default: bool = False, untils: Sequence[str] = (), until_default: str = "done"
) -> Callable[[F], F]:
    def decorate(fn: F) -> F:
        fn = click.option(
            "--message-id",
            default=None,
            help="CloudEvent id of the message (default: a new UUID). Reuse it, with the same "
            "--source, to retry a pipeline step: the worker acts once per id and answers "
            "again.",
        )(fn)
        fn = click.option(
            "--timeout",
            default=DEFAULT_TIMEOUT,
            show_default=True,
            help='How long --wait waits: seconds, or "10m", "1h30m". Exit code 6 after it.',
        )(fn)
        if untils:
            fn = click.option(
                "--until",
                type=click.Choice(list(untils)),
                default=until_default,
                show_default=True,
                help="What --wait waits for: " + "; ".join(_UNTIL_HELP[u] for u in untils) + ".",
            )(fn)
        fn = click.option(
            "--wait/--no-wait",
            default=wait_default,
            show_default=True,
            help="Wait for the outcome on the status topic; print the final status event "
            "as JSON and exit with its code.",
        )(fn)
        return fn

    return decorate


_UNTIL_HELP = {
    "accepted": "accepted = the worker started or scheduled it",
    "started": "started = the instance runs (a delayed start: when it begins)",
    "finished": "finished = the instance ended (completed 0, failed 3, terminated 4)",
    "done": "done = the action took effect",
}


def _examples(*lines: str) -> str:
    return "\b\nExamples:\n" + "\n".join(f"  {line}" for line in lines)


# -- commands ---------------------------------------------------------------------------


@cli.command(
    short_help="Start a workflow; --wait for its end.",
    epilog=_examples(
        'wfctl start task_processing_workflow --input \'{"tasks": ["a", "b"]}\' --wait',
        "wfctl start approval_workflow --id order-7 --input @order.json --wait --until started",
        "wfctl start counter_workflow --start-at +10m --wait --until accepted",
        "wfctl start task_processing_workflow --id batch-1 --replace --input @tasks.json --wait",
    ),
)
@click.argument("workflow")
@click.option(
    "--input",
    "-i",
    "input_",
    default=None,
    help="Workflow input: JSON inline, @file.json, or - for stdin (a string is JSON in quotes).",
)
@click.option(
    "--id",
    "instance_id",
    default=None,
    help="Instance id (default: <workflow>-<random>; with --message-id, derived from it).",
)
@click.option(
    "--start-at",
    default=None,
    help='Start later: RFC 3339 time with offset ("2026-12-01T09:00:00Z") or "+10m".',
)
@click.option(
    "--replace",
    is_flag=True,
    help="Start again an instance id that already finished (wipes its history).",
)
@wait_options(untils=("accepted", "started", "finished"), until_default="finished")
@sidecar_options
def start(
    options: Options,
    workflow: str,
    input_: str | None,
    instance_id: str | None,
    start_at: str | None,
    replace: bool,
    wait: bool,
    until: rq.Until,
    timeout: str,
    message_id: str | None,
) -> int:
    """Start WORKFLOW (topic workflow.start).

    Prints the message id and the instance id; with --wait, waits until the instance
    finishes (or --until accepted/started) and exits 0 when it completed, 3 when it
    failed, 4 when it was terminated, 5 when the worker rejected the start.
    """
    value = rq.json_value(input_, "--input") if input_ is not None else None
    request = rq.start(
        workflow,
        input_=value,
        has_input=input_ is not None,
        instance_id=instance_id,
        start_at=start_at,
        replace=replace,
        until=until,
        message_id=message_id,
    )
    return send(options, request, wait=wait, timeout=timeout, message_id=message_id)


def _decision(
    approved: bool, by: str | None, note_key: str, note: str | None, data: str | None
) -> dict[str, Any]:
    decision: dict[str, Any] = {"approved": approved}
    if by:
        decision["approver"] = by
    if note:
        decision[note_key] = note
    if data is not None:
        extra = rq.json_value(data, "--data")
        if not isinstance(extra, dict):
            raise CliError(Exit.USAGE, "--data: give a JSON object; its fields join the decision")
        decision.update(extra)
    return decision


_APPROVAL_EVENT = "approval_decision"


def decision_options(fn: F) -> F:
    """--data and --event, as approve and reject take them."""
    fn = click.option(
        "--event",
        "event_name",
        default=_APPROVAL_EVENT,
        show_default=True,
        help="Name of the event the workflow waits for.",
    )(fn)
    return click.option(
        "--data", default=None, help="More fields for the decision: a JSON object."
    )(fn)


@cli.command(
    short_help="Approve a waiting instance (its decision event).",
    epilog=_examples(
        "wfctl approve order-7 --by ana",
        "wfctl approve order-7 --by ana --wait --until finished",
        'wfctl approve order-7 --data \'{"ticket": "CHG-1234"}\' --wait',
    ),
)
@click.argument("instance_id")
@click.option("--by", default=None, help="Who approves (the decision's approver).")
@click.option("--comment", default=None, help="A comment, kept in the decision.")
@decision_options
@wait_options(untils=("done", "finished"))
@sidecar_options
def approve(
    options: Options,
    instance_id: str,
    by: str | None,
    comment: str | None,
    data: str | None,
    event_name: str,
    wait: bool,
    until: rq.Until,
    timeout: str,
    message_id: str | None,
) -> int:
    """Approve INSTANCE_ID: raise its decision event with {"approved": true, ...}
    (topic workflow.approval).

    With --wait: exit 0 once the event was raised (--until finished: once the instance
    ended, by its outcome), 5 when the worker rejected it (e.g. unknown instance, after
    the worker's grace period).
    """
    decision = _decision(True, by, "comment", comment, data)
    request = rq.raise_event(instance_id, event_name, decision, has_data=True, until=until)
    return send(options, request, wait=wait, timeout=timeout, message_id=message_id)


@cli.command(
    short_help="Reject a waiting instance (its decision event).",
    epilog=_examples(
        "wfctl reject order-7 --by ana --reason 'over budget'",
        "wfctl reject order-7 --wait --until finished",
    ),
)
@click.argument("instance_id")
@click.option("--by", default=None, help="Who rejects (the decision's approver).")
@click.option("--reason", default=None, help="Why, kept in the decision.")
@decision_options
@wait_options(untils=("done", "finished"))
@sidecar_options
def reject(
    options: Options,
    instance_id: str,
    by: str | None,
    reason: str | None,
    data: str | None,
    event_name: str,
    wait: bool,
    until: rq.Until,
    timeout: str,
    message_id: str | None,
) -> int:
    """Reject INSTANCE_ID: raise its decision event with {"approved": false, ...}
    (topic workflow.approval). Exit codes as for approve."""
    decision = _decision(False, by, "reason", reason, data)
    request = rq.raise_event(instance_id, event_name, decision, has_data=True, until=until)
    return send(options, request, wait=wait, timeout=timeout, message_id=message_id)


@cli.command(
    "raise",
    short_help="Raise an external event into an instance.",
    epilog=_examples(
        "wfctl raise order-7 approval_decision --data true",
        'wfctl raise build-9 go --data \'{"artifact": "app-1.2.tgz"}\' --wait',
        "wfctl raise build-9 go --data @payload.json --wait --until finished",
    ),
)
@click.argument("instance_id")
@click.argument("event_name")
@click.option(
    "--data",
    default=None,
    help="Event data: JSON inline, @file.json or - (false, 0 and {} arrive as given).",
)
@wait_options(untils=("done", "finished"))
@sidecar_options
def raise_(
    options: Options,
    instance_id: str,
    event_name: str,
    data: str | None,
    wait: bool,
    until: rq.Until,
    timeout: str,
    message_id: str | None,
) -> int:
    """Raise the external event EVENT_NAME into INSTANCE_ID (topic workflow.approval)."""
    value = rq.json_value(data, "--data") if data is not None else None
    request = rq.raise_event(instance_id, event_name, value, has_data=data is not None, until=until)
    return send(options, request, wait=wait, timeout=timeout, message_id=message_id)


def action_command(declared: Action[Any]) -> click.Command:
    """The command of a control action, from its row in `worker.actions`: INSTANCE_ID, an
    option per field of its message (a flag pair for a bool, JSON for a JSON value), and the
    wait options (a read waits by default; --until finished where the action allows it)."""
    fields = declared.model.model_fields
    as_json = {name for name in declared.fields if fields[name].annotation is JsonValue}
    reads = declared.read is not None

    def command(
        options: Options,
        instance_id: str,
        wait: bool,
        timeout: str,
        message_id: str | None,
        until: rq.Until = "done",
        **given: Any,
    ) -> int:
        values = {
            name: rq.json_value(value, f"--{name}")
            if name in as_json and value is not None
            else value
            for name, value in given.items()
        }
        request = rq.control(declared.name, instance_id, until=until, **values)
        return send(options, request, wait=wait, timeout=timeout, message_id=message_id)

    what = declared.help.removesuffix(".")
    event = declared.event.value
    command.__doc__ = (
        f"{what}: prints the worker's `{event}` event as JSON (topic workflow.control). "
        "Waits by default."
        if reads
        else f"{what} (topic workflow.control).\n\nWith --wait: exit 0 once it is {event} "
        "(the action done), 5 if rejected."
    )
    built: Callable[..., int] = sidecar_options(command)
    untils = ("done", "finished") if declared.follows else ()
    built = wait_options(wait_default=reads, untils=untils)(built)
    for name in reversed(declared.fields):
        info = fields[name]
        flag = name.replace("_", "-")
        if info.annotation is bool:
            built = click.option(
                f"--{flag}/--no-{flag}",
                default=info.default,
                show_default=True,
                help=info.description,
            )(built)
        else:
            described = _field_help(info.annotation, info.description)
            if name in as_json:
                described = described.removesuffix(".") + ": JSON."
            built = click.option(f"--{flag}", name, default=None, help=described)(built)
    built = click.argument("instance_id")(built)
    return cli.command(
        declared.name, short_help=declared.help, epilog=_examples(*declared.examples)
    )(built)


def _field_help(annotation: Any, description: str | None) -> str:
    """A field's description, also where it sits inside ``Annotated[...] | None``."""
    if description:
        return description
    for arg in get_args(annotation):
        for meta in getattr(arg, "__metadata__", ()):
            if getattr(meta, "description", None):
                return str(meta.description)
    return ""


for _declared in ACTIONS:
    if not _declared.has_bulk_message:  # purge, with its bulk form, is written out below
        action_command(_declared)


@cli.command(
    short_help="Purge a finished instance, or finished ones in bulk.",
    epilog=_examples(*BY_NAME["purge"].examples),
)
@click.argument("instance_id", required=False)
@click.option(
    "--older-than",
    default=None,
    help='Bulk: only instances created longer ago than this ("720h", "1h30m", "P30D").',
)
@click.option(
    "--status",
    "statuses",
    multiple=True,
    type=click.Choice(["COMPLETED", "FAILED", "TERMINATED"], case_sensitive=False),
    help="Bulk: only instances in this status (repeatable).",
)
@click.option("--all", "all_", is_flag=True, help="Bulk: every finished instance.")
@click.option(
    "--recursive/--no-recursive",
    default=True,
    show_default=True,
    help="Also purge child workflows.",
)
@wait_options()
@sidecar_options
def purge(
    options: Options,
    instance_id: str | None,
    older_than: str | None,
    statuses: tuple[str, ...],
    all_: bool,
    recursive: bool,
    wait: bool,
    timeout: str,
    message_id: str | None,
) -> int:
    """Purge a finished instance, or in bulk every finished instance that matches the
    filters (topic workflow.control). Never purges a running instance.

    A bulk purge needs a filter or --all. With --wait it prints the summary event (its
    "count" is how many were purged).
    """
    bulk_filters = older_than is not None or bool(statuses)
    if instance_id is not None and (bulk_filters or all_):
        raise CliError(Exit.USAGE, "give an INSTANCE_ID or the bulk filters, not both")
    if instance_id is None and not (bulk_filters or all_):
        raise CliError(
            Exit.USAGE,
            "purge what? give an INSTANCE_ID, or for a bulk purge --older-than/--status, "
            "or --all for every finished instance",
        )
    request = rq.control(
        "purge",
        instance_id,
        older_than=older_than,
        statuses=[s.upper() for s in statuses] or None,
        recursive=recursive,
    )
    return send(options, request, wait=wait, timeout=timeout, message_id=message_id)


@cli.command(
    short_help="Stream status events as they come (like kubectl get -w).",
    epilog=_examples(
        "wfctl watch",
        "wfctl watch --instance order-7",
        "wfctl watch --workflow approval_workflow --event failed --event rejected",
        "wfctl watch --output json | jq -c 'select(.observed)'",
        "wfctl watch --instance order-7 --duration 10m --max-events 20",
    ),
)
@click.option(
    "--instance", "-i", "instances", multiple=True, help="Only this instance (repeatable)."
)
@click.option(
    "--workflow", "-w", "workflows", multiple=True, help="Only this workflow (repeatable)."
)
@click.option(
    "--event",
    "-e",
    "events",
    multiple=True,
    type=click.Choice([e.value for e in EventType]),
    help="Only this event type (repeatable).",
)
@click.option(
    "--output",
    "-o",
    type=click.Choice(["auto", "text", "json"]),
    default="auto",
    show_default=True,
    help="text: one line per event; json: one JSON object per line (the event's data, as "
    "published); auto: text on a terminal, json otherwise.",
)
@click.option("--duration", default=None, help='Stop after this long ("90", "10m"); exit 0.')
@click.option(
    "--max-events", type=click.IntRange(min=1), default=None, help="Stop after N events; exit 0."
)
@sidecar_options
def watch(
    options: Options,
    instances: tuple[str, ...],
    workflows: tuple[str, ...],
    events: tuple[str, ...],
    output: str,
    duration: str | None,
    max_events: int | None,
) -> int:
    """Stream status events as they come, like `kubectl get -w`, until Ctrl+C.

    Shows every status event of the worker's app-id from now on: what wfctl and other
    clients caused and, marked observed, what others did (the dapr CLI, daprd's
    retention). Each event once (by its CloudEvent id). Filters combine: an event shows
    when it matches one value of every filter given.
    """
    limit = _seconds(duration, "--duration") if duration is not None else None
    pretty = output == "text" or (output == "auto" and options.out.isatty())
    with session(options) as checked:
        progress = checked.progress
        listener = _listen(options, checked)
        began = datetime.now(UTC)
        deadline = time.monotonic() + limit if limit is not None else None
        seen = Seen()
        in_order: InOrder[str] = InOrder(began)  # each instance's events as they happened
        shown = 0

        def show(lines: list[str]) -> bool:
            """Print ``lines``; whether --max-events is reached."""
            nonlocal shown
            for line in lines:
                progress.clear()
                _print(options, line)
                shown += 1
                if max_events is not None and shown >= max_events:
                    return True
            return False

        progress.show(f"wfctl: watching {options.status_topic} (Ctrl+C stops)")
        try:
            while deadline is None or time.monotonic() < deadline:
                wait_for = 0.5 if deadline is None else min(0.5, deadline - time.monotonic())
                received = listener.get(wait_for)
                if show(in_order.due()):
                    break
                if received is None or not seen.first_time(received.id):
                    continue
                event = parse_status(received.data)
                if event is None:
                    if not pretty:  # not ours to judge: pass it on as it came
                        _print(options, as_json(received.data))
                    continue
                if event.occurred_at < began - _WATCH_SKEW:
                    continue  # from before the watch (a new consumer group reads the stream)
                if instances and event.instance_id not in instances:
                    continue
                if workflows and event.workflow not in workflows:
                    continue
                if events and event.event.value not in events:
                    continue
                line = text_line(event) if pretty else as_json(received.data)
                if show(in_order.add(event, line)):
                    break
            else:
                show(in_order.flush())  # --duration is up: what was held back, in order
        except (KeyboardInterrupt, Interrupted):
            show(in_order.flush())
        finally:
            progress.clear()
            listener.close()
    return Exit.OK


# -- publishing and waiting ------------------------------------------------------------


def _print(options: Options, text: str) -> None:
    options.out.write(text + "\n")
    options.out.flush()


@dataclass
class Session:
    """A checked sidecar for one command."""

    connection: Connection
    meta: Metadata
    kind: str  # the pub/sub component's type
    progress: Progress


@contextmanager
def session(options: Options) -> Iterator[Session]:
    """Wait for the sidecar, check its pub/sub; stdout kept for wfctl's own output."""
    progress = Progress(options.err, options.err.isatty())
    connection = Connection(options.address, options.connect_timeout)
    try:
        with stdout_kept_clean():
            connection.wait_healthy(lambda text: progress.show(f"wfctl: {text}", every=0.2))
            progress.clear()
            meta = connection.metadata()
            kind = connection.check_pubsub(meta, options.pubsub)
            yield Session(connection, meta, kind, progress)
    finally:
        progress.clear()
        connection.close()


def _listen(options: Options, checked: Session) -> Listener:
    """Subscribe to the status topic (before anything is published)."""
    meta = checked.connection.check_alone(
        checked.meta, options.pubsub, checked.kind, options.status_topic
    )
    try:
        return checked.connection.listen(options.pubsub, options.status_topic, checked.kind)
    except CliError:
        raise
    except Exception as error:
        raise subscribe_error(error, options.status_topic, meta.app_id) from error


def send(
    options: Options,
    request: rq.Request,
    *,
    wait: bool,
    timeout: str,
    message_id: str | None,
) -> int:
    """Publish ``request``; with ``wait``, subscribe first and wait for its outcome."""
    limit = _seconds(timeout, "--timeout")
    topic = options.topic(request.topic)
    message_id = message_id or str(uuid.uuid4())
    with session(options) as checked:
        checked.connection.check_reaches_worker(checked.meta, options.pubsub, checked.kind, topic)
        listener = _listen(options, checked) if wait else None
        try:
            checked.connection.publish(
                options.pubsub, topic, request.body, message_id=message_id, source=options.source
            )
            if listener is None:
                published = {"message_id": message_id, "topic": topic, "source": options.source}
                if request.instance_id is not None:
                    published["instance_id"] = request.instance_id
                _print(options, as_json(published, pretty=options.out.isatty()))
                return Exit.OK
            return _await(options, request, message_id, listener, limit, checked.progress)
        finally:
            if listener is not None:
                listener.close()


def _await(
    options: Options,
    request: rq.Request,
    message_id: str,
    listener: Listener,
    limit: float,
    progress: Progress,
) -> int:
    wait = request.wait(message_id)
    began = time.monotonic()
    deadline = began + limit
    seen = Seen()
    what = request.describe()
    try:
        while (remaining := deadline - time.monotonic()) > 0:
            received = listener.get(min(0.5, remaining))
            if received is not None and seen.first_time(received.id):
                verdict = wait.offer(received.data)
                if verdict is not None:
                    progress.clear()
                    if verdict.event is not None:
                        _print(options, as_json(verdict.event, pretty=options.out.isatty()))
                    if verdict.summary:
                        options.err.write(f"wfctl: {verdict.summary}\n")
                    return verdict.code
            progress.show(_progress_text(what, wait, time.monotonic() - began, limit), every=0.5)
    except (KeyboardInterrupt, Interrupted):
        progress.clear()
        options.err.write(
            f"wfctl: interrupted; message {message_id} was published ({what}); "
            f"follow it with `wfctl watch`\n"
        )
        return Exit.INTERRUPTED
    last = wait.last
    state = f"last seen: {last.event.value}, {last.status or '?'}" if last else "no answer seen"
    raise CliError(
        Exit.TIMEOUT,
        f"timed out after {limit:g}s waiting for the {what} (message {message_id}; {state}). "
        "It was published and may still go on: wait longer with --timeout, or follow it "
        "with `wfctl watch`",
    )


def _progress_text(what: str, wait: Any, elapsed: float, limit: float) -> str:
    last = wait.last
    if last is None:
        state = "published, no answer yet"
    else:
        since = (datetime.now(UTC) - last.occurred_at).total_seconds()
        state = f"{last.status or '?'} (last event: {last.event.value}, {ago(max(0, since))} ago)"
    return f"wfctl: {what}: {state} · waited {ago(elapsed)} of {ago(limit)}"


# -- entry point --------------------------------------------------------------------------


def _on_sigterm(*_: object) -> None:
    raise Interrupted()


def run(
    argv: Sequence[str] | None = None, *, out: TextIO | None = None, err: TextIO | None = None
) -> int:
    """Run wfctl; the exit code (never raises, except SystemExit from Click's own help)."""
    out = out or sys.stdout
    err = err or sys.stderr
    previous = signal.getsignal(signal.SIGTERM)
    try:
        signal.signal(signal.SIGTERM, _on_sigterm)
    except ValueError:  # not the main thread (tests)
        previous = None
    try:
        with redirect_stdout(out), redirect_stderr(err):  # Click's own help and errors too
            result = cli.main(
                args=list(argv) if argv is not None else None,
                prog_name="wfctl",
                standalone_mode=False,
                obj=_Streams(out, err),
            )
        return int(result) if isinstance(result, int) else Exit.OK
    except CliError as error:
        err.write(f"wfctl: {error.message}\n")
        return error.code
    except click.exceptions.Exit as done:  # --help, --version
        return int(done.exit_code)
    except click.ClickException as error:  # usage errors
        error.show(file=err)
        return Exit.USAGE
    except (click.exceptions.Abort, KeyboardInterrupt, Interrupted):
        err.write("wfctl: interrupted\n")
        return Exit.INTERRUPTED
    except BrokenPipeError:  # `wfctl watch | head`: the reader went away
        _quiet_stdout()
        return Exit.OK
    except Exception as error:
        if os.environ.get("WFCTL_DEBUG"):
            traceback.print_exc(file=err)
        err.write(
            f"wfctl: unexpected error: {type(error).__name__}: {error} "
            "(run with WFCTL_DEBUG=1 for the traceback, and please report it)\n"
        )
        return Exit.ERROR
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _quiet_stdout() -> None:
    """After a broken pipe, make the interpreter's final flush of stdout silent."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def main() -> NoReturn:
    sys.exit(run())
