"""Everything wfctl asks of the Dapr sidecar: health, metadata, publish, and the streaming
subscription that carries status events back. Every step has a deadline, and every fault
becomes a `CliError` with an exit code and what to do.
"""

from __future__ import annotations

import contextlib
import json
import queue
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from worker.cli.exitcodes import CliError, Exit

HOW_TO_RUN = (
    "Start one, e.g. `dapr run --app-id workflow-client --resources-path components/client "
    "--dapr-http-port 3500 --dapr-grpc-port 50001` (shared profile), or point wfctl at a "
    "running sidecar with DAPR_HTTP_PORT/DAPR_GRPC_PORT (--dapr-http-port/--dapr-grpc-port)"
)
GRANTS = "see docs/how-to/access-control.md"
# A previous wfctl's subscription on the same sidecar is gone within this once it exited.
_SUBSCRIBER_GONE_SECONDS = 3.0


@dataclass(frozen=True)
class Address:
    """Where the sidecar is: Dapr's own variables, or wfctl's flags."""

    host: str = "127.0.0.1"
    http_port: int = 3500
    grpc_port: int = 50001
    http_endpoint: str | None = None  # DAPR_HTTP_ENDPOINT, wins over host:port
    grpc_endpoint: str | None = None  # DAPR_GRPC_ENDPOINT, wins over host:port
    api_token: str | None = None  # DAPR_API_TOKEN

    @property
    def http_url(self) -> str:
        return (self.http_endpoint or f"http://{self.host}:{self.http_port}").rstrip("/")

    @property
    def grpc_address(self) -> str:
        return self.grpc_endpoint or f"{self.host}:{self.grpc_port}"


@dataclass(frozen=True)
class Metadata:
    """What the sidecar says about itself (GET /v1.0/metadata)."""

    app_id: str
    components: dict[str, str]  # name -> type ("pubsub.redis")
    subscriptions: list[dict[str, Any]]

    @classmethod
    def parse(cls, body: dict[str, Any]) -> Metadata:
        return cls(
            app_id=str(body.get("id", "")),
            components={
                str(c.get("name")): str(c.get("type", "")) for c in body.get("components") or []
            },
            subscriptions=list(body.get("subscriptions") or []),
        )

    def subscribers(self, pubsub: str, topic: str) -> list[str]:
        """Kinds of the subscriptions to ``topic`` in this sidecar (STREAMING, ...)."""
        return [
            str(s.get("type") or "?")
            for s in self.subscriptions
            if s.get("pubsubname") == pubsub and s.get("topic") == topic
        ]


