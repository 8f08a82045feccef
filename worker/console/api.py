"""The JSON API (``/api``), documented by the OpenAPI document at ``/api/openapi.json``.

Action endpoints take the body of the message they become, read as the worker reads a message
(so a body that is not JSON, or does not fit, is rejected by the same validation, with the
same reasons), and answer with the outcome: the status events the action caused, or the
``rejected`` event with its reason and code, with the HTTP status its code chooses.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Literal

from fastapi import FastAPI, Header, HTTPException, Query, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field, JsonValue, create_model
from starlette.concurrency import run_in_threadpool

from worker.actions import ACTIONS, BULK_ACTIONS, Action
from worker.console.actions import REJECTION_STATUS, Outcome
from worker.console.auth import Principal
from worker.console.query import MAX_PER_PAGE, BadQuery, ListQuery
from worker.events import RejectCode, StatusEvent, TimelineEntry
from worker.messages import StartWorkflow
from worker.outcomes import Missing, Rejected, Transient
from worker.timeline import build_timeline, run_input

if TYPE_CHECKING:
    from worker.console.web import Context

_API_DESCRIPTION = """\
Every action is one message through the worker's own line (the same validation, idempotency,
status events and audit log as a message published on `workflow.start`, `workflow.approval`
or `workflow.control`), with the CloudEvent source `console:<user>`.

**Authentication**: `Authorization: Bearer <token>`. Viewers may read; operators may also act.

**Idempotency**: a mutating call takes an `Idempotency-Key` header (1-200 printable ASCII
characters), which becomes the message's id: sent again with the same key (by the same user),
the call has no second effect and answers with the same status events (the same CloudEvent
ids). Without a key, each call is a new message.

**Outcome**: `200` (`201` for a start) with the status events caused; `404` unknown
instance; `409` the instance's state forbids it; `422` the request is invalid (not JSON, not
the schema, a workflow that may not be started); `503` a transient fault (send again with the
same key); `202` not finished within the deadline (send again with the same key for the
outcome). Every rejection is also published as a `rejected` status event; its `code` (also in
the answer) is what the HTTP status is chosen by: {codes}.
"""


def _codes_of(status: int) -> str:
    return ", ".join(f"`{c.value}`" for c, s in REJECTION_STATUS.items() if s == status)


API_DESCRIPTION = _API_DESCRIPTION.replace(
    "{codes}",
    "; ".join(
        f"`{status}` {_codes_of(status)}" for status in sorted(set(REJECTION_STATUS.values()))
    ),
)

TAGS = [
    {"name": "instances", "description": "Read the instances and their history."},
    {"name": "actions", "description": "Start and control instances (operators)."},
    {"name": "bulk", "description": "Act on many instances at once (operators)."},
    {"name": "meta", "description": "Who am I; the live feed of status events."},
]


class Problem(BaseModel):
    detail: str = Field(description="Why the request was refused.")


class EventOut(BaseModel):
    id: str = Field(description="The status event's CloudEvent id.")
    type: str = Field(description="The status event's CloudEvent type.")
    data: StatusEvent


class ActionResult(BaseModel):
    """What became of an action."""

    outcome: Literal["done", "rejected", "retry", "pending"]
    message_id: str = Field(description="The message's id: the Idempotency-Key, or a new one.")
    instance_id: str | None = None
    reason: str | None = Field(default=None, description="Why it was rejected, or is pending.")
    code: RejectCode | None = Field(
        default=None,
        description="When rejected: why, in one word (the `rejected` event's code), which "
        "chose the HTTP status.",
    )
    events: list[EventOut] = Field(description="The status events it caused (published).")


class InstanceSummary(BaseModel):
    instance_id: str
    workflow: str | None
    status: str
    created_at: str | None
    updated_at: str | None
    stalled: bool
    last_event: str | None


class InstanceList(BaseModel):
    items: list[InstanceSummary]
    total: int = Field(description="Instances matching the filters.")
    counts: dict[str, int] = Field(description="Per status, matching every filter but status.")
    page: int
    per_page: int
    pages: int
    instances: int = Field(description="Instances the console knows of.")
    loaded: bool = Field(description="False until the console has read every instance once.")


class InstanceDetail(BaseModel):
    instance_id: str
    workflow: str
    status: str
    created_at: str | None
    last_updated_at: str | None
    input: JsonValue = None
    output: JsonValue = None
    custom_status: JsonValue = None
    failure: dict[str, str | None] | None = None
    stalled: bool = False
    events: list[dict[str, Any]] = Field(
        description="The status events the console saw for it, oldest first."
    )


class HistoryOut(BaseModel):
    instance_id: str
    workflow: str
    status: str
    input: JsonValue = None
    timeline: list[TimelineEntry]


class RaiseBody(BaseModel):
    """`workflow.approval`'s message without the instance (it is in the path)."""

    event_name: str = Field(default="approval_decision")
    data: JsonValue = None


