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
# Takes a delivery on a topic instead of the pipeline (`worker.intake.Intake.accept`).
Accept = Callable[[str, v1.Event], TopicEventResponse]


def build_app(
    settings: Settings,
    pipeline: Pipeline,
    handlers: dict[str, TopicHandler],
    is_healthy: Callable[[], bool],
    extra_subscriptions: Mapping[tuple[str, str], Subscriber] | None = None,
    accept: Accept | None = None,
) -> App:
    """An `App` whose thread pool handles ``settings.max_concurrency`` messages at once.

    ``extra_subscriptions`` ((pubsub, topic) -> handler) host other subscribers in the same
    app: the only way to consume an in-memory pub/sub, which lives inside one sidecar.
    ``accept``: where deliveries go instead of straight into the pipeline (accept ahead).
    """
    app = App(thread_pool=futures.ThreadPoolExecutor(max_workers=settings.max_concurrency))

    def health() -> None:
        if not is_healthy():
            raise RuntimeError("worker is not ready")

    app.register_health_check(health)
    for topic, handler in handlers.items():
        app.subscribe(settings.pubsub_name, topic, dead_letter_topic=settings.dead_letter_topic)(
            _deliver(topic, accept or _straight(pipeline, handler))
        )
    for (pubsub, topic), subscriber in (extra_subscriptions or {}).items():
        app.subscribe(pubsub, topic)(subscriber)
    return app


def _straight(pipeline: Pipeline, handler: TopicHandler) -> Accept:
    def into_pipeline(topic: str, event: v1.Event) -> TopicEventResponse:
        return pipeline(topic, handler, event)

    return into_pipeline


def _deliver(topic: str, accept: Accept) -> Callable[[v1.Event], TopicEventResponse]:
    def on_message(event: v1.Event) -> TopicEventResponse:
        return accept(topic, event)

    on_message.__name__ = f"on_{topic.replace('.', '_')}"
    return on_message
