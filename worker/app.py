"""The gRPC app the sidecar calls: subscriptions, one per topic, and the health check."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from concurrent import futures

from cloudevents.sdk.event import v1
from dapr.clients.grpc._response import TopicEventResponse
from dapr.ext.grpc import App

from worker.config import Settings
from worker.handlers.pipeline import Pipeline, TopicHandler

Subscriber = Callable[[v1.Event], TopicEventResponse | None]


def build_app(
    settings: Settings,
    pipeline: Pipeline,
    handlers: dict[str, TopicHandler],
    is_healthy: Callable[[], bool],
    extra_subscriptions: Mapping[tuple[str, str], Subscriber] | None = None,
) -> App:
    """An `App` whose thread pool handles ``settings.max_concurrency`` messages at once.

    ``extra_subscriptions`` ((pubsub, topic) -> handler) host other subscribers in the same
    app: the only way to consume an in-memory pub/sub, which lives inside one sidecar.
    """
    app = App(thread_pool=futures.ThreadPoolExecutor(max_workers=settings.max_concurrency))

    def health() -> None:
        if not is_healthy():
            raise RuntimeError("worker is not ready")

    app.register_health_check(health)
    for topic, handler in handlers.items():
        app.subscribe(settings.pubsub_name, topic, dead_letter_topic=settings.dead_letter_topic)(
            _deliver(pipeline, topic, handler)
        )
    for (pubsub, topic), subscriber in (extra_subscriptions or {}).items():
        app.subscribe(pubsub, topic)(subscriber)
    return app


def _deliver(
    pipeline: Pipeline, topic: str, handler: TopicHandler
) -> Callable[[v1.Event], TopicEventResponse]:
    def on_message(event: v1.Event) -> TopicEventResponse:
        return pipeline(topic, handler, event)

    on_message.__name__ = f"on_{topic.replace('.', '_')}"
    return on_message