def action_body(action: Action[Any]) -> type[BaseModel]:
    """The body of ``POST /api/instances/{id}/<action>``: its message, less ``action`` and the
    instance (in the path), in its one-instance form."""
    fields = action.model.model_fields
    body: type[BaseModel] = create_model(  # type: ignore[call-overload]
        f"{action.model.__name__}Body",
        __doc__=f"`workflow.control` {action.name}, less the instance.",
        **{name: (fields[name].annotation, fields[name]) for name in action.fields},
    )
    return body


class BulkPurgeBody(BaseModel):
    """`workflow.control`'s bulk purge: every finished instance matching all filters."""

    older_than: str | None = Field(default=None, examples=["720h", "P30D"])
    statuses: list[Literal["COMPLETED", "FAILED", "TERMINATED"]] | None = None


class BulkFilter(BaseModel):
    workflow: str | None = None
    status: str | None = Field(
        default=None, description="A status, a comma list, or active / finished."
    )
    q: str | None = Field(default=None, description="Instance id contains this.")
    older_than: str | None = Field(default=None, description="Created longer ago than this.")
    newer_than: str | None = Field(default=None, description="Created within this.")
    stalled: bool = False


class BulkBody(BaseModel):
    """Act on every instance that matches the filter now and whose status allows it."""

    action: Literal[BULK_ACTIONS]  # type: ignore[valid-type]
    filter: BulkFilter = Field(default_factory=BulkFilter)
    reason: str | None = Field(default=None, max_length=2_000)
    older_than: str | None = Field(
        default=None, description="purge: only instances created longer ago than this."
    )


class JobResultOut(BaseModel):
    """What a bulk action did to one instance."""

    instance_id: str
    outcome: Literal["done", "rejected", "retry", "pending", "error"]
    event: str | None = Field(description="The first status event it caused.")
    reason: str | None = Field(description="Why it was rejected, or is pending.")
    http_status: int = Field(description="What the same action on this instance alone answers.")
    code: RejectCode | None = Field(
        default=None, description="When rejected: why, in one word (the `rejected` event's code)."
    )


class JobOut(BaseModel):
    job_id: str
    action: str
    user: str
    state: Literal["prepared", "running", "finished"]
    description: str
    total: int
    done: int
    summary: dict[str, int]
    instance_ids: list[str]
    results: list[JobResultOut]
    created_at: str
    finished_at: str | None


_EXTRA_SCHEMAS: dict[str, Any] = {}
_REF = "#/components/schemas/{model}"


def _body(model: type[BaseModel], description: str) -> dict[str, Any]:
    """``openapi_extra`` that documents a JSON body the endpoint reads itself."""
    schema = model.model_json_schema(ref_template=_REF)
    _EXTRA_SCHEMAS.update(schema.pop("$defs", {}))
    _EXTRA_SCHEMAS[model.__name__] = schema
    return {
        "requestBody": {
            "description": description,
            "required": False,
            "content": {
                "application/json": {"schema": {"$ref": _REF.format(model=model.__name__)}}
            },
        }
    }