class Connection:
    """One sidecar, checked before anything is published."""

    def __init__(self, address: Address, connect_timeout: float) -> None:
        self.address = address
        self.connect_timeout = connect_timeout
        self._client: Any = None

    # -- health and metadata -------------------------------------------------------------

    def _get(self, path: str, timeout: float) -> tuple[int, bytes]:
        headers = {"User-Agent": "wfctl"}
        if self.address.api_token:
            headers["dapr-api-token"] = self.address.api_token
        request = urllib.request.Request(f"{self.address.http_url}{path}", headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return int(response.status), response.read()
        except urllib.error.HTTPError as error:
            return int(error.code), error.read()

    def wait_healthy(self, waiting: Callable[[str], None] | None = None) -> None:
        """Until the sidecar reports healthy (outbound: its components are up), within
        ``connect_timeout``."""
        deadline = time.monotonic() + self.connect_timeout
        problem = "no answer"
        while True:
            try:
                status, _ = self._get("/v1.0/healthz/outbound", timeout=2)
                if 200 <= status < 300:
                    return
                problem = f"it answers HTTP {status} (not healthy yet)"
            except (OSError, ValueError) as error:
                problem = f"no answer ({getattr(error, 'reason', error)})"
            if time.monotonic() >= deadline:
                raise CliError(
                    Exit.UNAVAILABLE,
                    f"no healthy Dapr sidecar at {self.address.http_url} after "
                    f"{self.connect_timeout:g}s: {problem}. {HOW_TO_RUN}",
                )
            if waiting is not None:
                waiting(f"waiting for the sidecar at {self.address.http_url}: {problem}")
            time.sleep(0.2)

    def metadata(self) -> Metadata:
        try:
            status, body = self._get("/v1.0/metadata", timeout=self.connect_timeout)
            if status != 200:
                raise ValueError(f"HTTP {status}")
            return Metadata.parse(json.loads(body))
        except (OSError, ValueError) as error:
            raise CliError(
                Exit.UNAVAILABLE,
                f"the sidecar at {self.address.http_url} did not give its metadata ({error})",
            ) from error

    def check_pubsub(self, meta: Metadata, pubsub: str) -> str:
        """The component's type; a clear error when the sidecar has no such pub/sub."""
        kind = meta.components.get(pubsub)
        if kind is None or not kind.startswith("pubsub."):
            found = ", ".join(f"{n} ({t})" for n, t in sorted(meta.components.items())) or "none"
            raise CliError(
                Exit.UNAVAILABLE,
                f"the sidecar of app-id {meta.app_id!r} has no pub/sub component {pubsub!r} "
                f"(its components: {found}): run it with the project's components "
                "(--resources-path components/client for the shared profile), or name the "
                "component with --pubsub",
            )
        return kind

    def check_reaches_worker(self, meta: Metadata, pubsub: str, kind: str, topic: str) -> None:
        """In-memory pub/sub only reaches subscribers in the same sidecar: the worker's."""
        if kind == "pubsub.in-memory" and not meta.subscribers(pubsub, topic):
            raise CliError(
                Exit.UNAVAILABLE,
                f"pub/sub {pubsub!r} of app-id {meta.app_id!r} is in-memory and nothing in "
                f"that sidecar subscribes to {topic}: the message would reach no worker. In "
                "the embedded default, talk to the worker's own sidecar (scripts/run.sh: "
                "DAPR_HTTP_PORT=3500 DAPR_GRPC_PORT=50001); in the shared profile, run the "
                "sidecar with --resources-path components/client",
            )

    def check_alone(self, meta: Metadata, pubsub: str, kind: str, topic: str) -> Metadata:
        """A broker with consumer groups (Redis Streams, Kafka, ...) gives each message of a
        group to one subscriber only: a second subscriber to the status topic in the same
        sidecar would split the events with wfctl. Wait briefly for one that is going away
        (the previous wfctl on this sidecar), then refuse."""
        if kind == "pubsub.in-memory":
            return meta  # every subscription gets every message
        deadline = time.monotonic() + _SUBSCRIBER_GONE_SECONDS
        while (others := meta.subscribers(pubsub, topic)) and time.monotonic() < deadline:
            time.sleep(0.25)
            meta = self.metadata()
        if others:
            raise CliError(
                Exit.UNAVAILABLE,
                f"the sidecar of app-id {meta.app_id!r} already subscribes to {topic} "
                f"({', '.join(others)}): it would split the status events with wfctl (one "
                "consumer group per sidecar). Give wfctl a sidecar of its own (see "
                "docs/operate/wfctl.md#wfctl-one-sidecar-one-consumer-group)",
            )
        return meta

    # -- gRPC: publish and subscribe ----------------------------------------------------

    def client(self) -> Any:
        """The SDK's client, made once (it checks the sidecar's health when made)."""
        if self._client is None:
            from dapr.clients import DaprClient
            from dapr.conf import settings

            # The SDK's own health check (when the client is made, and before it reconnects
            # a broken stream) goes to the same sidecar, within the same deadline; publish
            # calls get that deadline too.
            seconds = max(1, round(self.connect_timeout))
            setattr(settings, "DAPR_HTTP_ENDPOINT", self.address.http_url)  # noqa: B010
            setattr(settings, "DAPR_HEALTH_TIMEOUT", seconds)  # noqa: B010
            setattr(settings, "DAPR_API_TIMEOUT_SECONDS", seconds)  # noqa: B010
            if self.address.api_token:
                setattr(settings, "DAPR_API_TOKEN", self.address.api_token)  # noqa: B010
            try:
                from dapr.clients.retry import RetryPolicy

                # No SDK retries (DAPR_API_MAX_RETRIES=-1 would retry for ever): one call,
                # within the deadline above.
                self._client = DaprClient(
                    address=self.address.grpc_address, retry_policy=RetryPolicy(max_attempts=0)
                )
            except Exception as error:
                raise CliError(
                    Exit.UNAVAILABLE,
                    f"cannot connect to the sidecar's gRPC API at {self.address.grpc_address} "
                    f"({error}). {HOW_TO_RUN}",
                ) from error
        return self._client

    def publish(
        self, pubsub: str, topic: str, body: dict[str, Any], *, message_id: str, source: str
    ) -> None:
        """One CloudEvent with ``message_id`` and ``source``, data ``body`` as JSON."""
        metadata = {
            "cloudevent.id": message_id,
            "cloudevent.source": source,
            "cloudevent.type": f"io.github.dapr-workflow-worker.v1.request.{topic}",
        }
        try:
            self.client().publish_event(
                pubsub,
                topic,
                json.dumps(body),
                data_content_type="application/json",
                publish_metadata=metadata,
            )
        except CliError:
            raise
        except Exception as error:
            raise publish_error(error, topic, self.app_id_hint()) from error

    def app_id_hint(self) -> str:
        with contextlib.suppress(CliError):
            return self.metadata().app_id
        return "?"

    def listen(self, pubsub: str, topic: str, kind: str) -> Listener:
        """Subscribe now (before anything is published), within ``connect_timeout``."""
        order = (lambda: self.streams(pubsub, topic)) if kind == "pubsub.in-memory" else None
        # The SDK's client's own stub (its channel carries the API token); its Subscription
        # cannot end a stream without cancelling answers still unsent.
        listener = Listener(self.client()._stub, pubsub, topic, order)
        listener.start(self.connect_timeout)
        return listener

    def streams(self, pubsub: str, topic: str) -> list[str]:
        """wfctl's tag of each streaming subscription to ``topic``, oldest first ("" for
        another client's)."""
        return [
            str((s.get("metadata") or {}).get(_TAG, ""))
            for s in self.metadata().subscriptions
            if s.get("pubsubname") == pubsub
            and s.get("topic") == topic
            and s.get("type") == "STREAMING"
        ]

    def close(self) -> None:
        if self._client is not None:
            with contextlib.suppress(Exception):
                self._client.close()


def _grpc_details(error: BaseException) -> tuple[str, str]:
    """(status code name, details) of a gRPC error, also one the SDK wrapped in another."""
    seen: BaseException | None = error
    while seen is not None:
        code = getattr(seen, "code", None)
        details = getattr(seen, "details", None)
        if callable(code) and callable(details):
            with contextlib.suppress(Exception):
                name = getattr(code(), "name", str(code()))
                return str(name), str(details() or "")
        seen = seen.__cause__ or seen.__context__
    return "", str(error)


def publish_error(error: BaseException, topic: str, app_id: str) -> CliError:
    code, details = _grpc_details(error)
    if code == "PERMISSION_DENIED" or "not allowed" in details:
        return CliError(
            Exit.FORBIDDEN,
            f"the broker refused the publish to {topic}: {details}. Grant app-id {app_id!r} "
            f"in the pub/sub component's publishingScopes, or use an app-id that is granted "
            f"(workflow-client in the shared profile; {GRANTS})",
        )
    return CliError(
        Exit.UNAVAILABLE,
        f"publishing to {topic} failed ({code or type(error).__name__}: {details}): check "
        "the sidecar's log and that its broker (e.g. Redis) is up, then try again",
    )


def subscribe_error(error: BaseException, topic: str, app_id: str) -> CliError:
    code, details = _grpc_details(error)
    if code == "PERMISSION_DENIED" or "is not allowed" in details:
        return CliError(
            Exit.FORBIDDEN,
            f"app-id {app_id!r} may not subscribe to {topic}: add it to the pub/sub "
            f"component's subscriptionScopes ('{app_id}={topic}'; {GRANTS})",
        )
    return CliError(
        Exit.UNAVAILABLE,
        f"the sidecar did not open a subscription to {topic} "
        f"({code or type(error).__name__}: {details})",
    )


@dataclass
class Received:
    """One CloudEvent from the status topic."""

    id: str
    data: Any


@dataclass
class _Failure:
    error: BaseException


# Closing a stream: wait until no delivery came for _QUIET_SECONDS (at most _DRAIN_SECONDS),
# then end it and wait up to _END_SECONDS for daprd to end it too (its subscription is gone
# then).
_QUIET_SECONDS = 0.1
_DRAIN_SECONDS = 1.0
_END_SECONDS = 5.0
# In-memory pub/sub: streams close oldest first (see Listener); the oldest wfctl stream renews
# itself once it has been the oldest this long while younger ones exist.
_RENEW_AFTER_SECONDS = 0.5
_OLDEST_FIRST_MAX_SECONDS = 15.0
_TAG = "wfctl.listener"  # in the subscription's metadata: which stream is whose


class _Stream:
    """One SubscribeTopicEventsAlpha1 call, read by a thread of its own. Every delivery is
    answered (success) as soon as it is read, and `end` ends the call from wfctl's side
    (a half-close sent after those answers), never by cancelling it while an answer is
    unsent: daprd 1.18.2 retries a delivery that a closed stream left unanswered with the
    pub/sub's inbound resiliency policy (docs/operate/wfctl.md#which-sidecar-wfctl-talks-to)."""

    def __init__(
        self, stub: Any, pubsub: str, topic: str, sink: Callable[[Received | _Failure], None]
    ) -> None:
        self.tag = uuid.uuid4().hex
        self._stub = stub
        self._pubsub = pubsub
        self._topic = topic
        self._sink = sink
        self._answers: queue.Queue[Any] = queue.Queue()
        self._call: Any = None
        self._ending = threading.Event()
        self._ended = threading.Event()
        self._opened = threading.Event()
        self._open_error: BaseException | None = None
        self.last_delivery = time.monotonic()
        self.unanswered = 0  # deliveries read after the half-close (daprd retries those)

    def _requests(self) -> Iterator[Any]:
        from dapr.proto import api_v1

        yield api_v1.SubscribeTopicEventsRequestAlpha1(
            initial_request=api_v1.SubscribeTopicEventsRequestInitialAlpha1(
                pubsub_name=self._pubsub, topic=self._topic, metadata={_TAG: self.tag}
            )
        )
        while (answer := self._answers.get()) is not None:
            yield answer
        # Returning half-closes the call, after every answer queued before.

    def open(self, timeout: float) -> None:
        threading.Thread(target=self._run, name="wfctl-stream", daemon=True).start()
        if not self._opened.wait(timeout):
            self.end()
            raise CliError(
                Exit.UNAVAILABLE,
                f"the sidecar did not open a subscription to {self._topic} within {timeout:g}s",
            )
        if self._open_error is not None:
            raise self._open_error

    def _run(self) -> None:
        from dapr.common.pubsub.subscription import SubscriptionMessage
        from dapr.proto import api_v1, appcallback_v1

        success = appcallback_v1.TopicEventResponse(
            status=appcallback_v1.TopicEventResponse.SUCCESS
        )
        try:
            self._call = self._stub.SubscribeTopicEventsAlpha1(self._requests())
            next(self._call)  # daprd's initial response: subscribed
        except Exception as error:
            self._open_error = error
            self._opened.set()
            self._ended.set()
            return
        self._opened.set()
        try:
            for response in self._call:
                event = response.event_message
                if not event.id:
                    continue
                self.last_delivery = time.monotonic()
                if self._ending.is_set():
                    self.unanswered += 1
                    continue
                processed = api_v1.SubscribeTopicEventsRequestProcessedAlpha1(
                    id=event.id, status=success
                )
                self._answers.put(
                    api_v1.SubscribeTopicEventsRequestAlpha1(event_processed=processed)
                )
                message = SubscriptionMessage(event)
                data = message.data()
                if data is None and message.raw_data():
                    with contextlib.suppress(ValueError):
                        data = json.loads(message.raw_data())
                self._sink(Received(str(message.id()), data))
        except Exception as error:
            if not self._ending.is_set():
                self._sink(_Failure(error))
        finally:
            self._ended.set()

    def end(self) -> None:
        """Drain (answering) until quiet, half-close, wait for daprd to end the call."""
        deadline = time.monotonic() + _DRAIN_SECONDS
        while not self._ended.is_set() and time.monotonic() < deadline:
            quiet = time.monotonic() - self.last_delivery
            if quiet >= _QUIET_SECONDS:
                break
            time.sleep(_QUIET_SECONDS - quiet)
        self._ending.set()
        self._answers.put(None)
        if not self._ended.wait(_END_SECONDS) and self._call is not None:
            with contextlib.suppress(Exception):
                self._call.cancel()

    @property
    def ended(self) -> bool:
        return self._ended.is_set()


class Listener:
    """wfctl's subscription to the status topic: `get` waits for the next event.

    On in-memory pub/sub (components-contrib 1.18.3) closing a stream unsubscribes the
    OLDEST subscription to the topic in that sidecar, not its own: every subscription's
    handler is the same closure, and the event bus finds the one to remove by its code
    pointer (asaskevich/EventBus#47). Another wfctl closing before an older one would leave
    the older one deaf. So there, a stream closes only once it is the oldest (the
    sidecar's metadata lists them in order), and the oldest wfctl stream replaces itself
    with a new one (opened first; events are told apart by id) when younger ones exist.
    """

    def __init__(
        self,
        stub: Any,
        pubsub: str,
        topic: str,
        order: Callable[[], list[str]] | None = None,
    ) -> None:
        self.pubsub = pubsub
        self.topic = topic
        self._stub = stub
        self._order = order  # in-memory only: the tags of the topic's streams, oldest first
        self._queue: queue.Queue[Received | _Failure | None] = queue.Queue()
        self._lock = threading.Lock()
        self._stream = self._new_stream()
        self._closing = threading.Event()
        self._oldest_since: float | None = None
        self._timeout = 10.0

    def _new_stream(self) -> _Stream:
        return _Stream(self._stub, self.pubsub, self.topic, self._deliver)

    def _deliver(self, item: Received | _Failure) -> None:
        if isinstance(item, _Failure) and self._closing.is_set():
            return
        self._queue.put(item)

    def start(self, timeout: float) -> None:
        self._timeout = timeout
        self._stream.open(timeout)
        if self._order is not None:
            threading.Thread(target=self._keep, name="wfctl-renew", daemon=True).start()

    def _keep(self) -> None:
        """In-memory: renew the stream when it is the oldest and younger ones wait."""
        while not self._closing.wait(0.2):
            with contextlib.suppress(Exception):
                self._renew_if_oldest()

    def _renew_if_oldest(self) -> None:
        assert self._order is not None
        tags = self._order()
        with self._lock:
            current = self._stream
            if self._closing.is_set() or not tags or tags[0] != current.tag or not any(tags[1:]):
                self._oldest_since = None
                return
            now = time.monotonic()
            if self._oldest_since is None:
                self._oldest_since = now
            if now - self._oldest_since < _RENEW_AFTER_SECONDS:
                return
            fresh = self._new_stream()
            fresh.open(self._timeout)  # before the old one ends: nothing is missed
            self._stream = fresh
            self._oldest_since = None
        current.end()

    def get(self, timeout: float) -> Received | None:
        """The next event, or None when none came within ``timeout``. Raises a `CliError` when
        the subscription broke (the sidecar went away)."""
        try:
            item = self._queue.get(timeout=max(0.0, timeout))
        except queue.Empty:
            return None
        if isinstance(item, _Failure):
            raise CliError(
                Exit.UNAVAILABLE,
                f"lost the subscription to {self.topic} ({item.error}): is the sidecar still "
                "running?",
            )
        if item is None:
            raise CliError(Exit.UNAVAILABLE, f"the subscription to {self.topic} ended")
        return item

    def close(self) -> None:
        """End the stream cleanly; on in-memory pub/sub once it is the oldest (bounded)."""
        self._closing.set()
        with self._lock:
            stream = self._stream
        if self._order is not None and not stream.ended:
            with contextlib.suppress(Exception, KeyboardInterrupt):
                self._wait_until_oldest(stream.tag)
        stream.end()

    def _wait_until_oldest(self, tag: str) -> None:
        """Until no other wfctl stream is older than ``tag`` (they renew within a second);
        a foreign subscriber first in line would never go, so it is not waited for."""
        assert self._order is not None
        deadline = time.monotonic() + _OLDEST_FIRST_MAX_SECONDS
        while time.monotonic() < deadline:
            tags = self._order()
            if tag not in tags or tags.index(tag) == 0 or not tags[0]:
                return
            time.sleep(0.1)


@dataclass
class Seen:
    """CloudEvent ids already handled (a redelivery republishes the same id), bounded."""

    limit: int = 10_000
    _ids: dict[str, None] = field(default_factory=dict)

    def first_time(self, event_id: str) -> bool:
        if event_id in self._ids:
            return False
        self._ids[event_id] = None
        if len(self._ids) > self.limit:
            del self._ids[next(iter(self._ids))]
        return True


@contextlib.contextmanager
def stdout_kept_clean() -> Iterator[None]:
    """The SDK prints some diagnostics to stdout (health-check retries, parse errors): send
    them to stderr, so that stdout carries only wfctl's JSON."""
    import sys

    saved = sys.stdout
    sys.stdout = sys.stderr
    try:
        yield
    finally:
        sys.stdout = saved