def complete(document: dict[str, Any]) -> None:
    """Add the bodies' schemas and the bearer scheme to the generated document."""
    components = document.setdefault("components", {})
    components.setdefault("schemas", {}).update(_EXTRA_SCHEMAS)
    components["securitySchemes"] = {
        "bearer": {
            "type": "http",
            "scheme": "bearer",
            "description": "A console user's token (WORKER_CONSOLE_USERS).",
        }
    }
    document["security"] = [{"bearer": []}]


_REJECTIONS: dict[int | str, dict[str, Any]] = {
    401: {"model": Problem, "description": "No or an unknown bearer token."},
    403: {"model": Problem, "description": "A viewer may not act."},
    404: {"model": ActionResult, "description": f"Unknown instance (code {_codes_of(404)})."},
    409: {
        "model": ActionResult,
        "description": f"The instance's state forbids it (code {_codes_of(409)}).",
    },
    422: {"model": ActionResult, "description": f"Invalid request (code {_codes_of(422)})."},
    503: {
        "model": ActionResult,
        "description": f"Transient: send again, same key (outcome retry; or rejected, code "
        f"{_codes_of(503)}).",
    },
    202: {"model": ActionResult, "description": "Still running: send again, same key."},
}

IdempotencyKey = Header(
    default=None,
    alias="Idempotency-Key",
    description="The message's id: the same key has no second effect.",
)


def answer(outcome: Outcome, created: bool = False) -> Response:
    status = outcome.http_status
    if status == 200 and created:
        status = 201
    headers = {"Idempotency-Key": outcome.message_id}
    if outcome.state in ("retry", "pending"):
        headers["Retry-After"] = "1"
    return JSONResponse(outcome.to_json(), status, headers=headers)


def add_routes(
    app: FastAPI,
    ctx: Context,
    reader: Callable[[Request], Principal],
    actor: Callable[[Request], Awaitable[Principal]],
    key_of: Callable[[Request], str | None],
) -> None:
    from worker.console.web import _sse, prepare_job

    @app.get("/api/whoami", tags=["meta"], responses={401: {"model": Problem}})
    def whoami(request: Request) -> dict[str, str]:
        """The user the token belongs to, and their role."""
        who = reader(request)
        return {"user": who.user.name, "role": who.user.role}

    @app.get("/api/instances", tags=["instances"], responses={422: {"model": Problem}})
    def list_instances(
        request: Request,
        workflow: str | None = Query(None, description="Workflow name."),
        status: str | None = Query(
            None, description="RUNNING, ..., a comma list, or active / finished."
        ),
        q: str | None = Query(None, description="Instance id contains this."),
        older_than: str | None = Query(
            None, description="Created longer ago than this (7d, 24h, P30D)."
        ),
        newer_than: str | None = Query(None, description="Created within this."),
        stalled: bool = Query(False, description="Only instances with a stalled step."),
        sort: Literal["created", "updated", "id", "workflow", "status"] = "created",
        order: Literal["asc", "desc"] = "desc",
        page: int = Query(1, ge=1),
        per_page: int = Query(50, ge=1, le=MAX_PER_PAGE),
    ) -> InstanceList:
        """The instances, filtered, sorted and paged, with counts per status. From the
        console's read model: no call to the sidecar."""
        reader(request)
        try:
            query = ListQuery.parse(request.query_params)
            flt = query.filter()
        except BadQuery as bad:
            raise HTTPException(422, str(bad)) from bad
        result = ctx.index.query(flt, query.sort, query.order == "desc", query.page, per_page)
        return InstanceList(
            items=[
                InstanceSummary(
                    instance_id=e.instance_id,
                    workflow=e.workflow,
                    status=e.status,
                    created_at=e.created_at.isoformat() if e.created_at else None,
                    updated_at=e.updated_at.isoformat() if e.updated_at else None,
                    stalled=e.stalled,
                    last_event=e.last_event,
                )
                for e in result.items
            ],
            total=result.total,
            counts=result.counts,
            page=result.page,
            per_page=result.per_page,
            pages=result.pages,
            instances=result.instances,
            loaded=ctx.index.load.loaded,
        )

    @app.get(
        "/api/instances/{instance_id}",
        tags=["instances"],
        responses={404: {"model": Problem}, 503: {"model": Problem}},
    )
    def get_instance(request: Request, instance_id: str) -> InstanceDetail:
        """One instance as the sidecar has it (one read), and the status events seen for it."""
        reader(request)
        try:
            state = ctx.gateway.get_state(instance_id, payloads=True)
        except (Rejected, Transient) as error:
            raise HTTPException(503, f"could not read {instance_id}: {error}") from error
        if state is None:
            raise HTTPException(404, f"unknown instance {instance_id}")
        entry = ctx.index.get(instance_id)
        failure = (
            {"message": state.failure_message, "type": state.failure_type}
            if state.failure_message is not None
            else None
        )
        return InstanceDetail(
            instance_id=instance_id,
            workflow=state.workflow,
            status=state.status,
            created_at=state.created_at.isoformat() if state.created_at else None,
            last_updated_at=state.last_updated_at.isoformat() if state.last_updated_at else None,
            input=state.input,
            output=state.output,
            custom_status=state.custom_status,
            failure=failure,
            stalled=bool(entry and entry.stalled),
            events=[{"id": i.event_id, "data": i.data} for i in ctx.index.recent(instance_id)],
        )

    @app.get(
        "/api/instances/{instance_id}/history",
        tags=["instances"],
        responses={404: {"model": Problem}, 503: {"model": Problem}},
    )
    def get_history(request: Request, instance_id: str) -> HistoryOut:
        """The instance's history as a timeline (activities, timers, events raised, ...),
        oldest first. A read: nothing is published (the `history` action publishes it)."""
        reader(request)
        try:
            state = ctx.gateway.get_state(instance_id, payloads=False)
            if state is None:
                raise Missing(instance_id)
            history = ctx.gateway.history(instance_id)
        except Missing as error:
            raise HTTPException(404, f"unknown instance {instance_id}") from error
        except (Rejected, Transient) as error:
            raise HTTPException(503, f"could not read {instance_id}: {error}") from error
        return HistoryOut(
            instance_id=instance_id,
            workflow=state.workflow,
            status=state.status,
            input=run_input(history),
            timeline=build_timeline(history),
        )

    @app.post(
        "/api/instances",
        tags=["actions"],
        status_code=201,
        response_model=ActionResult,
        responses=_REJECTIONS,
        openapi_extra=_body(StartWorkflow, "A `workflow.start` message."),
    )
    async def start(request: Request, idempotency_key: str | None = IdempotencyKey) -> Response:
        """Start an instance of an allowed workflow (`started`, or `scheduled` for a delayed
        start)."""
        who = await actor(request)
        key = key_of(request)
        body = await request.body()
        outcome = await run_in_threadpool(ctx.actions.start, who.user.name, body, key)
        return answer(outcome, created=True)

    @app.post(
        "/api/instances/{instance_id}/events",
        tags=["actions"],
        response_model=ActionResult,
        responses=_REJECTIONS,
        openapi_extra=_body(RaiseBody, "A `workflow.approval` message, less the instance."),
    )
    async def raise_event(
        request: Request, instance_id: str, idempotency_key: str | None = IdempotencyKey
    ) -> Response:
        """Raise an external event (default `approval_decision`) into the instance
        (`event_raised`)."""
        who = await actor(request)
        key = key_of(request)
        body = await request.body()
        outcome = await run_in_threadpool(
            ctx.actions.raise_event, who.user.name, instance_id, body, key
        )
        return answer(outcome)

    def control_route(action: str, model: type[BaseModel], doc: str) -> None:
        """``POST /api/instances/{instance_id}/<action>``: the action as a control message."""

        async def control(
            request: Request, instance_id: str, idempotency_key: str | None = IdempotencyKey
        ) -> Response:
            who = await actor(request)
            key = key_of(request)
            body = await request.body()
            outcome = await run_in_threadpool(
                ctx.actions.control, who.user.name, action, instance_id, body, key
            )
            return answer(outcome)

        control.__doc__ = doc
        control.__name__ = f"{action}_instance"
        app.post(
            f"/api/instances/{{instance_id}}/{action}",
            tags=["actions"],
            response_model=ActionResult,
            responses=_REJECTIONS,
            openapi_extra=_body(model, f"`workflow.control` {action}, less the instance."),
            name=f"{action}_instance",
        )(control)

    for declared in ACTIONS:
        doc = f"{declared.help.removesuffix('.')} (`{declared.event.value}`)."
        control_route(declared.name, action_body(declared), doc)

    @app.post(
        "/api/purge",
        tags=["bulk"],
        response_model=ActionResult,
        responses=_REJECTIONS,
        openapi_extra=_body(BulkPurgeBody, "`workflow.control`'s bulk purge."),
    )
    async def bulk_purge(
        request: Request, idempotency_key: str | None = IdempotencyKey
    ) -> Response:
        """Purge every finished instance matching all filters, as the worker's bulk purge
        message does (`purged` per instance, then a summary with `count`)."""
        who = await actor(request)
        key = key_of(request)
        body = await request.body()
        outcome = await run_in_threadpool(
            ctx.actions.control, who.user.name, "purge", None, body, key
        )
        return answer(outcome)

    @app.post(
        "/api/bulk",
        tags=["bulk"],
        status_code=202,
        responses={
            200: {"model": JobOut, "description": "dry_run: what it would act on."},
            401: {"model": Problem},
            403: {"model": Problem},
            422: {"model": Problem},
        },
    )
    async def bulk(
        request: Request,
        body: BulkBody,
        dry_run: bool = Query(False, description="Only say which instances it would act on."),
        idempotency_key: str | None = IdempotencyKey,
    ) -> JobOut:
        """Suspend, resume, terminate or purge every instance that matches the filter now and
        whose status allows it: one control message per instance (its own status events and
        audit line). Answers at once with the job; follow it at `/api/jobs/{job_id}`."""
        who = await actor(request)
        key = key_of(request)
        flt = body.filter
        params = {k: v for k, v in flt.model_dump().items() if v not in (None, False)}
        if flt.stalled:
            params["stalled"] = "1"
        try:
            query = ListQuery.parse(params)
            job = prepare_job(
                ctx,
                who,
                body.action,
                query,
                reason=body.reason,
                purge_older_than=body.older_than,
                key=None if dry_run else key,
            )
        except BadQuery as bad:
            raise HTTPException(422, str(bad)) from bad
        if not dry_run:
            ctx.jobs.run(job)
        return JSONResponse(job.to_json(), 200 if dry_run else 202)  # type: ignore[return-value]

    @app.get("/api/jobs/{job_id}", tags=["bulk"], responses={404: {"model": Problem}})
    def get_job(request: Request, job_id: str) -> JobOut:
        """A bulk action's progress and, once finished, what it did to each instance."""
        reader(request)
        job = ctx.jobs.get(job_id)
        if job is None:
            raise HTTPException(404, "no such job (the console keeps the last 200)")
        return JobOut.model_validate(job.to_json())

    @app.get(
        "/api/events",
        tags=["meta"],
        response_class=Response,
        responses={200: {"content": {"text/event-stream": {}}}},
    )
    async def events(request: Request) -> Response:
        """Server-sent events: every status event the console sees (`event: status`, data
        `{"id": <CloudEvent id>, "data": <status event>}`), from now on; `Last-Event-ID`
        resumes within the last 2,000."""
        reader(request)
        return _sse(request, ctx, compact=False)
